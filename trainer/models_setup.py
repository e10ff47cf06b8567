"""Build PRIME's three models (policy, implicit PRM, frozen reference) from one SFT checkpoint, with their
optimizers and LR schedules (megatron-core's, trainer/optimizer.py), for the current parallel layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import parallel
from .config import Config, OptimConfig, ParallelConfig
from .optimizer import MegatronAdamW, WarmupConstantLR, make_optimizer, wrap_for_training

if TYPE_CHECKING:
    from primeflow.models.memory import ActivationMemory


@dataclass
class PrimeModels:
    """The trained models are megatron-core DDP wrappers (forward through them); `checkpoint_parts` and the
    refit see the PrimeGPTModel inside (`models.unwrap_model`)."""

    policy: torch.nn.Module
    prm: torch.nn.Module | None            # None in outcome-only RLOO mode
    ref: torch.nn.Module | None            # None when ref_type=policy (old log-probs are the reference)
    policy_optim: MegatronAdamW
    policy_sched: WarmupConstantLR
    prm_optim: MegatronAdamW | None
    prm_sched: WarmupConstantLR | None

    def checkpoint_parts(self) -> tuple[dict, dict, dict]:
        """(models, optimizers, schedulers) by name, for the checkpoint manager (which saves each model with
        its megatron-core optimizer through dist_checkpointing)."""
        from primeflow.models import unwrap_model

        models = {"policy": unwrap_model(self.policy)}
        optims = {"policy": self.policy_optim}
        scheds = {"policy": self.policy_sched}
        if self.prm is not None:
            models["prm"] = unwrap_model(self.prm)
            optims["prm"] = self.prm_optim
            scheds["prm"] = self.prm_sched
        return models, optims, scheds


def trained_model(path: str | Path, *, role: str, dtype: str, optim: OptimConfig, parallel_cfg: ParallelConfig,
                  transformer_impl: str = "auto") -> tuple[torch.nn.Module, MegatronAdamW, WarmupConstantLR]:
    """A model filled from an HF checkpoint inside megatron-core's DDP (and Float16Module for bf16), with
    megatron-core's AdamW and the LR schedule."""
    model = wrap_for_training(load_model(path, role=role, dtype=dtype, memory=parallel_cfg.activation_memory(),
                                         transformer_impl=transformer_impl),
                              distributed_optimizer=parallel_cfg.distributed_optimizer,
                              overlap_grad_reduce=parallel_cfg.overlap_grad_reduce,
                              grad_reduce_in_fp32=parallel_cfg.grad_reduce_in_fp32)
    return (model, *make_optimizer(model, optim, distributed=parallel_cfg.distributed_optimizer,
                                   checkpoint_format=parallel_cfg.optimizer_checkpoint))


def load_model(path: str | Path, *, role: str, dtype: str, memory: ActivationMemory | None = None,
               transformer_impl: str = "auto"):
    """A Megatron model for this rank filled from an HF checkpoint (`memory`: recompute and sequence
    parallelism, default neither; transformer_impl: model.transformer_impl)."""
    from primeflow.models import ModelConfig, build_model, load_hf_checkpoint

    model = build_model(ModelConfig.from_hf(path), role=role, params_dtype=dtype, device=parallel.device(),
                        memory=memory, initialize=False, transformer_impl=transformer_impl)
    load_hf_checkpoint(model, path)
    return model


def build_prime_models(config: Config, sft_path: str | Path) -> PrimeModels:
    """Policy and PRM start as copies of the SFT model (PRIME: pi_phi = pi_ref = pi_theta at step 0)."""
    dtype, impl = config.model.params_dtype, config.model.transformer_impl
    policy, policy_optim, policy_sched = trained_model(sft_path, role="policy", dtype=dtype,
                                                       optim=config.ppo.optim, parallel_cfg=config.parallel,
                                                       transformer_impl=impl)
    prm = ref = prm_optim = prm_sched = None
    if config.prime.mode == "prime":
        prm, prm_optim, prm_sched = trained_model(sft_path, role="prm", dtype=dtype, optim=config.prm.optim,
                                                  parallel_cfg=config.parallel, transformer_impl=impl)
        if config.prime.ref_type == "freeze":
            ref = load_model(sft_path, role="ref", dtype=config.model.ref_dtype,
                             memory=config.parallel.activation_memory(trained=False), transformer_impl=impl)
            ref.eval()
    return PrimeModels(policy, prm, ref, policy_optim, policy_sched, prm_optim, prm_sched)
