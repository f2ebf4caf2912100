"""
Tutorial, step 3: the same framing with Twisted's Int32StringReceiver, and
one reactor serving many clients at once.

    python3 int32_echo.py

The server and its clients run in this one process, in one thread, on one
reactor, over the loopback interface on a port the operating system picks.
"""

import struct

from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.protocols.basic import Int32StringReceiver


class Shout(Int32StringReceiver):
    """Server: answer each frame with the same frame in upper case."""

    # Int32StringReceiver does the framing: a 4-byte big-endian unsigned
    # length ("!I"), then the bytes; it calls stringReceived once per frame,
    # however the bytes were split or glued on the way.
    MAX_LENGTH = 1024 * 1024  # refuse frames over 1 MiB: a length is not a promise

    def stringReceived(self, string):
        self.sendString(string.upper())

    def lengthLimitExceeded(self, length):
        print(f"server: refusing a {length}-byte frame, closing that connection")
        self.transport.loseConnection()


class Client(Int32StringReceiver):
    """Client: send frames, hand each reply to whoever is waiting for it."""

    def connectionMade(self):
        self.replies = defer.DeferredQueue()
        self.closed = defer.Deferred()

    def connectionLost(self, reason):
        self.closed.callback(None)

    def stringReceived(self, string):
        self.replies.put(string)

    def ask(self, text):
        self.sendString(text)
        return self.replies.get()


async def main(reactor):
    factory = protocol.Factory.forProtocol(Shout)
    # backlog: how many connections the kernel may queue, fully set up,
    # before this server accepts them.
    port = reactor.listenTCP(0, factory, backlog=50, interface="127.0.0.1")
    where = port.getHost()
    print(f"server listening on {where.host}:{where.port}")
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", where.port)

    print("== A slow client sends half a frame and stops")
    slow = await endpoint.connect(protocol.Factory.forProtocol(Client))
    frame = struct.pack("!I", len(b"slow")) + b"slow"
    slow.transport.write(frame[:6])  # the 4-byte length and 2 of the 4 bytes
    print("slow: sent 6 of 8 bytes")

    print("== Meanwhile three more clients are served, all at the same time")
    quick = await defer.gatherResults(
        [endpoint.connect(protocol.Factory.forProtocol(Client)) for _ in range(3)]
    )
    answers = await defer.gatherResults(
        [c.ask(f"hello from client {i}".encode()) for i, c in enumerate(quick, 1)]
    )
    for answer in answers:
        print(f"reply: {answer!r}")

    print("== The slow client finishes its frame")
    slow.transport.write(frame[6:])
    print(f"slow: reply {await slow.replies.get()!r}")

    print("== A client announces a 2 GiB frame")
    greedy = await endpoint.connect(protocol.Factory.forProtocol(Client))
    greedy.transport.write(struct.pack("!I", 2**31))
    await greedy.closed
    print("greedy client: disconnected; the others were not affected")
    print(f"reply: {await quick[0].ask(b'still there?')!r}")

    for c in [*quick, slow]:
        c.transport.loseConnection()
    await port.stopListening()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
