"""
Tutorial, step 5: the twisted-frames client library in a short async program.

    python3 frames_client.py [HOST:PORT]      # default 127.0.0.1:8007

Needs a running server ("twistd -n frameserver").
"""

import hashlib
import os
import sys

from twisted.internet import defer, task

from twisted_frames import FramesError, connect


async def main(reactor, server):
    client = await connect(reactor, server)  # connects and reads the greeting
    hello = client.greeting
    print(f"connected to {hello['server']!r}, protocol {hello['protocol']} v{hello['version']}")
    print(f"the server answers: {', '.join(hello['ops'])}")

    echoed = await client.ping(b"hello")
    print(f"ping -> {echoed!r}")

    # Three requests in flight at once on one connection; each reply is
    # matched to its request by id, whatever order they come back in.
    bodies = [b"small", os.urandom(100_000), os.urandom(5_000_000)]
    replies = await defer.gatherResults([client.ping(body) for body in bodies])
    for body, reply in zip(bodies, replies, strict=True):
        same = hashlib.sha256(reply).digest() == hashlib.sha256(body).digest()
        print(f"pipelined ping of {len(body)} bytes -> {len(reply)} bytes back, identical: {same}")

    # An error is a reply with a stable code; the connection stays usable.
    try:
        await client.request("no-such-op")
    except FramesError as e:
        print(f"error: code {e.code!r}, message {e.message!r}")
    print(f"still connected: ping -> {await client.ping(b'again')!r}")

    await client.close()


if __name__ == "__main__":
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8007"
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, address)))
