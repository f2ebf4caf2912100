"""
Tests for L{twisted_frames.commands}.
"""
