"""The compiler half of graphopt: TVM builds, tuning with a shared cache, artifacts."""

from graphopt.compiler.artifact import Artifact, load
from graphopt.compiler.build import compile
from graphopt.compiler.manifest import Manifest
from graphopt.compiler.measure.baseline import BaselineCheck, SlowerThanBaselineWarning
from graphopt.compiler.targets import TARGET_NAMES, resolve_target
from graphopt.compiler.tir.schedules import vector_lanes_for
from graphopt.compiler.tune.tuning import RPC, Tuning, TuningSummary

__all__ = [
    "RPC",
    "TARGET_NAMES",
    "Artifact",
    "BaselineCheck",
    "Manifest",
    "SlowerThanBaselineWarning",
    "Tuning",
    "TuningSummary",
    "compile",
    "load",
    "resolve_target",
    "vector_lanes_for",
]
