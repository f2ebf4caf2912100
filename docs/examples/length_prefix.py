"""
Tutorial, step 2: framing by hand.  A 4-byte length prefix, then a JSON
header frame that describes a body frame.

    python3 length_prefix.py

Standard library only.  Both ends run in this one process, over the loopback
interface, on a port the operating system picks.
"""

import hashlib
import json
import socket
import struct
import threading

# "!" = network byte order (big-endian), "I" = unsigned 32-bit integer.
PREFIX = struct.Struct("!I")


# -- sending ------------------------------------------------------------------------


def send_frame(sock, payload):
    """Send one frame: its length in 4 bytes, then the payload."""
    # sendall, not send: send() may take only part of the bytes and return.
    sock.sendall(PREFIX.pack(len(payload)) + payload)


def send_message(sock, header, body=b""):
    """Send one message: a JSON header frame, then a body frame."""
    send_frame(sock, json.dumps(header).encode("utf-8"))
    send_frame(sock, body)


# -- receiving ------------------------------------------------------------------------

recv_calls = 0  # only to show how many recv() calls one frame took


def recv_exactly(sock, n):
    """Receive exactly n bytes, however many recv() calls that takes."""
    global recv_calls
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(n - len(data), 65536))
        recv_calls += 1
        if not chunk:  # b"" means the peer closed the connection
            raise ConnectionError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def recv_frame(sock):
    """Receive one frame: read the 4-byte length, then exactly that many bytes."""
    (length,) = PREFIX.unpack(recv_exactly(sock, PREFIX.size))
    return recv_exactly(sock, length)


def recv_message(sock):
    """Receive one message: a JSON header, then the body it describes."""
    header = json.loads(recv_frame(sock).decode("utf-8"))
    body = recv_frame(sock)
    return header, body


# -- the demonstration ----------------------------------------------------------------


def connected_pair():
    """Return (sender, receiver): the two ends of one TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()
    return sender, receiver


def sender_side(sock, big_body):
    # Three frames glued into a single sendall(): the receiver must split them.
    sock.sendall(b"".join(PREFIX.pack(len(p)) + p for p in (b"hello", b"from", b"TCP")))
    # One large frame: the receiver gets it in many pieces and must join them.
    send_frame(sock, b"y" * (4 * 1024 * 1024))
    # A message: the header says what the body is.
    header = {
        "type": "file",
        "name": "notes.txt",
        "size": len(big_body),
        "sha256": hashlib.sha256(big_body).hexdigest(),
    }
    send_message(sock, header, big_body)
    sock.shutdown(socket.SHUT_WR)  # "no more data": the receiver sees b""


def main():
    global recv_calls
    print("== The prefix")
    print(f"length 5 as '!I' (big-endian): {PREFIX.pack(5).hex(' ')}")
    print(f"the same 4 bytes read little-endian: {struct.unpack('<I', PREFIX.pack(5))[0]}")

    sender, receiver = connected_pair()
    body = b"A line of notes.\n" * 10_000
    thread = threading.Thread(target=sender_side, args=(sender, body))
    thread.start()
    with sender, receiver:
        print("== Three frames sent in one sendall()")
        for _ in range(3):
            print(f"recv_frame() -> {recv_frame(receiver)!r}")

        print("== One 4 MiB frame")
        recv_calls = 0
        frame = recv_frame(receiver)
        print(f"recv_frame() -> {len(frame)} bytes, in {recv_calls} recv() calls")

        print("== A message: JSON header frame + body frame")
        header, received = recv_message(receiver)
        print(f"header: {header}")
        ok = len(received) == header["size"]
        ok = ok and hashlib.sha256(received).hexdigest() == header["sha256"]
        print(f"body: {len(received)} bytes, size and sha256 match the header: {ok}")

        try:
            recv_frame(receiver)
        except ConnectionError as e:
            print(f"then: {e}")
        thread.join()


if __name__ == "__main__":
    main()
