"""Multi-process model checks, run under torchrun over gloo by test_megatron_multiproc.py.

    torchrun --nproc_per_node=N tests/models/mp_parity.py --tp T --pp P --out RESULT.json CKPT [CKPT ...]

For each checkpoint: build + load with TP=T, PP=P, then the parity checks of parity.py (logits, log-prob
head and gradient checks call the model directly, so with PP>1 their pipeline-scheduled twins run:
sequence_logprobs, logits and gradients through Megatron's forward(-backward) schedule), then an HF export
round trip (bitwise per tensor) into `<out dir>/export_<i>`, then (PP=1) one AdamW step compared with
transformers'. Rank 0 writes RESULT.json with the measured errors; any failure exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder only (not tests/: see conftest.py)
import dist as dist_helper  # noqa: E402
import parity  # noqa: E402
from primeflow.models import export_hf_checkpoint  # noqa: E402


def _hf_tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def round_trip(model, ckpt: Path, out: Path) -> int:
    """Export and compare every tensor bitwise with the source checkpoint; returns the tensor count."""
    export_hf_checkpoint(model, out)
    if dist.get_rank() == 0:
        src, dst = _hf_tensors(ckpt), _hf_tensors(out)
        src.pop("lm_head.weight", None) if "lm_head.weight" not in dst else None
        assert src.keys() == dst.keys(), f"exported names differ: {sorted(src.keys() ^ dst.keys())}"
        for name in src:
            assert src[name].dtype == dst[name].dtype and torch.equal(src[name], dst[name]), \
                f"{name} not bitwise equal after HF -> Megatron -> HF"
        return len(src)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tp", type=int, required=True)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("ckpts", nargs="+", type=Path)
    args = ap.parse_args()
    dist_helper.init_parallel(tp=args.tp, pp=args.pp)
    results: dict[str, dict[str, float]] = {}
    # A failing check raises on its rank; torchrun then stops the other ranks (which may be waiting in a
    # collective) and exits non-zero, which is what the calling test looks at.
    for i, ckpt in enumerate(args.ckpts):
        model, cfg = parity.build_loaded(ckpt)
        hf = parity.load_hf(ckpt)
        if args.pp == 1:
            checks = [parity.check_logits, parity.check_logprob_head, parity.check_sequence_logprobs,
                      parity.check_gradients]
        else:
            checks = [parity.check_sequence_logprobs, parity.check_pipeline_logits,
                      parity.check_pipeline_gradients]
        res = {check.__name__: check(model, hf, cfg, args.seed) for check in checks}
        res["round_trip_tensors"] = round_trip(model, ckpt, args.out.parent / f"export_{i}")
        if args.pp == 1:  # last: it updates the weights
            res["check_train_step"] = parity.check_train_step(model, hf, cfg, args.seed)
        # Errors are measured where the model output lives (the last pipeline stage): keep each max.
        gathered: list[dict | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, res)
        results[ckpt.name] = {k: max(r[k] for r in gathered) for k in res}
    if dist.get_rank() == 0:
        args.out.write_text(json.dumps({"tp": args.tp, "pp": args.pp, "results": results}, indent=2))
    dist_helper.shutdown()
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
