"""
Tests for L{twisted_frames.auth}.
"""
