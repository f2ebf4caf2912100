# -*- test-case-name: tests.cli.test_cli -*-
"""
C{python -m twisted_frames} runs the C{frames} client.
"""

from .cli import main

main()
