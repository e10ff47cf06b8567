"""Shared by the in-process and torchrun checkpoint tests: build PRIME-like model sets, train them a little,
snapshot everything a resume must restore, and compare snapshots bitwise."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from primeflow.models import ModelConfig, build_model, load_hf_checkpoint
from primeflow.trainer.config import OptimConfig
from primeflow.trainer.optimizer import finalize_grads, make_optimizer, wrap_for_training


def build_set(ckpt: Path, *, init_seed: int, load: bool = True, roles=("policy", "prm"), distributed: bool = False,
              checkpoint_format: str = "dp_reshardable", dtype: str = "float32"):
    """{role: Megatron model}, {role: MegatronAdamW}, {role: WarmupConstantLR}: the trainer's own machinery
    (megatron-core DDP, its optimizer, `distributed` = the distributed optimizer). With load=False the weights
    are a fresh random init (a different `init_seed` gives different weights: the target of a checkpoint load
    must not already equal the source). Forward through `opts[role].model` (the DDP wrapper)."""
    cfg = ModelConfig.from_hf(ckpt)
    torch.manual_seed(init_seed)
    models, opts, scheds = {}, {}, {}
    optim_cfg = OptimConfig(lr=1e-3, betas=[0.9, 0.95], weight_decay=0.01, warmup_steps=3)
    for role in roles:
        model = build_model(cfg, role=role, params_dtype=dtype)
        if load:
            load_hf_checkpoint(model, ckpt)
        wrapped = wrap_for_training(model, distributed_optimizer=distributed)
        models[role] = model
        opts[role], scheds[role] = make_optimizer(wrapped, optim_cfg, distributed=distributed,
                                                  checkpoint_format=checkpoint_format)
    return models, opts, scheds


def train_step(models, opts, scheds, *, seed: int, vocab: int, batch=2, seq=12) -> None:
    """One deterministic update of every model (fixed data from `seed`; dropout is off in these models).
    With PP > 1 a stage cannot run the model alone, so gradients are seeded random tensors instead (the
    checkpoint only cares that parameters and AdamW moments are non-trivial and deterministic)."""
    from megatron.core import parallel_state

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    pos = torch.arange(seq).expand(batch, seq)
    for role in models:
        opt = opts[role]
        opt.zero_grad()
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            for p in models[role].parameters():
                p.main_grad.copy_(torch.randn(p.shape, generator=g))
        else:
            logp = opt.model(input_ids=ids, position_ids=pos, attention_mask=None, labels=torch.roll(ids, -1, 1))
            (-logp.float().mean()).backward()
            finalize_grads(opt.model)
        opt.step()
        scheds[role].step()


def optimizer_tensors(opt) -> dict[str, torch.Tensor]:
    """This rank's optimizer state: every fp32 main parameter (or shard of one) and its AdamW state."""
    torch_opt = opt._chained().optimizer
    out = {}
    for gi, group in enumerate(torch_opt.param_groups):
        for pi, main in enumerate(group["params"]):
            out[f"{gi}.{pi}.main"] = main.detach().clone()
            for k, v in torch_opt.state[main].items():
                out[f"{gi}.{pi}.{k}"] = v.clone()
    return out


def snapshot(models, opts, scheds) -> dict:
    """Deep copies of parameters, optimizer states and scheduler states."""
    out = {"params": {}, "opt": {}, "sched": {}}
    for role, model in models.items():
        out["params"][role] = {n: p.detach().clone() for n, p in model.named_parameters()}
        # A group's "step" is megatron-core's carrier of the step count into a loaded distributed optimizer
        # (absent before any load); the per-parameter steps compared in `tensors` are the real state.
        out["opt"][role] = {"tensors": optimizer_tensors(opts[role]),
                            "param_groups": [{k: v for k, v in g.items() if k not in ("params", "step")}
                                             for g in opts[role].param_groups]}
        out["sched"][role] = scheds[role].state_dict()
    return out


def assert_snapshots_equal(a: dict, b: dict) -> int:
    """Bitwise equality of two snapshots; returns the number of tensors compared."""
    n = 0
    assert a["params"].keys() == b["params"].keys()
    for role in a["params"]:
        pa, pb = a["params"][role], b["params"][role]
        assert pa.keys() == pb.keys(), role
        for name in pa:
            assert pa[name].dtype == pb[name].dtype and torch.equal(pa[name], pb[name]), f"{role}.{name} differs"
            n += 1
        sa, sb = a["opt"][role], b["opt"][role]
        assert sa["param_groups"] == sb["param_groups"], f"{role} optimizer param_groups differ"
        ta, tb = sa["tensors"], sb["tensors"]
        assert ta.keys() == tb.keys() and any(k.endswith("exp_avg") for k in ta), f"{role} optimizer state"
        for k in ta:
            assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), f"{role} optimizer {k} differs"
            n += 1
        assert a["sched"][role] == b["sched"][role], f"{role} scheduler state differs"
    return n


def draw_streams(gen: torch.Generator | None = None) -> dict:
    """A few values from every RNG stream a checkpoint restores (and from `gen`)."""
    out = {"python": [random.random() for _ in range(3)], "numpy": np.random.rand(3).tolist(),
           "numpy_gauss": float(np.random.randn()), "torch": torch.rand(3).tolist()}
    if gen is not None:
        out["generator"] = torch.rand(3, generator=gen).tolist()
    return out


def perturb_streams(gen: torch.Generator | None = None) -> None:
    """Move every stream away from the saved point (a load that restores nothing then fails the test)."""
    random.random()
    np.random.rand(5)
    torch.rand(7)
    if gen is not None:
        torch.rand(11, generator=gen)
