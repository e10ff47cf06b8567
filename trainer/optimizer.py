"""megatron-core's training machinery for one trained model (the policy, the PRM, the SFT model).

`wrap_for_training` puts the model inside `Float16Module` (bf16/fp16 compute; parameters in the model's
dtype) and megatron-core's `DistributedDataParallel`: gradients accumulate into one contiguous fp32 buffer
(`grad_reduce_in_fp32`), bucketed, reduced over the DP group while backward runs (`overlap_grad_reduce`),
and reduce-scattered instead of all-reduced with the distributed optimizer. `make_optimizer` builds
megatron-core's optimizer over it (`get_megatron_optimizer`): AdamW on fp32 main parameters (the masters of
bf16 weights), the global grad norm over TP/PP shards and its clipping, and, with
`parallel.distributed_optimizer`, the optimizer state and the main parameters sharded over DP (ZeRO-1, the
updated weights all-gathered after the step). `finalize_grads` ends a backward pass the way Megatron's own
training loop does (`finalize_model_grads`: DP reduction, tied-embedding sums over the pipeline).

Loss convention: each micro-batch's loss share is scaled by *global* counts, so the shares of all
micro-batches on all DP ranks sum to the mini-batch loss. The DP reduction must therefore be a SUM, which is
what DDP does with `calculate_per_token_loss=True` (otherwise it pre-scales by 1/dp).

On CPU the same code runs over gloo through models/compat.py (Megatron's CUDA-only buffers and type checks).
"""

from __future__ import annotations

from typing import Any

import torch

from .config import OptimConfig

# megatron-core's sharding types for the distributed optimizer's checkpointed state (sharded_state_dict).
CHECKPOINT_FORMATS = ("dp_reshardable", "fully_reshardable")

