"""graphopt: capture a PyTorch model as a torch.fx graph, rewrite it with validated passes,
recover accuracy, and compile it.

Stable public surface (snapshotted by ``tests/api/test_public_api.py``)::

    gm = graphopt.capture(model, example_inputs)
    result = graphopt.optimize(model, example_inputs, passes=[FoldBatchNorm()], target="llvm")
    artifact = graphopt.compile(model, example_inputs, target="llvm", tuning=graphopt.Tuning())
    artifact.save("out/model", key=KEY); graphopt.load("out/model", key=KEY)(x)
    graphopt.save_model(result.model, "model.pt"); graphopt.load_model("model.pt")  # data only
"""

from graphopt.api import OptimizeResult, optimize
from graphopt.compiler import RPC, Artifact, Manifest, Tuning, compile, load
from graphopt.errors import (
    ArtifactError,
    CaptureError,
    CompileError,
    ConfigError,
    GraphOptError,
    ModelFileError,
    PassError,
    RecipeError,
    RegistryError,
    UnsupportedGraphError,
    VerificationError,
)
from graphopt.frontend.fx import capture
from graphopt.frontend.model_file import load_model, save_model
from graphopt.pass_base import Pass, PassContext, PassResult
from graphopt.pass_manager import PassManager
from graphopt.recipe import Recipe, load_recipe, parse_recipe
from graphopt.registry import REGISTRY, register_pass
from graphopt.report import Decline, ModelStats, OptimizeReport, PassReport
from graphopt.rewrite import MatchResult, Rule, apply_rules
from graphopt.version import __version__ as __version__

__all__ = [
    "REGISTRY",
    "RPC",
    "Artifact",
    "ArtifactError",
    "CompileError",
    "Manifest",
    "Tuning",
    "compile",
    "load",
    "CaptureError",
    "ConfigError",
    "Decline",
    "GraphOptError",
    "ModelFileError",
    "MatchResult",
    "ModelStats",
    "OptimizeReport",
    "OptimizeResult",
    "Pass",
    "PassContext",
    "PassError",
    "PassManager",
    "PassReport",
    "PassResult",
    "Recipe",
    "RecipeError",
    "RegistryError",
    "Rule",
    "UnsupportedGraphError",
    "VerificationError",
    "apply_rules",
    "capture",
    "load_model",
    "load_recipe",
    "optimize",
    "parse_recipe",
    "register_pass",
    "save_model",
]
