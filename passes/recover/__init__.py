"""Recovery after lossy passes: BatchNorm recalibration, layer-wise least-squares
reconstruction, knowledge distillation."""
