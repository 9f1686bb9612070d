"""Exact rewrites that leave the function unchanged: BatchNorm folding, dead code, identities."""
