"""Graph-level rewrites on the Relax module: BatchNorm folding, channels-last layout, Winograd
convolutions, NaN-propagating and fast-math legalizations."""
