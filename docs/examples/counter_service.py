"""
A whole service for C{twistd frameserver} in one file: a counter.

The op C{count} answers C{{"count": N}}: C{--counter-start} the first time,
then C{--counter-step} more on each call, for every client of the server.

A service is three pieces, and this file has all of them:

  1. the ops: a L{Service} whose methods are marked with L{operation};
  2. its options: a plain class used as a C{usage.Options} mix-in, with
     C{optParameters} (and C{optFlags}, C{opt_} methods if it needs them),
     numbers checked by L{bounded};
  3. its builder: given the parsed options and the reactor, the L{Built}
     parts (frames services for the factory, twistd child services).

A L{ServiceEntry} joins them.  Registering the service is one line, with no
other edit: add the entry to C{SERVICES} in C{twisted_frames/tap.py}::

    SERVICES = (security.SECURITY, FILES, COMMANDS, UDP, COUNTER)

or, leaving the package as it is, build the options class from the
registry plus the entry, as C{tests/test_examples.py} does::

    Options = tap.optionsFor((*tap.SERVICES, COUNTER))

C{tap.Options} is C{optionsFor(SERVICES)}, and C{tap.makeService} builds
every entry of the options it is given: the counter's options are in
C{--help}, and C{count} is among the ops
of the greeting.
"""

from __future__ import annotations

from typing import Any

from twisted_frames.bounds import bounded
from twisted_frames.server import Request, Service, operation
from twisted_frames.services import Built, ServiceEntry


class CounterService(Service):
    """
    The C{count} op: one counter shared by every connection.
    """

    def __init__(self, start: int, step: int) -> None:
        self.next = start
        self.step = step

    @operation("count")
    def opCount(self, request: Request) -> dict[str, Any]:
        """
        Answer the counter's value, then advance it.
        """
        count, self.next = self.next, self.next + self.step
        return {"count": count}


class CounterOptions:
    """
    The counter's options, as a mix-in for C{usage.Options}.
    """

    optParameters = [
        [
            "counter-start",
            None,
            0,
            "First value the count op answers.",
            bounded("--counter-start", 0, 10**9),
        ],
        ["counter-step", None, 1, "How much each count adds.", bounded("--counter-step", 1, 1000)],
    ]


def buildCounter(config: Any, reactor: Any) -> Built:
    """
    The counter service; it has no twistd child (nothing to start or stop).
    """
    return Built(services=[CounterService(config["counter-start"], config["counter-step"])])


#: A service whose options need a check across them (one option against
#: another) passes C{check=}, a function of the parsed options raising
#: C{usage.UsageError}; the counter's coercers are enough.
COUNTER = ServiceEntry("counter", CounterOptions, buildCounter)
