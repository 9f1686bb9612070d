"""The ``graphopt`` command line: run recipes, list passes, print schemas, inspect graphs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from graphopt.errors import (
    ArtifactError,
    CaptureError,
    ConfigError,
    GraphOptError,
    ModelFileError,
    RegistryError,
)
from graphopt.pass_base import Pass
from graphopt.report import OptimizeReport, PassReport

app = typer.Typer(
    help="graphopt: rewrite PyTorch models into smaller, faster ones.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _console() -> Console:
    """A console sized at call time (so COLUMNS and the real terminal width are honoured)."""
    return Console()


class _ProgressObserver:
    """Draws one progress bar over the passes of a run."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = None

    def pass_started(self, index: int, total: int, pass_: Pass) -> None:
        if self.task is None:
            self.task = self.progress.add_task("passes", total=total)
        self.progress.update(self.task, description=f"[{index + 1}/{total}] {pass_.name}")

    def pass_finished(self, index: int, total: int, report: PassReport) -> None:
        self.progress.advance(self.task)
        declined = f", {len(report.declined)} declined" if report.declined else ""
        self.progress.console.print(
            f"  [green]✓[/] {report.name}: {len(report.touched)} rewritten{declined}"
        )


_TRUST = typer.Option(
    "--trust-model-file",
    help="Also load pickled models and layer classes outside torch.nn. This RUNS CODE named "
    "by the file: only for files whose author you trust.",
)


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe file (YAML or JSON).")],
    output: Annotated[
        Path | None, typer.Option(help="Output directory (default: the recipe's).")
    ] = None,
) -> None:
    """Run a recipe: capture, rewrite, verify, report, and write the results."""
    console = _console()
    from graphopt.recipe import load_recipe
    from graphopt.runner import check_output_dir, run_recipe, write_outputs

    with _errors():
        spec, base = load_recipe(recipe)
        out_dir = (output or base / spec.output_dir).resolve()
        check_output_dir(out_dir, None if output else base)
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=True) as progress:
            result = run_recipe(spec, base, _ProgressObserver(progress), source=recipe)
        console.print(summary_table(result.report))
        _print_baseline(console, result.artifact)
        for report in result.report.passes:
            for decline in report.declined:
                console.print(
                    f"  [yellow]declined[/] {report.name} at {decline.target}: {decline.reason}"
                )
        written = write_outputs(result, spec, out_dir)
        console.print(f"wrote {', '.join(p.name for p in written)} to {out_dir}")


def summary_table(report: OptimizeReport) -> Table:
    """Before/after table of params and MACs, then one row per pass."""
    table = Table(title=f"{report.model}: before → after")
    for column in ("stage", "params", "MACs", "rewritten", "declined", "max rel err", "s"):
        table.add_column(
            column, justify="left" if column == "stage" else "right", no_wrap=column == "stage"
        )
    table.add_row("before", human(report.before.params), human(report.before.macs), "", "", "", "")
    for p in report.passes:
        error = p.verification.max_rel_error if p.verification else None
        table.add_row(
            p.name,
            human(p.after.params) if p.after else "",
            human(p.after.macs) if p.after else "",
            str(len(p.touched)),
            str(len(p.declined)),
            f"{error:.1e}" if error is not None else ("lossy" if not p.exact else ""),
            f"{p.seconds:.2f}" if p.seconds is not None else "",
        )
    table.add_row(
        "after",
        f"{human(report.after.params)} ({report.ratio('params'):.1%})",
        f"{human(report.after.macs)} ({report.ratio('macs'):.1%})",
        "",
        "",
        "",
        f"{report.seconds:.2f}",
    )
    return table


