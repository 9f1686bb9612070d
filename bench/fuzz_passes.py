"""Every built-in pass on 1,000 generated graphs each: how many runs were ok, refused with a
typed error, silently wrong or crashed (see tests/property/pass_matrix.py for the verdicts).

    python bench/fuzz_passes.py [--graphs 1000]

Writes bench/results/fuzz_passes.json and bench/results/fuzz_passes.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
VERDICTS = ("ok", "refused", "silently wrong", "crashed")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--graphs", type=int, default=1000)
    args = parser.parse_args()
    import torch

    from tests.property.pass_matrix import PASSES, random_kinds, random_model, run_pass

    torch.set_num_threads(1)
    rows = {}
    for name in PASSES:
        rng, counts, examples = random.Random(name), collections.Counter(), {}
        start = time.perf_counter()
        for seed in range(args.graphs):
            kinds = random_kinds(rng)
            outcome = run_pass(name, random_model(kinds, seed), seed)
            counts[outcome.verdict] += 1
            if outcome.verdict != "ok":
                examples.setdefault(outcome.verdict, f"{kinds} seed {seed}: {outcome.detail}")
        rows[name] = {
            **{v: counts[v] for v in VERDICTS},
            "seconds": time.perf_counter() - start,
            "examples": examples,
        }
        print(name, dict(counts), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fuzz_passes.json").write_text(json.dumps(rows, indent=2))
    (RESULTS / "fuzz_passes.md").write_text(_markdown(rows, args.graphs))


def _markdown(rows: dict, graphs: int) -> str:
    lines = [
        "# Every pass on generated graphs",
        "",
        f"{graphs} random graphs of coupled-channel blocks (conv, grouped, depthwise, residual, "
        "concat, split, channel pad, shuffle) per pass; verdicts judged outside the pass manager "
        "on fresh input copies (tests/property/pass_matrix.py). `python bench/fuzz_passes.py`.",
        "",
        "| pass | ok | refused (typed error) | silently wrong | crashed | s |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['ok']} | {r['refused']} | {r['silently wrong']} | {r['crashed']} "
            f"| {r['seconds']:.0f} |"
        )
    lines += ["", "First example of each non-ok verdict:", ""]
    for name, r in rows.items():
        for verdict, example in r["examples"].items():
            lines.append(f"- {name}, {verdict}: {example}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
