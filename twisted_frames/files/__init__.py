# -*- test-case-name: tests.files.test_files -*-
"""
The file service: a confined root served over the frames protocol.

  - L{twisted_frames.files.store}: writing and reading files off the reactor
    thread (shared by the server and the client);
  - L{twisted_frames.files.blocking}: the transfer hashes, exact reads and
    writes, without Twisted (shared by both and the CLI's quick path);
  - L{twisted_frames.files.service}: the server's file operations;
  - L{twisted_frames.files.options}: its C{twistd frameserver} options;
  - L{twisted_frames.files.client}: the client library for them.
"""