def human(count: int) -> str:
    """``1816557056`` → ``1.817G``."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.4g}{unit}"
    return str(count)


@app.command()
def passes() -> None:
    """List every registered pass with its rewrite and its fields."""
    console = _console()
    from graphopt.registry import REGISTRY

    table = Table(title="registered passes")
    for column in ("name", "exact", "rewrite", "fields", "from"):
        table.add_column(column)
    for cls in REGISTRY.passes():
        first_line = (cls.__doc__ or "").strip().splitlines()[0]
        fields = ", ".join(
            f"{n}={f.default!r}" if not f.is_required() else n for n, f in cls.model_fields.items()
        )
        table.add_row(cls.name, "yes" if cls.exact else "no", first_line, fields, cls.__module__)
    console.print(table)
    for name, error in REGISTRY.load_errors.items():
        console.print(f"[red]failed to load[/] {name}: {error}")


@app.command()
def schema(
    name: Annotated[
        str | None, typer.Argument(help="recipe, report, manifest or a pass name.")
    ] = None,
) -> None:
    """Print a JSON Schema (without NAME: list the available ones)."""
    console = _console()
    from graphopt.registry import REGISTRY
    from graphopt.schema_export import manifest_schema, pass_schema, recipe_schema, report_schema

    with _errors():
        available = ["recipe", "report", "manifest", *(p.name for p in REGISTRY.passes())]
        if name is None:
            console.print("\n".join(available))
            return
        if name == "recipe":
            document = recipe_schema(REGISTRY.passes())
        elif name == "report":
            document = report_schema()
        elif name == "manifest":
            document = manifest_schema()
        else:
            document = pass_schema(REGISTRY.resolve(name))
        print(json.dumps(document, indent=2, sort_keys=True))


@app.command()
def inspect(
    source: Annotated[
        str, typer.Argument(help="Recipe file, saved model.pt, or torchvision:NAME.")
    ],
    shape: Annotated[
        str | None, typer.Option(help="Input shape for model.pt / torchvision, e.g. 1,3,224,224.")
    ] = None,
    trust_model_file: Annotated[bool, _TRUST] = False,
) -> None:
    """Print the captured graph: every node with its shape, MACs and params."""
    console = _console()
    from graphopt.analysis.cost import model_stats, node_costs

    with _errors():
        gm = _captured(source, shape, trust_model_file)
        table = Table(title=f"{type(gm).__name__} ({source})")
        for column in ("node", "op", "target", "shape", "MACs", "params"):
            table.add_column(column, justify="right" if column in ("MACs", "params") else "left")
        for cost in node_costs(gm):
            table.add_row(
                cost.node,
                cost.op,
                cost.target,
                str(list(cost.shape)) if cost.shape else "",
                f"{cost.macs:,}" if cost.macs else "",
                f"{cost.params:,}" if cost.params else "",
            )
        console.print(table)
        stats = model_stats(gm)
        console.print(f"total: {stats.params:,} params, {stats.macs:,} MACs")


def _captured(source: str, shape: str | None, trust: bool):
    from graphopt.analysis.shapes import propagate_shapes
    from graphopt.frontend.fx import capture
    from graphopt.frontend.model_file import load_model
    from graphopt.recipe import TorchvisionModel, load_recipe

    if source.endswith((".yaml", ".yml", ".json")):
        spec, base = load_recipe(source)
        model = spec.model.build(base)
        model.train(spec.capture.mode == "train")
        return capture(
            model,
            spec.example_inputs(),
            leaf_modules=spec.capture.leaf_modules,
            leaf_types=spec.capture.leaf_types,
        )
    if shape is None:
        raise typer.BadParameter("--shape is needed for a model without a recipe")
    import torch

    inputs = torch.randn([int(s) for s in shape.split(",")])
    if source.startswith("torchvision:"):
        return capture(
            TorchvisionModel(torchvision=source.split(":", 1)[1]).build(Path()).eval(), inputs
        )
    gm = load_model(source, trust=trust)
    propagate_shapes(gm, (inputs,))
    return gm


@app.command()
def bench(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory (graphopt.compile).")],
    model: Annotated[
        Path | None,
        typer.Option(help="The original model (graphopt model file .pt or torch.export .pt2)."),
    ] = None,
    trust_model_file: Annotated[bool, _TRUST] = False,
    rounds: Annotated[int, typer.Option(min=1, help="Timed calls per contender.")] = 30,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed calls first.")] = 3,
    threads: Annotated[int | None, typer.Option(min=1, help="torch threads.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
) -> None:
    """Time an artifact (median of interleaved rounds, p10–p90), against PyTorch eager; an
    artifact compiled with a baseline also shows that check, as stored and measured now."""
    console = _console()
    import torch

    from graphopt.compiler.artifact import load
    from graphopt.compiler.measure.benchmark import time_interleaved

    with _errors():
        compiled = load(artifact)
        if threads:
            torch.set_num_threads(threads)
        generator = torch.Generator().manual_seed(0)
        inputs = [_random_input(s, generator) for s in compiled.manifest.inputs]
        arrays = [x.numpy() for x in inputs]
        contenders = {f"graphopt ({compiled.manifest.target.name})": lambda: compiled(*arrays)}
        if model is not None:
            eager = _load_torch_model(model, trust_model_file)
            contenders = {"pytorch eager": lambda: eager(*inputs), **contenders}
        with torch.no_grad():
            timings = time_interleaved(contenders, rounds=rounds, warmup=warmup)
        console.print(_timing_table(timings))
        data = {k: t.model_dump() for k, t in timings.items()}
        remeasured = _remeasured_baseline(compiled, inputs, rounds)
        if remeasured is not None:
            console.print(remeasured[0])
            data["baseline"] = {
                "at_compile": compiled.manifest.baseline.model_dump(),
                "now": remeasured[1].model_dump(),
            }
        if json_out is not None:
            json_out.write_text(json.dumps(data))


def _print_baseline(console, artifact) -> None:
    check = artifact.manifest.baseline if artifact is not None else None
    if check is not None:
        style = "green" if check.faster else "bold red"
        console.print(Text(check.line(), style=style), highlight=False)


def _remeasured_baseline(compiled, inputs, rounds: int):
    """The manifest's baseline check next to the same check measured now (None when the
    artifact was compiled without a baseline)."""
    from graphopt.compiler.measure.baseline import measure

    stored = compiled.manifest.baseline
    if stored is None:
        return None
    now = measure(compiled, stored.baseline, inputs, rounds)
    table = Table(title=f"never-slower check against {stored.baseline}")
    for column in ("", "artifact ms", f"{stored.baseline} ms", "ratio"):
        table.add_column(column, justify="left" if not column else "right")
    for label, check in (("at compile", stored), ("now", now)):
        ratio = Text(f"{check.ratio:.2f}", style="green" if check.faster else "bold red")
        table.add_row(label, f"{check.artifact_ms:.3f}", f"{check.baseline_ms:.3f}", ratio)
    return table, now


def _random_input(spec, generator):
    """Random data of the manifest's shape and dtype (integers in [0, 2): safe as ids/masks)."""
    import torch

    dtype = getattr(torch, spec.dtype)
    if dtype.is_floating_point:
        return torch.randn(spec.shape, generator=generator).to(dtype)
    return torch.randint(0, 2, spec.shape, generator=generator, dtype=dtype)


