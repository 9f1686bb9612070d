"""Recipes: a YAML or JSON file saying which model, which inputs, which passes, where to write.

A recipe is one pydantic model. Pass entries are ``{pass: <registered name>, <fields>}``; names
are resolved against the registry here, at the file boundary, and nowhere else. Every problem
in a file is reported at once, each with its path (``passes[1].ratio``) and line.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PositiveInt,
    Tag,
    ValidationError,
    field_serializer,
)
from torch import nn

from graphopt.compiler.tuning import Tuning
from graphopt.errors import RecipeError, RecipeProblem, RegistryError
from graphopt.pass_base import Pass
from graphopt.registry import REGISTRY
from graphopt.selectors import ModuleType


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TorchvisionModel(_Strict):
    """A torchvision architecture with random weights (nothing is downloaded)."""

    torchvision: str = Field(description="Model name, e.g. resnet18.", examples=["resnet18"])
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Constructor arguments.")

    def build(self, base: Path) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(self.torchvision, weights=None, **self.kwargs)


class PythonFactory(_Strict):
    """A factory ``package.module:function``, called with ``kwargs`` (modules next to the
    recipe file are importable)."""

    python: str = Field(pattern=r"^[\w.]+:[\w.]+$", description="'package.module:factory'.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Factory arguments.")

    def call(self, base: Path) -> Any:
        module_name, _, attr = self.python.partition(":")
        with _on_sys_path(base):
            factory = importlib.import_module(module_name)
        for part in attr.split("."):
            factory = getattr(factory, part)
        return factory(**self.kwargs)


class PythonModel(PythonFactory):
    """A factory ``package.module:function`` returning an ``nn.Module``."""

    def build(self, base: Path) -> nn.Module:
        return self.call(base)


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


class InputSpec(_Strict):
    """One example input: random normal for floats, random integers in [low, high) for ints."""

    shape: list[PositiveInt] = Field(min_length=1, description="Shape, batch first.")
    dtype: DType = "float32"
    low: int = Field(default=0, description="Lower bound for integer inputs.")
    high: int = Field(default=2, description="Upper bound (exclusive) for integer inputs.")

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

    target: str | dict[str, Any] = Field(
        description="llvm, cuda, cuda:<arch> (e.g. cuda:sm_90), aarch64, or a TVM target dict."
    )
    tuning: Tuning | None = Field(
        default_factory=Tuning, description="MetaSchedule tuning; null compiles untuned."
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
    seed: int = Field(default=0, description="Seed for example inputs and random choices.")

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
        text = path.read_text()
    except OSError as exc:
        raise RecipeError(str(path), [RecipeProblem("", f"cannot read: {exc}")]) from exc
    return parse_recipe(text, source=str(path)), path.parent


def parse_recipe(text: str, source: str = "<string>") -> Recipe:
    """Validate recipe text (YAML or JSON); every problem is reported at once."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = exc.problem_mark.line + 1 if getattr(exc, "problem_mark", None) else None
        raise RecipeError(source, [RecipeProblem("", f"not valid YAML/JSON: {exc}", line)]) from exc
    if not isinstance(data, dict):
        raise RecipeError(source, [RecipeProblem("", "a recipe must be a mapping")])
    raw_passes = data.get("passes", [])
    problems: list[RecipeProblem] = []
    passes = _build_passes(raw_passes, problems)
    try:
        recipe = Recipe.model_validate({**data, "passes": []})
    except ValidationError as exc:
        recipe = None
        problems += [_problem(err["loc"], err["msg"]) for err in exc.errors()]
    if problems or recipe is None:
        located = [RecipeProblem(p.path, p.message, _line_of(root, p.path)) for p in problems]
        raise RecipeError(source, located)
    return recipe.model_copy(update={"passes": passes})


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


def format_path(loc: tuple) -> str:
    """``("passes", 1, "ratio")`` → ``passes[1].ratio``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif str(part).startswith("passes["):
            text += str(part)
        else:
            text += f".{part}" if text else str(part)
    return text


def _line_of(root: yaml.Node | None, path: str) -> int | None:
    """The 1-based line of ``path`` in the composed YAML tree (the deepest part found)."""
    node, line = root, None
    for key, index in _path_parts(path):
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == key), None)
        if node is not None and index is not None and isinstance(node, yaml.SequenceNode):
            node = node.value[index] if index < len(node.value) else None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def _path_parts(path: str):
    for part in path.split("."):
        key, _, rest = part.partition("[")
        yield key, int(rest.rstrip("]")) if rest else None


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
