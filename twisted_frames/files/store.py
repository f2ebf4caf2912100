# -*- test-case-name: tests.files.test_files -*-
"""
Streaming file I/O shared by the file service and its client: a writer that
appends to a file descriptor in a worker thread while hashing, and a body
source that reads a file in a worker thread while hashing.

Both keep memory bounded: the writer pauses whoever feeds it when its queue is
full, and the source reads ahead at most a fixed number of chunks and stops
while its consumer is paused.  The thread dispatcher is injectable (a
C{runInThread} callable) so that tests can run everything synchronously.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, threads
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from ..bodies import DirectReceiver
from ..protocol import BodySink
from ..wire import ErrorCode, FramesError
from .blocking import (
    READ_CHUNK,
    ShortRead,
    readExact,
    writeAll,
)

#: C{runInThread(f, *args) -> Deferred}: runs C{f} away from the reactor.
ThreadRunner = Callable[..., "defer.Deferred[Any]"]

#: Chunks read ahead of the network.
READ_AHEAD = 2
#: Bytes hashed per worker-thread job when the body goes out with
#: C{os.sendfile}: no buffer holds them, so jobs can be larger.
SENDFILE_CHUNK = 4 * 1024 * 1024
#: The buffer each such range is read into, a piece at a time, to be hashed:
#: small enough to stay in the CPU's cache between the read and the hash.
HASH_BUFFER = 256 * 1024
#: Hashed ranges waiting for the socket, at most, in that case: they cost
#: no memory of the process (they are in the page cache).
SENDFILE_AHEAD = 4
#: The first ranges' size; a range is never larger than what was already
#: sent (up to L{SENDFILE_CHUNK}), so that a peer that reads nothing costs
#: at most L{SENDFILE_AHEAD} of these of hashing, not of L{SENDFILE_CHUNK}
#: (85 stalled readers' pipelined gets otherwise hashed 1.3 GiB ahead and
#: kept a bystander's 16 MiB download waiting 1.5 s for the worker threads).
SENDFILE_FIRST = 256 * 1024
#: Most buffers one C{writev} call accepts (POSIX guarantees 16; Linux 1024).
IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16
#: Socket read size and send slice of connections doing file transfers.
TRANSPORT_IO_SIZE = 1024 * 1024
#: Bytes a writer may hold queued before it pauses its feeder.
WRITE_HIGH_WATER = 4 * 1024 * 1024

#: Largest body of one C{get} data event: files beyond it (and beyond the
#: 4 GiB - 1 a frame can carry) are sent as several events.
DEFAULT_SEGMENT = 1 << 30


def defaultRunner() -> ThreadRunner:
    """
    @return: a runner using the reactor's thread pool.
    """
    return threads.deferToThread


def synchronousRunner(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    """
    Run C{f} at once in the calling thread (for tests with fakes).
    """
    try:
        return defer.succeed(f(*args))
    except BaseException:
        return defer.fail()


_ERRNO_CODES = {
    errno.ENOSPC: ErrorCode.NO_SPACE,
    errno.EDQUOT: ErrorCode.NO_SPACE,
    errno.EFBIG: ErrorCode.NO_SPACE,
    errno.EACCES: ErrorCode.PERMISSION_DENIED,
    errno.EPERM: ErrorCode.PERMISSION_DENIED,
    errno.EROFS: ErrorCode.PERMISSION_DENIED,
    errno.ENOENT: ErrorCode.NOT_FOUND,
    errno.EEXIST: ErrorCode.ALREADY_EXISTS,
    errno.ENOTDIR: ErrorCode.NOT_A_DIRECTORY,
    errno.EISDIR: ErrorCode.IS_A_DIRECTORY,
    errno.ENOTEMPTY: ErrorCode.NOT_EMPTY,
    errno.ELOOP: ErrorCode.FORBIDDEN_PATH,
    errno.ENAMETOOLONG: ErrorCode.FORBIDDEN_PATH,
}


def errorFromOSError(e: OSError, path: str) -> FramesError:
    """
    Map an C{OSError} to a L{FramesError} with a stable code.

    @param path: the path as the client named it, for the message.
    """
    code = _ERRNO_CODES.get(e.errno or 0, ErrorCode.IO_ERROR)
    reason = e.strerror or str(e)
    if e.errno == errno.ELOOP:
        reason = "a symbolic link is in the way (links are not followed)"
    return FramesError(code, f"{path or '/'}: {reason}", path=path)


def writeVectors(fd: int, chunks: list[bytes]) -> None:
    """
    Write all of C{chunks} to C{fd} with as few C{writev} calls as the OS
    allows (no copy into one buffer first), looping over short writes.
    """
    views = [memoryview(c) for c in chunks if c]
    start = 0
    while start < len(views):
        batch = views[start : start + IOV_MAX]
        n = os.writev(fd, batch)
        for view in batch:
            if n >= len(view):
                n -= len(view)
                start += 1
            else:
                views[start] = view[n:]
                break


class FileWriter:
    """
    Appends chunks to a file descriptor in a worker thread, in order, feeding
    each to a hash first.  At most one job runs at a time; data arriving
    meanwhile is queued and written by the next job in one go.

    @ivar written: bytes written so far.
    @ivar error: the first failure, after which nothing more is written.
    @ivar afterWrite: if given, called with the descriptor in the worker
        thread after each job's write; an exception it raises fails the
        writer like a write error (the file service checks there that its
        partial file has not been removed).
    @ivar onError: if given, called with the first failure as soon as it
        happens (not only when someone next writes or drains).
    """

    def __init__(
        self,
        fd: int,
        hasher: Any,
        runInThread: ThreadRunner,
        pause: Callable[[], None],
        resume: Callable[[], None],
        highWater: int = WRITE_HIGH_WATER,
        afterWrite: Callable[[int], None] | None = None,
        onError: Callable[[Failure], None] | None = None,
    ) -> None:
        self.fd = fd
        self.hasher = hasher
        self.afterWrite = afterWrite
        self.onError = onError
        self.written = 0
        self.error: Failure | None = None
        self._run = runInThread
        self._pause = pause
        self._resume = resume
        self._highWater = highWater
        self._queue: list[bytes] = []
        self._queued = 0
        self._busy = False
        self._paused = False
        self._drainWaiters: list[defer.Deferred[None]] = []
        # A receive waiting for the job in progress (see receiveDirect).
        self._direct: tuple[DirectReceiver, defer.Deferred[None]] | None = None

    @property
    def isPaused(self) -> bool:
        """
        Whether this writer has paused its feeder.
        """
        return self._paused

    def write(self, data: bytes) -> None:
        """
        Queue C{data}; pause the feeder if too much is queued.
        """
        if self.error is not None:
            return
        self._queue.append(data)
        self._queued += len(data)
        if not self._busy:
            self._kick()
        if self._queued >= self._highWater and not self._paused:
            self._paused = True
            self._pause()

    def drain(self) -> defer.Deferred[None]:
        """
        @return: a Deferred firing once everything queued is written (or
            failing with the first write error).
        """
        d: defer.Deferred[None] = defer.Deferred()
        if self.error is not None:
            d.errback(self.error)
        elif not self._busy and not self._queue and self._direct is None:
            d.callback(None)
        else:
            self._drainWaiters.append(d)
        return d

    def receiveDirect(self, receive: DirectReceiver) -> defer.Deferred[None] | None:
        """
        Start C{receive(consume)} as this writer's next job, after what is
        queued (L{BodySink.receiveDirect}): C{consume} hashes, writes and
        checks (C{afterWrite}) each piece in the receive's thread, and
        counts it in L{written}.  A failure of the receive fails the writer
        like a write error.

        @return: a Deferred firing (never failing) once C{receive} has
            returned or, if the writer fails before it starts, without it
            having run; C{None} if the writer has already failed.
        """
        if self.error is not None or self._direct is not None:
            return None
        done: defer.Deferred[None] = defer.Deferred()
        self._direct = (receive, done)
        if not self._busy:
            self._startDirect()
        return done

    def _startDirect(self) -> None:
        assert self._direct is not None
        (receive, done), self._direct = self._direct, None
        self._busy = True
        fd, hasher, afterWrite = self.fd, self.hasher, self.afterWrite
        consumed = [0]

        def consume(view: memoryview) -> None:
            hasher.update(view)
            writeAll(fd, view)
            consumed[0] += len(view)
            if afterWrite is not None:
                afterWrite(fd)

        def finished(result: object) -> None:
            if isinstance(result, Failure):
                self.written += consumed[0]
                self._batchFailed(result)
            else:
                self._batchDone(consumed[0])
            done.callback(None)

        receive(consume).addBoth(finished)

    def _kick(self) -> None:
        batch, self._queue = self._queue, []
        self._queued = 0
        self._busy = True
        self._run(self._writeBatch, batch).addCallbacks(self._batchDone, self._batchFailed)
        if self._paused:
            self._paused = False
            self._resume()

    def _writeBatch(self, batch: list[bytes]) -> int:
        total = 0
        for chunk in batch:
            self.hasher.update(chunk)
            total += len(chunk)
        if len(batch) == 1:
            writeAll(self.fd, batch[0])
        else:
            writeVectors(self.fd, batch)
        if self.afterWrite is not None:
            self.afterWrite(self.fd)
        return total

    def _batchDone(self, n: int) -> None:
        self.written += n
        self._busy = False
        if self._queue:
            self._kick()
        elif self._direct is not None:
            self._startDirect()
        else:
            self._fire(None)

    def _batchFailed(self, failure: Failure) -> None:
        self._busy = False
        self.error = failure
        self._queue = []
        self._queued = 0
        if self._paused:
            self._paused = False
            self._resume()
        if self.onError is not None:
            self.onError(failure)
        direct, self._direct = self._direct, None
        if direct is not None:
            # Never run: the protocol reads the rest of the body itself.
            direct[1].callback(None)
        self._fire(failure)

    def _fire(self, failure: Failure | None) -> None:
        waiters, self._drainWaiters = self._drainWaiters, []
        for d in waiters:
            if failure is None:
                d.callback(None)
            else:
                d.errback(failure)


class WriterSink(BodySink):
    """
    A body sink that hands its bytes to a L{FileWriter} and pauses the
    connection while the writer is full.

    @ivar done: fires once the whole body is received and written.
    """

    def __init__(
        self,
        fd: int,
        hasher: Any,
        runInThread: ThreadRunner,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self._producer: Any = None
        self.writer = FileWriter(fd, hasher, runInThread, self._pause, self._resume)
        self.progress = progress
        self.done: defer.Deferred[None] = defer.Deferred()

    def _pause(self) -> None:
        if self._producer is not None:
            self._producer.pauseProducing()

    def _resume(self) -> None:
        if self._producer is not None:
            self._producer.resumeProducing()

    def bodyStarted(self, length: int, producer: IPushProducer) -> None:
        self._producer = producer

    def bodyData(self, data: bytes) -> None:
        self.writer.write(data)
        if self.progress is not None:
            self.progress(len(data))

    @property
    def receivesDirect(self) -> bool:  # type: ignore[override]
        """
        Whether the writer still writes (L{BodySink.receivesDirect}).
        """
        return self.writer.error is None

    def receiveDirect(self, receive: DirectReceiver) -> defer.Deferred[None] | None:
        return self.writer.receiveDirect(receive)

    def bodyProgress(self, count: int) -> None:
        if self.progress is not None:
            self.progress(count)

    def bodyFinished(self) -> None:
        self._producer = None
        self.writer.drain().chainDeferred(self.done)

    def bodyFailed(self, reason: Failure) -> None:
        self._producer = None

        def failed(_: Any) -> Failure:
            return reason

        self.writer.drain().addBoth(failed).chainDeferred(self.done)


def readInto(fd: int, offset: int, view: memoryview) -> None:
    """
    Fill C{view} from C{fd} at C{offset} (no new buffer per read).

    @raise ShortRead: if the file ends first.
    """
    got = 0
    n = len(view)
    while got < n:
        k = os.preadv(fd, [view[got:]], offset + got)
        if not k:
            raise ShortRead(ErrorCode.IO_ERROR, "the file shrank while being read")
        got += k


@implementer(IPushProducer)
class FileSource:
    """
    A body source (L{twisted_frames.protocol.IBodySource}) sending C{length}
    bytes of an open file from C{offset}, read in a worker thread in
    L{READ_CHUNK} pieces, hashed in order, at most L{READ_AHEAD} chunks ahead
    of the consumer.  It does not close the file.

    Where the consumer can send a file itself (C{canSendFile()}: a plain
    TCP connection, see L{twisted_frames.sending}), the bytes go from the
    page cache to the socket with C{os.sendfile} instead, never through
    Python: the worker thread then only reads each range into one reused
    buffer of L{HASH_BUFFER} bytes, a piece at a time, and hashes it,
    L{SENDFILE_CHUNK} bytes per job (less while little has been sent: see
    L{SENDFILE_FIRST}) and at most
    L{SENDFILE_AHEAD} ranges ahead, and a range is sent only once it has
    been hashed (so it is in the page cache and sending it does not wait
    for the disk).  The hash is of what was read, the bytes sent are what
    the file holds when they are sent: a file changed meanwhile fails the
    receiver's check instead of arriving torn but "verified".

    Where the consumer can send over TLS from a worker thread
    (C{canSendThreaded()}: see L{twisted_frames._speedups.tlssend}), each
    job is one slice of the body: the worker thread reads, hashes,
    encrypts and sends it, and the reactor only starts the next slice.
    What is hashed is exactly what is sent.
    """

    def __init__(
        self,
        fd: int,
        offset: int,
        length: int,
        hasher: Any,
        runInThread: ThreadRunner,
        progress: Callable[[int], None] | None = None,
        chunkSize: int = READ_CHUNK,
        sendfileChunk: int = SENDFILE_CHUNK,
        sendfileFirst: int = SENDFILE_FIRST,
    ) -> None:
        self.fd = fd
        self.offset = offset
        self.length = length
        self.hasher = hasher
        self.progress = progress
        self._run = runInThread
        self._chunk = chunkSize
        self._sendfileChunk = sendfileChunk
        self._sendfileFirst = sendfileFirst
        self._requested = 0
        self._sent = 0
        self._reading = False
        # Chunks of bytes to write or, when sending the file itself, the
        # lengths of hashed ranges to send (in order, from _sent on).
        self._ready: deque[bytes | int] = deque()
        self._ahead = READ_AHEAD
        self._buffer: bytearray | None = None
        self._paused = False
        self._stopped = False
        self._consumer: Any = None
        self._done: defer.Deferred[None] = defer.Deferred()
        self._idleWaiters: list[defer.Deferred[None]] = []
        self._detached = False
        self._threaded = False

    @property
    def sendsThreaded(self) -> bool:
        """
        Whether the body goes over TLS from a worker thread.
        """
        return self._threaded

    @property
    def sendsFile(self) -> bool:
        """
        Whether the body goes to the socket with C{os.sendfile}.
        """
        return self._buffer is not None

    def whenIdle(self) -> defer.Deferred[None]:
        """
        @return: a Deferred firing once no read is running in a worker
            thread (so that the file may be closed).
        """
        d: defer.Deferred[None] = defer.Deferred()
        if self._reading:
            self._idleWaiters.append(d)
        else:
            d.callback(None)
        return d

    def _idle(self) -> None:
        self._reading = False
        waiters, self._idleWaiters = self._idleWaiters, []
        for d in waiters:
            d.callback(None)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        self._consumer = consumer
        canSendFile = getattr(consumer, "canSendFile", None)
        if canSendFile is not None and canSendFile() and not self._detached:
            self._buffer = bytearray(max(1, min(HASH_BUFFER, self.length)))
            self._chunk = self._sendfileChunk
            self._ahead = SENDFILE_AHEAD
        else:
            canSendThreaded = getattr(consumer, "canSendThreaded", None)
            self._threaded = bool(
                canSendThreaded is not None and canSendThreaded() and not self._detached
            )
        if self.length == 0:
            self._done.callback(None)
        else:
            self._fill()
        return self._done

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush()
        self._fill()

    def stopProducing(self) -> None:
        self._stopped = True
        self._ready.clear()
        if not self._done.called:
            self._done.errback(ConnectionError("stopped sending"))

    def detach(self) -> None:
        """
        Stop using the file: the peer has already refused this body, but the
        frame must still be completed to keep the connection in step, so the
        rest is sent as zeros.  Wait for L{whenIdle} before closing the file.
        """
        self._detached = True
        # Ranges not sent yet would be read from the file: zeros instead.
        self._ready = deque(bytes(item) if type(item) is int else item for item in self._ready)

    def _fill(self) -> None:
        if self._threaded and not self._detached:
            self._sendSlice()
            return
        if self._reading or self._stopped or self._requested >= self.length:
            return
        if len(self._ready) >= self._ahead:
            return
        n = min(self._chunk, self.length - self._requested)
        if self._buffer is not None:
            # Ranges grow with what the peer has taken (see SENDFILE_FIRST).
            n = min(n, max(self._sendfileFirst, self._sent))
        pos = self.offset + self._requested
        self._requested += n
        if self._detached:
            self._ready.append(bytes(n))
            self._flush()
            self._fill()
            return
        self._reading = True
        read = self._read if self._buffer is None else self._hashRange
        self._run(read, pos, n).addCallbacks(self._gotChunk, self._failed)

    def _sendSlice(self) -> None:
        """
        Have the consumer send the next slice of the body from a worker
        thread (one at a time, while not paused).
        """
        if self._reading or self._stopped or self._paused or self._sent >= self.length:
            return
        start = self.offset + self._sent
        fd = self.fd
        hasher = self.hasher

        def fill(done: int, view: memoryview) -> None:
            # In the worker thread: the body's bytes, hashed as they go.
            readInto(fd, start + done, view)
            hasher.update(view)

        self._reading = True
        self._consumer.sendThreaded(self.length - self._sent, fill, self._run).addCallbacks(
            self._sliceDone, self._failed
        )

    def _sliceDone(self, sent: int | None) -> None:
        self._idle()
        if self._stopped:
            return
        if sent == -1:
            # The connection cannot be used so any more: the rest goes
            # through the TLS layer, read in chunks as usual.
            self._threaded = False
        elif sent is not None:
            self._advance(sent)
        self._requested = self._sent
        if self._sent == self.length:
            if not self._done.called:
                self._done.callback(None)
            return
        if sent is not None:
            self._fill()

    def _read(self, pos: int, n: int) -> bytes:
        data = readExact(self.fd, pos, n)
        self.hasher.update(data)
        return data

    def _hashRange(self, pos: int, n: int) -> int:
        """
        Read C{n} bytes at C{pos} into the reused buffer and hash them (in
        a worker thread): what is sent with C{os.sendfile} next.
        """
        buffer = self._buffer
        assert buffer is not None
        done = 0
        while done < n:
            view = memoryview(buffer)[: min(len(buffer), n - done)]
            readInto(self.fd, pos + done, view)
            self.hasher.update(view)
            done += len(view)
        return n

    def _gotChunk(self, data: bytes | int) -> None:
        self._idle()
        if self._stopped:
            return
        if self._detached and type(data) is int:
            data = bytes(data)
        self._ready.append(data)
        self._flush()
        self._fill()

    def _failed(self, failure: Failure) -> None:
        self._idle()
        if not self._done.called:
            self._done.errback(failure)

    def _flush(self) -> None:
        while self._ready and not self._paused and not self._stopped:
            item = self._ready[0]
            if isinstance(item, int):
                if not self._sendRange(item):
                    return
                continue
            self._ready.popleft()
            self._advance(len(item))
            self._consumer.write(item)
        if self._sent == self.length and not self._done.called:
            self._done.callback(None)

    def _sendRange(self, n: int) -> bool:
        """
        Send what the socket takes of the hashed range of C{n} bytes at
        the head of the queue.

        @return: whether to go on (C{False}: the consumer paused this
            source until the socket takes more, or it failed).
        """
        try:
            sent = self._consumer.sendFile(self.fd, self.offset + self._sent, n)
        except Exception:
            self._failed(Failure())
            return False
        if sent is None:
            return False
        if sent == 0:
            self._failed(
                Failure(ShortRead(ErrorCode.IO_ERROR, "the file shrank while being sent"))
            )
            return False
        if sent == n:
            self._ready.popleft()
        else:
            self._ready[0] = n - sent
        self._advance(sent)
        return True

    def _advance(self, n: int) -> None:
        self._sent += n
        if self.progress is not None:
            self.progress(n)


def tuneTransport(transport: Any) -> None:
    """
    Tune a TCP transport for bulk transfers: reads and sends of up to
    L{TRANSPORT_IO_SIZE} instead of Twisted's 64 KiB / 128 KiB, which cuts
    the reactor's per-byte overhead (the write buffer bound grows with it,
    so memory stays bounded).  Only for connections that move files: a
    1 MiB read buffer costs small request/reply traffic about a quarter of
    its rate.  (Nagle is already off on every connection.)
    """
    if hasattr(transport, "bufferSize") and hasattr(transport, "SEND_LIMIT"):
        transport.bufferSize = TRANSPORT_IO_SIZE
        transport.SEND_LIMIT = TRANSPORT_IO_SIZE
