"""Measured activation memory of real small Megatron models, for `primeflow plan`'s validation, run under
torchrun over gloo by test_plan.py and bench/plan_validation.py:

    torchrun --nproc_per_node=2 tests/trainer/plan_measure.py --cases CASES.json --out RESULT.json

CASES.json is a list of {name, tp, dtype, memory: ActivationMemory kwargs, hf: make_tiny_checkpoint
overrides, rows, seq_len}. For each case every rank builds the model the trainer builds (build_model inside
megatron-core DDP, Float16Module for bf16), scores `rows` packed sequences of `seq_len` tokens through
`sequence_logprobs` and backwards a weighted sum, and rank 0 records:

* saved_bytes: the bytes of the tensors autograd keeps for backward (saved-tensor hooks), each storage
  counted once, parameters excluded (they are resident anyway), broken down by the module that saved them;
* train_peak_bytes: the peak of allocated-minus-freed bytes from the start of the forward to the end of the
  backward (torch.profiler memory events: allocator-level, unlike RSS), above what was allocated before;
* forward_peak_bytes: the same for a no-grad forward (the old/ref log-prob stages);
* params: this rank's parameter elements.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))  # tests/models/dist.py only
import dist as dist_helper  # noqa: E402
from primeflow.models import (  # noqa: E402  # noqa: E402
    ModelConfig,
    build_model,
    load_hf_checkpoint,
    make_tiny_checkpoint,
    sequence_logprobs,
    unwrap_model,
)
from primeflow.models.memory import ActivationMemory  # noqa: E402
from primeflow.trainer.optimizer import wrap_for_training  # noqa: E402

_TAGGED = ("input_layernorm", "linear_qkv", "core_attention", "linear_proj", "pre_mlp_layernorm", "linear_fc1",
           "linear_fc2", "final_layernorm", "embedding", "output_layer")


class SavedBytes:
    """Saved-tensor hooks that sum each saved storage once, minus parameters, by the innermost tagged module."""

    def __init__(self, model: torch.nn.Module):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: dict[int, int] = {}
        self.by_module: dict[str, int] = {}
        self.stack: list[str] = ["other"]
        for name, module in model.named_modules():
            kind = name.rsplit(".", 1)[-1]
            if kind in _TAGGED or (kind == "mlp" and "layers" in name) or kind == "self_attention":
                module.register_forward_pre_hook(lambda *_a, kind=kind: self.stack.append(kind) and None)
                module.register_forward_hook(lambda *_a: self.stack.pop() and None)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.params and ptr not in self.seen and storage.nbytes() > 0:
            self.seen[ptr] = storage.nbytes()
            where = self.stack[-1]
            self.by_module[where] = self.by_module.get(where, 0) + storage.nbytes()
        return tensor

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def _peak(prof) -> int:
    current = peak = 0
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def measure(case: dict, root: Path) -> dict:
    dist_helper.init_parallel(tp=case["tp"])
    ckpt = make_tiny_checkpoint(root / f"{case['name']}_rank{dist.get_rank()}", seed=3, **case.get("hf", {}))
    cfg = ModelConfig.from_hf(ckpt)
    memory = ActivationMemory(**{k: tuple(v) if isinstance(v, list) else v for k, v in case["memory"].items()})
    inner = build_model(cfg, role="policy", params_dtype=case["dtype"], memory=memory)
    load_hf_checkpoint(inner, ckpt)
    model = wrap_for_training(inner, distributed_optimizer=False, overlap_grad_reduce=False)
    model.train()
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, cfg.vocab_size, (case["rows"], case["seq_len"]), generator=gen)
    weights = torch.randn(case["rows"], case["seq_len"] - 1, generator=gen)
    hooks = SavedBytes(unwrap_model(model))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with torch.autograd.graph.saved_tensors_hooks(hooks.pack, lambda t: t):
            logp = sequence_logprobs(model, ids)
        (logp * weights).sum().backward()
    train_peak = _peak(prof)
    del logp
    model.eval()
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        sequence_logprobs(model, ids)
    return {"case": case, "params": sum(p.numel() for p in inner.parameters()), "saved_bytes": hooks.total,
            "saved_by_module": hooks.by_module,
            "train_peak_bytes": train_peak, "forward_peak_bytes": _peak(prof)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--workdir", type=Path, required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    results = [measure(case, args.workdir) for case in json.loads(args.cases.read_text())]
    if dist.get_rank() == 0:
        args.out.write_text(json.dumps(results, indent=1))
    dist_helper.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
