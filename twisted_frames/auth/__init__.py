# -*- test-case-name: tests.auth.test_auth -*-
"""
Login: an HMAC-SHA256 challenge-response in which both sides prove the key.

  - L{twisted_frames.auth.hmac}: the construction, as pure functions;
  - L{twisted_frames.auth.keys}: the users-file and secret-file formats;
  - L{twisted_frames.auth.cred}: the C{twisted.cred} checker, realm and portal;
  - L{twisted_frames.auth.service}: the server's C{auth} operation;
  - L{twisted_frames.auth.client}: the client's login.
"""
