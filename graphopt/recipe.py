"""Recipes: a YAML or JSON file saying which model, which inputs, which passes, where to write.

A recipe is one pydantic model. Pass entries are ``{pass: <registered name>, <fields>}``; names
are resolved against the registry here, at the file boundary, and nowhere else. Every problem
in a file is reported at once, each with its path (``passes[1].ratio``) and line.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PositiveInt,
    Tag,
    ValidationError,
    field_serializer,
    model_validator,
)
from torch import nn

from graphopt.compiler.measure.baseline import Baseline
from graphopt.compiler.targets import TargetSpec
from graphopt.compiler.tune.tuning import Tuning
from graphopt.errors import ConfigError, RecipeError, RecipeProblem, RegistryError, first_line
from graphopt.pass_base import Pass
from graphopt.recipe_text import (
    format_path,
    located,
    parse_yaml,
    structure_problems,
)
from graphopt.registry import REGISTRY
from graphopt.selectors import ModuleType, recipe_imports


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FactoryError(ConfigError):
    """A model source or data factory of a recipe failed. ``field`` is its path in the recipe
    when the source knows it (``model.torchvision``); the runner reports it with its line."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TorchvisionModel(_Strict):
    """A torchvision architecture with random weights (nothing is downloaded)."""

    torchvision: str = Field(description="Model name, e.g. resnet18.", examples=["resnet18"])
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Constructor arguments.")

    def build(self, base: Path) -> nn.Module:
        try:
            import torchvision
        except ImportError as exc:
            raise FactoryError(
                "needs torchvision: pip install 'graphopt[vision]'", field="model.torchvision"
            ) from exc
        if self.torchvision not in torchvision.models.list_models():
            raise FactoryError(
                f"unknown torchvision model {self.torchvision!r}", field="model.torchvision"
            )
        try:
            return torchvision.models.get_model(self.torchvision, weights=None, **self.kwargs)
        except (TypeError, ValueError) as exc:
            raise FactoryError(first_line(exc), field="model.kwargs") from exc


