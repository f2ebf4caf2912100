# -*- test-case-name: tests.test_tap -*-
"""
How a service joins C{twistd frameserver}: one L{ServiceEntry} in
L{twisted_frames.tap.SERVICES}.

An entry brings three things, kept in the service's own package (e.g.
L{twisted_frames.files.options}):

  - C{options}: a C{usage.Options} mix-in with the service's
    C{optParameters}, C{optFlags} and C{opt_} methods (C{usage.Options}
    collects them from every base class);
  - C{check}: called with the parsed options once the shared ones (C{root},
    C{listen}, ...) have their final values, in the order of the entries; it
    raises C{usage.UsageError} on a bad combination, and may add derived
    values to the options;
  - C{build}: given the parsed options and the reactor, the service's
    L{Built} parts.

C{tap.Options} is the shared options plus every entry's mix-in, and
C{tap.makeService} calls every entry's C{build}: neither names a service.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.application.service import IService

    from .server import Service


@dataclass(frozen=True)
class Built:
    """
    What one entry adds to the server.

    @ivar services: the frames services (the ops) for the server's factory,
        in the order they see connections.
    @ivar children: twistd services started and stopped with the server
        (timers, processes, other ports), in start order; they are stopped
        in the reverse order, after the listening ports.
    """

    services: Sequence[Service] = ()
    children: Sequence[IService] = ()


def _noCheck(config: Any) -> None:
    """
    The check of an entry whose options need none beyond their coercers.
    """


@dataclass(frozen=True)
class ServiceEntry:
    """
    One service of C{twistd frameserver}: its options and how to build it.

    @ivar name: what the service is called (in messages and docs).
    @ivar options: its C{usage.Options} mix-in (a plain class).
    @ivar build: C{build(config, reactor)} returning its L{Built} parts.
    @ivar check: C{check(config)} run after parsing; raises
        C{usage.UsageError}.
    """

    name: str
    options: type
    build: Callable[[Any, Any], Built]
    check: Callable[[Any], None] = _noCheck
