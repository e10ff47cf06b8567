"""Saved activation bytes per token per layer at Qwen2.5-7B per-rank shapes (TP=4), with and without
recompute and sequence parallelism (issue 16, Measure), on CPU under torchrun x4 over gloo:

    .venv/bin/python -m bench.saved_activations_7b   # writes bench/results/cpu_saved_activations_7b_tp4.json

Each setting builds the model the trainer builds (tests/trainer/plan_measure.py: build_model inside
megatron-core DDP, Float16Module for bf16) with Qwen2.5-7B's layer shapes (hidden 3584, 28 query / 4 KV
heads, FFN 18944, split over TP=4) and a small vocabulary, scores one packed micro-batch and backwards it,
counting the bytes autograd saves for backward (each storage once, parameters excluded). It does so at 1
and at 2 layers: the difference is exactly one decoder layer's saved bytes, free of the embedding, the head
and the final norm. `primeflow plan`'s formula (models/memory_plan.py) is evaluated on the same shapes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .plan_validation import ROOT, measure, predicted

_QWEN7B_LAYER = {"hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4,
                 "intermediate_size": 18944, "vocab_size": 512,
                 "dtype": "bfloat16"}  # checkpoint storage only (half the bytes each rank writes)
TP, ROWS, SEQ_LEN = 4, 2, 256  # 512 tokens: the per-token figure does not depend on the count
SETTINGS = [
    ("fp32_none", "float32", {}),  # the issue's starting point (176-227 KiB/token/layer measured then)
    ("bf16_none", "bfloat16", {}),
    ("bf16_selective", "bfloat16", {"recompute": "selective", "recompute_modules": ["core_attn"]}),
    ("bf16_sp", "bfloat16", {"sequence_parallel": True}),
    ("bf16_full", "bfloat16", {"recompute": "full"}),
    ("bf16_sp_full", "bfloat16", {"sequence_parallel": True, "recompute": "full"}),  # the 7B presets
]


def cases() -> list[dict]:
    return [{"name": f"{name}_{layers}l", "tp": TP, "dtype": dtype, "memory": memory,
             "hf": {**_QWEN7B_LAYER, "num_hidden_layers": layers}, "rows": ROWS, "seq_len": SEQ_LEN}
            for name, dtype, memory in SETTINGS for layers in (1, 2)]


def per_layer(records: list[dict]) -> list[dict]:
    """Per setting: one layer's saved bytes per token, measured (2 layers - 1 layer) and predicted."""
    by_name = {r["case"]["name"]: r for r in records}
    tokens = ROWS * SEQ_LEN
    rows = []
    for name, dtype, memory in SETTINGS:
        one, two = by_name[f"{name}_1l"], by_name[f"{name}_2l"]
        measured = (two["saved_bytes"] - one["saved_bytes"]) / tokens
        want = (predicted(two["case"])["saved_bytes"] - predicted(one["case"])["saved_bytes"]) / tokens
        rows.append({"setting": name, "dtype": dtype, "memory": memory,
                     "measured_bytes_per_token_per_layer": measured,
                     "predicted_bytes_per_token_per_layer": want, "error": (want - measured) / measured})
    return rows


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        records = measure(cases(), Path(tmp), nproc=TP, timeout_s=3600)
    rows = per_layer(records)
    out = ROOT / "bench" / "results" / f"cpu_saved_activations_7b_tp{TP}.json"
    out.write_text(json.dumps({
        "what": "saved-for-backward bytes per token per decoder layer at Qwen2.5-7B per-rank shapes (TP=4), "
                "measured as the 2-layer minus 1-layer model, vs primeflow plan's formula",
        "command": "python -m bench.saved_activations_7b", "tokens": ROWS * SEQ_LEN, "rows": rows,
        "records": records}, indent=1))
    base = rows[0]["measured_bytes_per_token_per_layer"]
    for row in rows:
        kib = row["measured_bytes_per_token_per_layer"] / 1024
        print(f"{row['setting']:<15} {kib:8.1f} KiB/token/layer ({kib * 1024 / base:6.1%} of fp32 none); "
              f"plan {row['predicted_bytes_per_token_per_layer'] / 1024:8.1f} ({row['error']:+.1%})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
