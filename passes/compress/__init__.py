"""Lossy passes that make the model smaller: channel pruning, low-rank factorization,
depthwise-separable substitution, Net2Net shrink."""