class PythonFactory(_Strict):
    """A factory ``package.module:function``, called with ``kwargs`` (modules next to the
    recipe file are importable)."""

    python: str = Field(pattern=r"^[\w.]+:[\w.]+$", description="'package.module:factory'.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Factory arguments.")

    def call(self, base: Path) -> Any:
        """Import and call the factory; every failure is a :class:`FactoryError` naming it."""
        module_name, _, attr = self.python.partition(":")
        try:
            factory = _import_next_to(base, module_name)
        except Exception as exc:  # noqa: BLE001 - an import can raise anything
            raise FactoryError(f"cannot import {module_name!r}: {first_line(exc)}") from exc
        for part in attr.split("."):
            if not hasattr(factory, part):
                raise FactoryError(f"{self.python!r}: {module_name} has no {attr!r}")
            factory = getattr(factory, part)
        if not callable(factory):
            raise FactoryError(f"{self.python!r} is a {type(factory).__name__}, not a function")
        try:
            inspect.signature(factory).bind(**self.kwargs)
        except TypeError as exc:
            raise FactoryError(f"{self.python!r} does not take these kwargs: {exc}") from exc
        except ValueError:
            pass  # no signature to check (a builtin): call it and see
        try:
            return factory(**self.kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's factory can raise anything
            raise FactoryError(f"{self.python!r} raised {first_line(exc)}") from exc


class PythonModel(PythonFactory):
    """A factory ``package.module:function`` returning an ``nn.Module``."""

    def build(self, base: Path) -> nn.Module:
        model = self.call(base)
        if not isinstance(model, nn.Module):
            raise FactoryError(f"{self.python!r} returned a {type(model).__name__}, not a module")
        return model


class SavedGraphModule(_Strict):
    """A model file written by graphopt (e.g. a previous run's ``model.pt``), read as data."""

    graph_module: str = Field(description="Path, relative to the recipe file.")
    trust: bool = Field(
        default=False,
        description="Also accept a pickled GraphModule and layer classes outside torch.nn: "
        "loading those runs code named by the file. Only for files whose author you trust.",
    )

    def build(self, base: Path) -> nn.Module:
        from graphopt.frontend.model_file import load_model

        return load_model(base / self.graph_module, trust=self.trust)


class OnnxModel(_Strict):
    """An ONNX file, converted with onnx2torch and checked against ONNX Runtime."""

    onnx: str = Field(description="Path of the .onnx file, relative to the recipe file.")

    def build(self, base: Path) -> nn.Module:
        from graphopt.frontend.fx import capture

        return capture(base / self.onnx)


def _model_kind(value: Any) -> str | None:
    for key in ("torchvision", "python", "graph_module", "onnx"):
        if (key in value) if isinstance(value, dict) else hasattr(value, key):
            return key
    return None


ModelSource = Annotated[
    Annotated[TorchvisionModel, Tag("torchvision")]
    | Annotated[PythonModel, Tag("python")]
    | Annotated[SavedGraphModule, Tag("graph_module")]
    | Annotated[OnnxModel, Tag("onnx")],
    Discriminator(
        _model_kind,
        custom_error_type="model_source",
        custom_error_message="give one of 'torchvision', 'python', 'graph_module' or 'onnx'",
    ),
]

DType = Literal["float32", "float64", "float16", "bfloat16", "int64", "int32"]
MAX_RECIPE_BYTES = 1_000_000  # a recipe is a page of YAML; anything larger is refused unread
MAX_PASSES = 1_000
MAX_INPUT_RANK = 8
MAX_INPUT_ELEMENTS = 1 << 28  # 1 GiB of float32 per example input


class InputSpec(_Strict):
    """One example input: random normal for floats, random integers in [low, high) for ints."""

    shape: list[PositiveInt] = Field(
        min_length=1, max_length=MAX_INPUT_RANK, description="Shape, batch first."
    )
    dtype: DType = "float32"
    low: int = Field(default=0, ge=-(2**62), le=2**62, description="Lower bound for integers.")
    high: int = Field(default=2, ge=-(2**62), le=2**62, description="Upper bound (exclusive).")

    @model_validator(mode="after")
    def _bounded(self) -> InputSpec:
        if math.prod(self.shape) > MAX_INPUT_ELEMENTS:
            raise ValueError(
                f"shape {self.shape} has {math.prod(self.shape):,} elements; "
                f"example inputs are limited to {MAX_INPUT_ELEMENTS:,}"
            )
        if self.high <= self.low:
            raise ValueError(f"high ({self.high}) must be greater than low ({self.low})")
        return self

    def make(self, generator: torch.Generator) -> torch.Tensor:
        dtype = getattr(torch, self.dtype)
        if dtype.is_floating_point:
            return torch.randn(self.shape, generator=generator).to(dtype)
        return torch.randint(self.low, self.high, self.shape, generator=generator, dtype=dtype)


class CaptureOptions(_Strict):
    """How the model is traced."""

    leaf_modules: list[str] = Field(
        default_factory=list, description="Qualified names (globs) of submodules kept as leaves."
    )
    leaf_types: list[ModuleType] = Field(
        default_factory=list, description="Module classes kept as leaves."
    )
    mode: Literal["eval", "train"] = Field(default="eval", description="Mode the model runs in.")


class CompileOptions(_Strict):
    """Compile the rewritten graph with TVM into an artifact (written to ``<output>/artifact``)."""

    target: TargetSpec
    tuning: Tuning | None = Field(
        default_factory=Tuning, description="MetaSchedule tuning; null compiles untuned."
    )
    baseline: Baseline | None = Field(
        default=None,
        description="Time the artifact against onnxruntime or eager on the example inputs; "
        "the run warns when it is not faster.",
    )


class DataSources(_Strict):
    """Data for recovery passes, each from a python factory."""

    calibration: PythonFactory | None = Field(
        default=None,
        description="Returns an iterable of input batches or (inputs, labels) batches "
        "(e.g. a DataLoader): BN recalibration, reconstruction, data-aware passes.",
    )
    training: PythonFactory | None = Field(
        default=None,
        description="Returns fine-tuning batches (knowledge distillation); default: calibration.",
    )
    validation: PythonFactory | None = Field(
        default=None,
        description="Returns a callable model → score (higher is better) that picks the "
        "checkpoint fine-tuning keeps.",
    )


class Recipe(_Strict):
    """A whole optimization run, as written in a recipe file."""

    model: ModelSource
    inputs: list[InputSpec] = Field(min_length=1, description="Example inputs, in order.")
    capture: CaptureOptions = Field(default_factory=CaptureOptions)
    passes: list[Pass] = Field(default_factory=list, description="Passes, in order.")
    compile: CompileOptions | None = None
    data: DataSources = Field(default_factory=DataSources)
    output_dir: str = Field(default="out", description="Where results go (relative to the file).")
    seed: int = Field(
        default=0, ge=0, lt=2**63, description="Seed for example inputs and random choices."
    )

    @field_serializer("passes")
    def _dump_passes(self, passes: list[Pass]) -> list[dict[str, Any]]:
        return [{"pass": p.name, **p.config()} for p in passes]

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(self.seed)
        return tuple(spec.make(generator) for spec in self.inputs)


def load_recipe(path: str | Path) -> tuple[Recipe, Path]:
    """Read and validate a recipe file; return it with the directory paths are relative to."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            message = f"{path.stat().st_size:,} bytes; recipes are limited to {MAX_RECIPE_BYTES:,}"
            raise RecipeError(str(path), [RecipeProblem("", message)])
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise RecipeError(str(path), [RecipeProblem("", f"cannot read: {exc}")]) from exc
    except UnicodeDecodeError as exc:
        problem = RecipeProblem("", f"not UTF-8 text (byte {exc.start}: {exc.reason})")
        raise RecipeError(str(path), [problem]) from exc
    return parse_recipe(text, source=str(path)), path.parent


def parse_recipe(text: str, source: str = "<string>") -> Recipe:
    """Validate recipe text (YAML or JSON); every problem is reported at once."""
    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeError(
            source,
            [
                RecipeProblem(
                    "", f"{len(text):,} characters; recipes are limited to {MAX_RECIPE_BYTES:,}"
                )
            ],
        )
    root, data = parse_yaml(text, source)
    if not isinstance(data, dict):
        raise RecipeError(source, [RecipeProblem("", "a recipe must be a mapping")])
    problems = structure_problems(root)
    raw_passes = data.get("passes", [])
    if isinstance(raw_passes, list) and len(raw_passes) > MAX_PASSES:
        problems.append(
            RecipeProblem("passes", f"{len(raw_passes):,} passes; at most {MAX_PASSES}")
        )
        raw_passes = []
    factories = _factory_modules(data)
    with recipe_imports(factories) as deferred:  # first everything else: no user module imported
        recipe, passes = _validate(data, raw_passes, problems)
    if deferred and not problems and recipe is not None:
        with recipe_imports(factories, importing=True):  # now import the factories' types
            recipe, passes = _validate(data, raw_passes, problems)
    if problems or recipe is None:
        raise RecipeError(source, located(problems, root))
    return recipe.model_copy(update={"passes": passes})


def _factory_modules(data: dict) -> frozenset[str]:
    """The modules of the recipe's ``python: module:factory`` entries (model and data)."""
    model, sources = data.get("model"), data.get("data")
    entries = [model] + (list(sources.values()) if isinstance(sources, dict) else [])
    names = [e.get("python") for e in entries if isinstance(e, dict)]
    return frozenset(n.partition(":")[0] for n in names if isinstance(n, str) and ":" in n)


def _validate(data: dict, raw_passes: Any, problems: list[RecipeProblem]):
    passes = _build_passes(raw_passes, problems)
    try:
        recipe = Recipe.model_validate({**data, "passes": []})
    except ValidationError as exc:
        recipe = None
        problems += [_problem(err["loc"], err["msg"]) for err in exc.errors()]
    return recipe, passes


def _build_passes(raw: Any, problems: list[RecipeProblem]) -> list[Pass]:
    if not isinstance(raw, list):
        problems.append(RecipeProblem("passes", "must be a list of {pass: name, ...} entries"))
        return []
    passes = []
    for index, entry in enumerate(raw):
        where = f"passes[{index}]"
        if not isinstance(entry, dict) or "pass" not in entry:
            problems.append(RecipeProblem(where, "each entry needs 'pass: <name>'"))
            continue
        fields = {k: v for k, v in entry.items() if k != "pass"}
        try:
            passes.append(REGISTRY.resolve(str(entry["pass"])).model_validate(fields))
        except RegistryError as exc:
            problems.append(RecipeProblem(f"{where}.pass", str(exc)))
        except ValidationError as exc:
            problems += [_problem((f"{where}", *err["loc"]), err["msg"]) for err in exc.errors()]
    return passes


def _problem(loc: tuple, message: str) -> RecipeProblem:
    return RecipeProblem(format_path(loc), message)


def _import_next_to(base: Path, module_name: str):
    """Import ``module_name`` with ``base`` first on the path. A module of the same name that
    an earlier recipe (or the caller) imported from elsewhere is not reused: the recipe's own
    file wins, so two recipes' ``factories.py`` never get mixed up in one process."""
    top = module_name.partition(".")[0]
    local = [f for f in (base / f"{top}.py", base / top / "__init__.py") if f.is_file()]
    cached = getattr(sys.modules.get(top), "__file__", None)
    if cached and local and all(f.resolve() != Path(cached).resolve() for f in local):
        for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
            del sys.modules[name]
    with _on_sys_path(base):
        return importlib.import_module(module_name)


@contextlib.contextmanager
def _on_sys_path(directory: Path):
    entry = str(directory.resolve())
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as JSON, with pass entries written as ``{pass: name, ...}``."""
    return json.dumps(recipe.model_dump(mode="json"), indent=2)
