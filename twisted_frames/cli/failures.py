# -*- test-case-name: tests.cli.test_cli -*-
"""
What a failed C{frames} command prints and exits with: one ladder for both
ways a command runs (through Twisted, or the quick path of
L{twisted_frames.cli.quick}), so that the two say the same thing.  It imports
no Twisted: L{twisted_frames.cli.main} first turns Twisted's own exceptions
into the neutral ones here (L{NoAnswer}, L{CannotConnect}, L{Lost}).
"""

from __future__ import annotations

import argparse

from ..wire import FramesError, NoGreeting
from . import keys
from .base import EXIT_CONNECT, EXIT_REMOTE, EXIT_TIMEOUT, EXIT_USAGE, UI


class NoAnswer(Exception):
    """
    No answer within C{--timeout} (connecting, the greeting and login, or
    a reply).
    """


class CannotConnect(Exception):
    """
    The connection could not be made; the argument says why, in words.
    """


class Lost(Exception):
    """
    The connection was lost (or closed) before the command ended; the
    argument says why, in words.
    """


def reportFailure(error: Exception, args: argparse.Namespace, ui: UI) -> int:
    """
    Print the one line (and with C{--json} the object) of a command's
    failure, and return its exit status.

    @raise Exception: C{error} itself, if it is of no kind a command's
        failure can be.
    """
    try:
        # Re-raised so that one ladder of except clauses sorts it.
        raise error
    except FramesError as e:
        hint = ""
        if e.code == "auth_required":
            hint = " (log in with --user and --secret-file)"
        ui.error(f"{args.command}: {e.message}{hint} [{e.code}]", e.toJSON())
        return EXIT_REMOTE
    except keys.TLSFailure as e:
        ui.error(f"TLS with {args.server} failed: {e}", {"code": "tls_failed", "message": str(e)})
        return EXIT_CONNECT
    except NoGreeting as e:
        message = _noGreetingMessage(e, args)
        ui.error(message, {"code": "no_greeting", "message": message})
        return EXIT_CONNECT
    except keys.AuthError as e:
        ui.error(f"login to {args.server} failed: {e}", {"code": "auth_failed", "message": str(e)})
        return EXIT_REMOTE
    except FileExistsError as e:
        ui.error(f"{args.command}: {e}", {"code": "exists", "message": str(e)})
        return EXIT_USAGE
    except NoAnswer:
        ui.error(
            f"{args.command}: no answer from {args.server} within {args.timeout:g} s",
            {"code": "timeout"},
        )
        return EXIT_TIMEOUT
    except CannotConnect as e:
        ui.error(
            f"cannot connect to {args.server}: {e}",
            {"code": "connect_failed", "message": str(e)},
        )
        return EXIT_CONNECT
    except Lost as e:
        ui.error(f"{args.command}: connection to {args.server} lost: {e}")
        return EXIT_CONNECT
    except ValueError as e:
        ui.error(f"{args.command}: {e}", {"code": "usage"})
        return EXIT_USAGE
    except OSError as e:
        ui.error(f"{args.command}: {e.strerror or e}", {"code": "local_error"})
        return EXIT_REMOTE


def _noGreetingMessage(e: NoGreeting, args: argparse.Namespace) -> str:
    """
    Why the server did not greet, in words, with what to try.
    """
    if e.tlsRecord:
        return (
            f"no greeting from {args.server}: it answered with a TLS record; "
            "it is a TLS server: try --tls"
        )
    if args.tls or args.ca or args.cert:
        return (
            f"no greeting from {args.server} within {e.seconds:g} s after the TLS handshake; "
            "is it a twisted-frames server?"
        )
    return f"no greeting from {args.server} within {e.seconds:g} s; is it a TLS server? try --tls"
