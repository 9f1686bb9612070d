"""Helpers for tests and benchmarks, not part of the product: the CIFAR ResNet model zoo
(``zoo``) and offline data sets with their loaders and metrics (``data``)."""
