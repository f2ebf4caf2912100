# -*- test-case-name: tests.commands.test_commands -*-
"""
The command service: run the commands a server allows, never through a shell.

  - L{twisted_frames.commands.spec}: which commands are allowed, and limits;
  - L{twisted_frames.commands.process}: process plumbing (sessions, pipes);
  - L{twisted_frames.commands.service}: the server's C{run}/C{stdin}/C{cancel};
  - L{twisted_frames.commands.options}: its C{twistd frameserver} options;
  - L{twisted_frames.commands.client}: the client library for them;
  - L{twisted_frames.commands.result}: what a command's end looks like to a
    client, shared with the CLI's quick path (no Twisted).
"""
