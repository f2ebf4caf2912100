# -*- test-case-name: tests.test_cli -*-
"""
C{python -m twisted_frames} runs the C{frames} client.
"""

from .cli import main

main()
