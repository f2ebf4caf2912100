"""
Tutorial, step 3: what listen(backlog) means.  The kernel sets connections
up by itself and queues them until the program calls accept().

    python3 accept_queue.py

Standard library only, loopback interface, a port the operating system picks.
"""

import socket


def sysctl(name):
    """A Linux kernel setting, or None elsewhere."""
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def main():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # the backlog: up to 8 connections may wait for accept()
    print(f"listening on port {server.getsockname()[1]} with backlog 8")

    clients = []
    for n in range(1, 4):
        client = socket.create_connection(server.getsockname())
        client.sendall(f"hi from client {n}".encode())
        clients.append(client)
        print(f"client {n}: connect() returned and sent; nobody has called accept() yet")

    for _ in clients:
        conn, (host, port) = server.accept()
        with conn:
            print(f"accept() -> client port {port}, already holding {conn.recv(1024)!r}")

    for client in clients:
        client.close()
    server.close()

    somaxconn = sysctl("net.core.somaxconn")
    syn_backlog = sysctl("net.ipv4.tcp_max_syn_backlog")
    if somaxconn is not None:
        print(f"this kernel caps any backlog at net.core.somaxconn = {somaxconn}")
    if syn_backlog is not None:
        print(f"half-open connections are queued apart: tcp_max_syn_backlog = {syn_backlog}")


if __name__ == "__main__":
    main()
