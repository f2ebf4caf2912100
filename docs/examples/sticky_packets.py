"""
Tutorial, step 1: TCP carries a stream of bytes, not messages.

    python3 sticky_packets.py

Standard library only.  Both ends run in this one process, over the loopback
interface, on a port the operating system picks.
"""

import socket
import threading

MESSAGES = [b"hello", b"from", b"TCP"]
BIG = 4 * 1024 * 1024  # 4 MiB


def connected_pair():
    """Return (sender, receiver): the two ends of one TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as server:  # port 0: any free port
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()
    return sender, receiver


def small_sends_arrive_together():
    print("== Three small send() calls, one recv()")
    sender, receiver = connected_pair()
    with sender, receiver:
        # Send each piece immediately, instead of letting TCP wait to gather
        # small pieces (Nagle's algorithm): so that it is not TCP merging them.
        sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for message in MESSAGES:
            sender.send(message)
            print(f"send({message!r})")
        # A real receiver is often busy with something else while data
        # arrives.  Imitate that: wait until all the bytes are in the
        # receiving socket's buffer, without taking any of them out
        # (MSG_PEEK looks, MSG_WAITALL waits for all of them).
        total = sum(len(m) for m in MESSAGES)
        receiver.recv(total, socket.MSG_PEEK | socket.MSG_WAITALL)
        data = receiver.recv(1024)
        print(f"recv(1024) -> {data!r}")
        print(f"{len(MESSAGES)} messages sent, 1 recv: the boundaries are gone")


def large_send_arrives_in_pieces():
    print("== One large sendall(), many recv()")
    sender, receiver = connected_pair()
    with sender, receiver:
        payload = b"x" * BIG
        # sendall() blocks until the receiver has made room, so it runs in
        # a thread while this thread receives.
        thread = threading.Thread(target=sender.sendall, args=(payload,))
        thread.start()
        sizes = []
        while sum(sizes) < len(payload):
            chunk = receiver.recv(65536)  # at most 64 KiB, maybe less
            sizes.append(len(chunk))
        thread.join()
        print(f"sendall() of {len(payload)} bytes")
        print(f"arrived in {len(sizes)} recv() calls")
        print(f"first pieces: {sizes[:5]} bytes")
        print(f"smallest piece {min(sizes)} bytes, largest {max(sizes)} bytes")


if __name__ == "__main__":
    small_sends_arrive_together()
    large_send_arrives_in_pieces()
