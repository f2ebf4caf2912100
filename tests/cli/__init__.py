"""
Tests for L{twisted_frames.cli}.
"""
