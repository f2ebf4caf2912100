# -*- test-case-name: tests.cli.test_cli -*-
"""
The C{frames} command-line client.

  - L{twisted_frames.cli.base}: what every subcommand shares (UI, exit
    statuses, interruption, connecting);
  - one module per group of subcommands: L{twisted_frames.cli.ping},
    L{twisted_frames.cli.files}, L{twisted_frames.cli.commands},
    L{twisted_frames.cli.keys};
  - L{twisted_frames.cli.main}: the parser and L{main}, the console script.
"""

from .main import buildParser, main

__all__ = ["buildParser", "main"]
