"""Measurement: interleaved timing, the never-slower baseline check, the per-kernel report."""