def wrap_for_training(model: torch.nn.Module, *, distributed_optimizer: bool, overlap_grad_reduce: bool = True,
                      grad_reduce_in_fp32: bool = True) -> torch.nn.Module:
    """Float16Module (when the parameters are bf16/fp16) inside megatron-core's DistributedDataParallel.

    Forward through the returned module; checkpoints, export and the refit use `models.unwrap_model(model)`.
    Bucket size: megatron-core's own default (max(40M, 1M x dp) elements)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.transformer.module import Float16Module

    config = model.config
    config.calculate_per_token_loss = True  # DP SUM, not mean: shares are scaled by global counts
    wrapped = Float16Module(config, model) if config.bf16 or config.fp16 else model
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=grad_reduce_in_fp32, overlap_grad_reduce=overlap_grad_reduce,
        use_distributed_optimizer=distributed_optimizer)
    ddp = DistributedDataParallel(config, ddp_config, wrapped)
    # Megatron's pipeline schedules skip the grad sync on all but the last micro-batch through this hook.
    config.no_sync_func = ddp.no_sync
    return ddp


def _cuda_type_names():
    from primeflow.models.compat import cuda_type_names

    return cuda_type_names()


class MegatronAdamW:
    """megatron-core's AdamW for one DDP-wrapped model, with the interface the trainer and the checkpoint
    manager use: `zero_grad`, `step() -> grad norm`, `param_groups`, `sharded_state_dict` /
    `load_sharded_state_dict` (megatron-core's dist_checkpointing, reshardable).

    AdamW applies weight decay to every parameter (torch's AdamW and PRIME's released trainer do; Megatron's
    default would skip biases and norms)."""

    def __init__(self, model: torch.nn.Module, cfg: OptimConfig, *, distributed: bool,
                 checkpoint_format: str = "dp_reshardable"):
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from primeflow.models import unwrap_model

        inner = unwrap_model(model)
        self.model = model
        self.distributed = distributed
        if checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(f"parallel.optimizer_checkpoint={checkpoint_format!r} is not allowed; allowed: "
                             f"{list(CHECKPOINT_FORMATS)}")
        self.checkpoint_format = checkpoint_format
        optim_config = OptimizerConfig(
            optimizer="adam", lr=cfg.lr, min_lr=cfg.lr, weight_decay=cfg.weight_decay,
            adam_beta1=float(cfg.betas[0]), adam_beta2=float(cfg.betas[1]), adam_eps=1e-8,
            clip_grad=float(cfg.grad_clip) if cfg.grad_clip > 0 else 0.0,
            bf16=inner.config.bf16, fp16=inner.config.fp16, params_dtype=inner.config.params_dtype,
            use_distributed_optimizer=distributed)
        with _cuda_type_names():
            self.optim = get_megatron_optimizer(optim_config, [model], config_overrides={})

    @property
    def param_groups(self) -> list[dict]:
        return self.optim.param_groups

    def zero_grad(self) -> None:
        """Zero DDP's gradient buffer (the accumulation target of every backward) and the main grads."""
        self.model.zero_grad_buffer()
        self.optim.zero_grad()

    def step(self) -> float:
        """Clip (global norm over TP/PP shards) and step; returns the norm before clipping. A NaN/inf norm
        is returned as it is and the step propagates it (bf16 has no loss scaler to skip it)."""
        with _cuda_type_names():
            _, grad_norm, _ = self.optim.step()
        return float("nan") if grad_norm is None else float(grad_norm)

    def _chained(self) -> Any:
        members = getattr(self.optim, "chained_optimizers", [self.optim])
        if len(members) != 1:
            raise RuntimeError(f"expected one optimizer for a dense model, megatron built {len(members)}")
        return members[0]

    def sharded_state_dict(self, model_state: dict, *, is_loading: bool, sharding: str | None = None) -> dict:
        """megatron-core's sharded optimizer state for dist_checkpointing (trainer/checkpointing/sharded.py),
        its tensors keyed by the model's parameter keys in `model_state` (the model's sharded_state_dict).

        Without the distributed optimizer the fp32 masters and moments are per parameter, in model space:
        any layout can load them. With it, `checkpoint_format` picks megatron-core's sharding type:
        `dp_reshardable` saves each DP rank's flat shard of the buffers as it is (no communication; a load
        may change DP only), `fully_reshardable` first gathers every shard over DP into per-parameter tensors
        (through the gloo DP group, so GPU memory does not hold the gathered copy) and can be loaded at any
        TP/PP/DP. is_loading=True builds the structure a load fills (collective with the distributed
        optimizer); `sharding` then names the type the checkpoint was saved with (default: this optimizer's
        `checkpoint_format`)."""
        if is_loading:
            self._allocate_state()
        metadata = {"distrib_optim_sharding_type": sharding or self.checkpoint_format,
                    "distrib_optim_fully_reshardable_mem_efficient": True}
        with _cuda_type_names():
            return self._chained().sharded_state_dict(model_state, is_loading=is_loading, metadata=metadata)

    def checkpoint_layout(self) -> dict:
        """What a checkpoint records about this optimizer's saved state: whether it is the distributed
        optimizer's and its sharding type (`model_space` without the distributed optimizer)."""
        return {"distributed": self.distributed,
                "sharding": self.checkpoint_format if self.distributed else "model_space"}

    def load_sharded_state_dict(self, state: dict) -> None:
        """Restore what `dist_checkpointing.load` filled into `sharded_state_dict(..., is_loading=True)`."""
        member = self._chained()
        with _cuda_type_names(), torch.no_grad():  # the fp32 masters are views the model's weights share
            if not self.distributed:
                member.load_state_dict(state)
                return
            state = dict(state)
            param_state, kind = state.pop("param_state"), state.pop("param_state_sharding_type")
            member.load_state_dict(state)  # hyperparameters and the step count only
            loader = {"dp_reshardable": member.load_parameter_state_from_dp_reshardable,
                      "fully_reshardable": member.load_parameter_state_from_fully_reshardable}.get(kind)
            if loader is None:
                raise ValueError(f"distributed optimizer state of sharding type {kind!r}: primeflow saves "
                                 "dp_reshardable or fully_reshardable")
            self._without_step(lambda: loader(param_state))

    def _allocate_state(self) -> None:
        """Give every parameter of a fresh torch AdamW its state tensors before a load. megatron-core 0.16.1
        without TE/apex (CPU; GPU without TE) reads a per-parameter `step` in `state_dict()` and copies into
        the existing state tensors when it loads, so the state must exist; the values are overwritten."""
        torch_optim = self._chained().optimizer
        for group in torch_optim.param_groups:
            for p in group["params"]:
                if not torch_optim.state[p]:
                    torch_optim.state[p].update(step=torch.zeros((), dtype=torch.float32),
                                                exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))

    def _without_step(self, fn) -> None:
        """megatron-core 0.16.1 with torch's AdamW: `load_state_dict` gives every parameter's state the same
        `step` tensor, and the distributed optimizer's parameter-state loaders then copy every key of the
        state from the checkpoint, which never has `step` (KeyError). Run `fn` without it, then give each
        parameter its own copy of the step (a shared tensor would be incremented once per parameter)."""
        torch_optim = self._chained().optimizer
        steps = {p: s.pop("step") for p, s in torch_optim.state.items() if "step" in s}
        try:
            fn()
        finally:
            for p, step in steps.items():
                torch_optim.state[p]["step"] = step.clone()


class WarmupConstantLR:
    """Linear warmup over `warmup_steps` optimizer steps, then constant (PRIME: constant, no warmup). The
    k-th step (k = 0, 1, ...) runs at lr * min(1, (k + 1) / warmup_steps)."""

    def __init__(self, optim: MegatronAdamW, cfg: OptimConfig):
        self.optim, self.base_lr, self.warmup = optim, cfg.lr, max(0, cfg.warmup_steps)
        self.last_epoch = 0
        self._apply()

    def _apply(self) -> None:
        factor = min(1.0, (self.last_epoch + 1) / self.warmup) if self.warmup else 1.0
        for group in self.optim.param_groups:
            group["lr"] = self.base_lr * factor

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optim.param_groups]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "base_lr": self.base_lr, "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        self.last_epoch = int(state["last_epoch"])
        self._apply()


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig, *, distributed: bool = False,
                   checkpoint_format: str = "dp_reshardable") -> tuple[MegatronAdamW, WarmupConstantLR]:
    """Megatron's AdamW for a model from `wrap_for_training` (built with the same `distributed` flag), and
    the LR schedule."""
    optim = MegatronAdamW(model, cfg, distributed=distributed, checkpoint_format=checkpoint_format)
    return optim, WarmupConstantLR(optim, cfg)


def finalize_grads(model: torch.nn.Module) -> None:
    """After the last micro-batch's backward: wait for (or run) the DP reduction and sum tied embeddings'
    gradients over the first and last pipeline stage, as Megatron's training loop does."""
    from megatron.core.distributed import finalize_model_grads

    finalize_model_grads([model])

