"""The product in one command (`make demo`): a real pretrained model compressed,
compiled, timed against PyTorch eager and ONNX Runtime, and checked against the original.

    python docs/examples/minilm/demo.py [--rounds 30] [--sts]

1. Runs the recipe demo.yaml (all-MiniLM-L6-v2, whitened low-rank factorisation of the
   encoder's Linear layers keeping 75 % of their parameters, compiled for this CPU),
   writing the model, report.json and the artifact to out/minilm_demo/.
2. Compiles the original too, exports both to ONNX, and times eager / ONNX Runtime / the
   artifact for each, interleaved in one process (read the ratios: machines are shared).
3. Quality: the cosine between the original's and the compressed model's sentence embeddings
   on held-out sentences (and, with --sts when ../shared/data has STS-B, Spearman × 100).

Prints one table and writes demo.json / demo.md beside the other outputs; exits non-zero when
the artifact disagrees with its model or the held-out cosine falls below 0.85 (CI runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
warnings.filterwarnings("ignore")

import factories  # noqa: E402

import graphopt  # noqa: E402
from graphopt.compiler.measure.benchmark import time_interleaved  # noqa: E402
from graphopt.compiler.threads import default_threads  # noqa: E402
from graphopt.recipe import load_recipe  # noqa: E402
from graphopt.runner import run_recipe, write_outputs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--sts", action="store_true", help="also STS-B Spearman (../shared)")
    args = parser.parse_args()
    torch.set_num_threads(default_threads())

    recipe, base = load_recipe(HERE / "demo.yaml")
    out = (base / recipe.output_dir).resolve()
    result = run_recipe(recipe, base, source=HERE / "demo.yaml")
    write_outputs(result, recipe, out)
    original = factories.model()
    example = recipe.example_inputs()
    before = graphopt.compile(original, example, tuning=None).save(out / "original_artifact")

    rows = {
        "before": _measure(original, graphopt.load(before), before / "model.onnx", example),
        "after": _measure(result.model, result.artifact, out / "artifact" / "model.onnx", example),
    }
    rows["before"].update(params=result.report.before.params, macs=result.report.before.macs)
    rows["after"].update(params=result.report.after.params, macs=result.report.after.macs)
    timings = time_interleaved(
        {
            f"{stage} {kind}": fn
            for stage, row in rows.items()
            for kind, fn in row.pop("run").items()
        },
        rounds=args.rounds,
        warmup=5,
        burst=3,
    )
    for stage, row in rows.items():
        for kind in ("eager", "onnxruntime", "artifact"):
            row[f"{kind}_ms"] = timings[f"{stage} {kind}"].median_ms
    quality = _quality(original, result.model, result.artifact, args.sts)
    document = {"rows": rows, "quality": quality, "threads": default_threads()}
    (out / "demo.json").write_text(json.dumps(document, indent=2))
    (out / "demo.md").write_text(markdown(document))
    _print(document)
    print(f"wrote the model, report.json, artifact/, original_artifact/ and demo.md to {out}")
    _check(quality)


# The committed run's agreement is 0.890; below this the recipe or a pass regressed.
MIN_COSINE = 0.85


def _check(quality: dict) -> None:
    """Exit non-zero (CI runs the demo) when the artifact disagrees with the compressed model
    it was compiled from, or the compressed model with the original."""
    eager, artifact = quality["cosine_eager_vs_original"], quality["cosine_artifact_vs_original"]
    if abs(eager - artifact) > 1e-3:
        sys.exit(f"the artifact's embeddings differ from its model's: cosine {artifact} vs {eager}")
    if eager < MIN_COSINE:
        sys.exit(f"held-out cosine {eager:.4f} is below {MIN_COSINE}: the compression regressed")


def _measure(model, artifact, onnx_path: Path, example) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = default_threads()
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), example, strict=True)}
    arrays = [x.numpy() for x in example]

    def eager():
        with torch.no_grad():
            return model(*example)

    return {
        "run": {
            "eager": eager,
            "onnxruntime": lambda: session.run(None, feeds),
            "artifact": lambda: artifact(*arrays),
        }
    }


def _quality(original, compressed, artifact, sts: bool) -> dict:
    texts = factories.held_out()
    want = factories.embed(original, texts)
    cosine = lambda run: float((factories.embed(run, texts) * want).sum(-1).mean())  # noqa: E731

    def one_by_one(ids, mask):  # the artifact is compiled for batch 1
        rows = [artifact(ids[i : i + 1].numpy(), mask[i : i + 1].numpy()) for i in range(len(ids))]
        return np.concatenate(rows)

    quality = {
        "held_out_sentences": len(texts),
        "cosine_eager_vs_original": cosine(compressed),
        "cosine_artifact_vs_original": cosine(one_by_one),
    }
    data = HERE.parents[3] / "shared" / "data" / "stsbenchmark" / "sts-test.csv"
    if sts and data.is_file():
        quality["sts_spearman_before"] = _spearman(original, data)
        quality["sts_spearman_after"] = _spearman(compressed, data)
    return quality


def _spearman(model, path: Path) -> float:
    from scipy.stats import spearmanr

    first, second, gold = [], [], []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 7:
            gold.append(float(parts[4]))
            first.append(parts[5])
            second.append(parts[6])
    a = torch.cat([factories.embed(model, first[i : i + 64]) for i in range(0, len(first), 64)])
    b = torch.cat([factories.embed(model, second[i : i + 64]) for i in range(0, len(second), 64)])
    return 100 * float(spearmanr((a * b).sum(-1).numpy(), gold).correlation)


def markdown(document: dict) -> str:
    rows, quality = document["rows"], document["quality"]
    lines = [
        f"all-MiniLM-L6-v2, 1 sentence × {factories.SEQUENCE} tokens, {document['threads']} "
        "threads; latency = median of interleaved rounds (ms).",
        "",
        "| | params | MACs | PyTorch eager | ONNX Runtime | graphopt artifact |",
        "|---|---|---|---|---|---|",
    ]
    for stage, row in rows.items():
        lines.append(
            f"| {stage} | {row['params'] / 1e6:.2f} M | {row['macs'] / 1e6:.1f} M "
            f"| {row['eager_ms']:.2f} | {row['onnxruntime_ms']:.2f} | {row['artifact_ms']:.2f} |"
        )
    after, before = rows["after"], rows["before"]
    lines += [
        "",
        f"- compressed artifact vs original in eager: {after['artifact_ms'] / before['eager_ms']:.2f}×"
        f" the time; vs original in ONNX Runtime: "
        f"{after['artifact_ms'] / before['onnxruntime_ms']:.2f}×",
        f"- embedding agreement with the original on {quality['held_out_sentences']} held-out "
        f"sentences (mean cosine): eager {quality['cosine_eager_vs_original']:.4f}, artifact "
        f"{quality['cosine_artifact_vs_original']:.4f}",
    ]
    if "sts_spearman_before" in quality:
        lines.append(
            f"- STS-B test Spearman × 100: {quality['sts_spearman_before']:.2f} → "
            f"{quality['sts_spearman_after']:.2f}"
        )
    return "\n".join(lines) + "\n"


def _print(document: dict) -> None:
    from rich.console import Console
    from rich.markdown import Markdown

    Console().print(Markdown(markdown(document)))


if __name__ == "__main__":
    main()
