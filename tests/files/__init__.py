"""
Tests for L{twisted_frames.files}.
"""
