"""Build PRIME's three models (policy, implicit PRM, frozen reference) from one SFT checkpoint, with their
optimizers and LR schedules, for the current parallel layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import parallel
from .config import Config, OptimConfig
from .grads import trainable


@dataclass
class PrimeModels:
    policy: torch.nn.Module
    prm: torch.nn.Module | None            # None in outcome-only RLOO mode
    ref: torch.nn.Module | None            # None when ref_type=policy (old log-probs are the reference)
    policy_optim: torch.optim.Optimizer
    policy_sched: torch.optim.lr_scheduler.LRScheduler
    prm_optim: torch.optim.Optimizer | None
    prm_sched: torch.optim.lr_scheduler.LRScheduler | None

    def checkpoint_parts(self) -> tuple[dict, dict, dict]:
        """(models, optimizers, schedulers) by name, for the checkpoint manager. Collective with the
        distributed optimizer: every DP rank must call it (the manager writes from DP rank 0 only)."""
        for optim in (self.policy_optim, self.prm_optim):
            if hasattr(optim, "consolidate_state_dict"):  # ZeRO: gather the moment shards on DP rank 0
                optim.consolidate_state_dict(to=0)
        models = {"policy": self.policy}
        optims = {"policy": self.policy_optim}
        scheds = {"policy": self.policy_sched}
        if self.prm is not None:
            models["prm"] = self.prm
            optims["prm"] = self.prm_optim
            scheds["prm"] = self.prm_sched
        return models, optims, scheds


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig, *, shard_over_dp: bool = False
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with a linear warmup then a constant LR (PRIME's schedule: constant, 0 warmup).

    shard_over_dp (parallel.distributed_optimizer) with DP > 1: torch's ZeroRedundancyOptimizer over the DP
    group. Gradients are already summed over DP before the step (grads.reduce_across_dp), so each rank runs
    the same AdamW arithmetic on its share of the parameters and broadcasts the result: the parameters are the
    same as unsharded AdamW's, and each rank holds 1/dp of the moments."""
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, eps=1e-8)
    if shard_over_dp and parallel.layout().dp > 1:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        optim = ZeroRedundancyOptimizer(trainable(model), optimizer_class=torch.optim.AdamW,
                                        process_group=parallel.dp_group(), **kwargs)
    else:
        optim = torch.optim.AdamW(trainable(model), **kwargs)
    warmup = max(0, cfg.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    return optim, sched


def load_model(path: str | Path, *, role: str, dtype: str):
    """A Megatron model for this rank filled from an HF checkpoint."""
    from primeflow.models import ModelConfig, build_model, load_hf_checkpoint

    model = build_model(ModelConfig.from_hf(path), role=role, params_dtype=dtype, device=parallel.device())
    load_hf_checkpoint(model, path)
    return model


def build_prime_models(config: Config, sft_path: str | Path) -> PrimeModels:
    """Policy and PRM start as copies of the SFT model (PRIME: pi_phi = pi_ref = pi_theta at step 0)."""
    policy = load_model(sft_path, role="policy", dtype=config.model.params_dtype)
    shard = config.parallel.distributed_optimizer
    policy_optim, policy_sched = make_optimizer(policy, config.ppo.optim, shard_over_dp=shard)
    prm = ref = prm_optim = prm_sched = None
    if config.prime.mode == "prime":
        prm = load_model(sft_path, role="prm", dtype=config.model.params_dtype)
        prm_optim, prm_sched = make_optimizer(prm, config.prm.optim, shard_over_dp=shard)
        if config.prime.ref_type == "freeze":
            ref = load_model(sft_path, role="ref", dtype=config.model.ref_dtype)
            ref.eval()
    return PrimeModels(policy, prm, ref, policy_optim, policy_sched, prm_optim, prm_sched)
