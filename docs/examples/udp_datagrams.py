"""
Tutorial, step 4: UDP keeps message boundaries, but truncates and loses.

    python3 udp_datagrams.py              # plain sockets only
    python3 udp_datagrams.py 8007         # ... then the echo service on that port

Standard library only, loopback interface.  The first part uses a port the
operating system picks; the second talks to the UDP echo service of a
running "twistd frameserver".
"""

import socket
import sys


def udp_socket(bind=True):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if bind:
        sock.bind(("127.0.0.1", 0))
    return sock


def boundaries_kept():
    print("== Three sendto() calls, three recvfrom() calls")
    with udp_socket() as receiver, udp_socket(bind=False) as sender:
        for message in [b"hello", b"from", b"UDP"]:
            sender.sendto(message, receiver.getsockname())
        for _ in range(3):
            data, _ = receiver.recvfrom(1024)
            print(f"recvfrom(1024) -> {data!r}")


def truncated():
    print("== A 2000-byte datagram read with recvfrom(512)")
    with udp_socket() as receiver, udp_socket(bind=False) as sender:
        sender.sendto(b"a" * 2000, receiver.getsockname())
        sender.sendto(b"next", receiver.getsockname())
        data, _ = receiver.recvfrom(512)
        print(f"recvfrom(512) -> {len(data)} bytes; the other {2000 - len(data)} are gone")
        data, _ = receiver.recvfrom(512)
        print(f"recvfrom(512) -> {data!r}: the next datagram, not the rest of the first")


def lost():
    print("== 200 datagrams to a receiver that is not reading")
    with udp_socket() as receiver, udp_socket(bind=False) as sender:
        # A small receive buffer, as on a busy server that falls behind.
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for n in range(200):
            sender.sendto(n.to_bytes(2, "big") * 500, receiver.getsockname())
        receiver.setblocking(False)
        received = 0
        try:
            while True:
                receiver.recvfrom(2048)
                received += 1
        except BlockingIOError:  # nothing more to read
            pass
        print(f"sent 200, received {received}: no error anywhere, the rest were dropped")


def echo_service(port):
    server = ("127.0.0.1", port)
    with udp_socket(bind=False) as sock:
        sock.settimeout(2.0)  # a reply may never come: never wait for ever
        print(f"== The echo service on port {port}: three datagrams, three replies")
        for message in [b"one", b"two", b"three"]:
            sock.sendto(message, server)
        for _ in range(3):
            data, _ = sock.recvfrom(1024)
            print(f"reply: {data!r}")

        print("== A 2000-byte request, its reply read with recvfrom(512)")
        sock.sendto(b"b" * 2000, server)
        data, _ = sock.recvfrom(512)
        print(f"reply: {len(data)} bytes of 2000")

        print("== A datagram over the service's limit (--udp-max, 8192 by default)")
        sock.sendto(b"c" * 9000, server)
        sock.settimeout(0.5)
        try:
            sock.recvfrom(65535)
            print("reply: received")
        except TimeoutError:
            print("no reply within 0.5 s: dropped, exactly like a lost datagram")


if __name__ == "__main__":
    boundaries_kept()
    truncated()
    lost()
    if len(sys.argv) > 1:
        echo_service(int(sys.argv[1]))