def _load_torch_model(path: Path, trust: bool):
    import torch

    from graphopt.frontend.model_file import load_model

    if path.suffix == ".pt2":
        return torch.export.load(str(path)).module()
    return load_model(path, trust=trust).eval()


def _timing_table(timings) -> Table:
    first = next(iter(timings.values())).median_ms
    table = Table(title="batch latency (median of interleaved rounds)")
    for column in ("contender", "median ms", "p10–p90 ms", "× first row"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    for name, t in timings.items():
        spread = f"{t.p10_ms:.2f}–{t.p90_ms:.2f}"
        table.add_row(name, f"{t.median_ms:.2f}", spread, f"{t.median_ms / first:.2f}")
    return table


# Exit status 2: what the user gave is wrong (recipe, config, model file, artifact, model that
# cannot be captured). Status 1: graphopt could not do the work (a pass, verification, TVM).
BAD_INPUT = (ConfigError, RegistryError, ModelFileError, ArtifactError, CaptureError)


class _errors:
    """Print graphopt's own errors without a traceback; exit 2 for bad input, else 1."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, (GraphOptError, NotImplementedError)):
            _console().print(Text.assemble(("error: ", "red"), str(exc)), highlight=False)
            raise typer.Exit(2 if isinstance(exc, BAD_INPUT) else 1)
        return False


def main() -> None:
    app()


if __name__ == "__main__":
    main()
