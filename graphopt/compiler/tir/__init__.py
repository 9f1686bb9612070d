"""Kernel level: default schedules, the lowering pipeline, the TIR statement walker and the CPU
tensor intrinsics."""
