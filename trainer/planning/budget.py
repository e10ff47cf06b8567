"""Per-GPU memory of a PRIME run by component and the peak of each stage of a step (`primeflow plan`).

Components come from the shapes the trainer builds (models/memory_plan.py: parameters per TP/PP rank,
activations of one packed micro-batch under parallel.recompute / sequence_parallel) and from how the trainer
holds them (trainer/models_setup.py, trainer/optimizer.py, trainer/rollout/handoff.py):
* trained models (policy, PRM): weights in model.params_dtype, megatron-core DDP's gradient buffer (fp32
  with parallel.grad_reduce_in_fp32), AdamW moments (2 x fp32) plus fp32 main params for bf16 weights, both
  sharded over DP with parallel.distributed_optimizer (ZeRO-1: the gradient buffer stays whole);
* the frozen reference: weights only (model.ref_dtype);
* vLLM: gpu_memory_utilization x GPU memory while awake (its bf16 weights / rollout.tp, the KV cache and its
  own working memory); with rollout.sleep_between_steps it sleeps at level 1 after the rollout (weights to
  host memory, KV cache dropped) and is woken weights-first for the refit.
Two constants cannot be measured on CPU and are assumptions: the CUDA context + NCCL buffers of a rank, and
what a sleeping vLLM keeps on the GPU (CUDA graphs, sampler buffers).
"""

from __future__ import annotations

from dataclasses import dataclass

from primeflow.models import ModelConfig
from primeflow.models.memory_plan import (
    ActivationBytes,
    MicroBatch,
    activation_bytes,
    dtype_bytes,
    full_model_params,
    param_count,
    rank_shape,
)

from ..config import Config, ConfigError

GB = 1e9
CUDA_CONTEXT_GB = 1.0       # assumption: CUDA context, cuBLAS workspaces, NCCL buffers of one rank
VLLM_ASLEEP_GB = 1.0        # assumption: what vLLM keeps while asleep (CUDA graph pool, sampler buffers)
VLLM_WORKSPACE_GB = 1.5     # assumption: vLLM's activation / CUDA graph share of its awake budget (not KV)


@dataclass(frozen=True)
class Layout:
    gpus: int
    tp: int
    pp: int
    dp: int


@dataclass(frozen=True)
class ModelMemory:
    """One model's resident bytes on one GPU."""

    role: str
    params: int             # elements on this rank
    weights: int
    gradients: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer


@dataclass(frozen=True)
class Component:
    name: str
    bytes: int
    knob: str               # the config keys that change it, for the not-fitting report


@dataclass(frozen=True)
class Stage:
    name: str
    components: tuple[Component, ...]

    @property
    def peak(self) -> int:
        return sum(c.bytes for c in self.components)

    def largest(self) -> Component:
        return max(self.components, key=lambda c: c.bytes)


@dataclass(frozen=True)
class MemoryPlan:
    layout: Layout
    model: ModelConfig
    micro_batch: MicroBatch
    models: tuple[ModelMemory, ...]
    train_activations: ActivationBytes      # policy / PRM micro-batch (forward + backward)
    ref_activations: ActivationBytes        # no-grad forward
    vllm_weights: int
    vllm_kv_cache: int
    kv_tokens: int                          # tokens the KV cache holds
    stages: tuple[Stage, ...]
    gpu_bytes: int
    budget_bytes: int

    @property
    def peak(self) -> int:
        return max(s.peak for s in self.stages)

    @property
    def fits(self) -> bool:
        return self.peak <= self.budget_bytes and self.vllm_kv_cache > 0

    def over_budget(self) -> list[Stage]:
        return [s for s in self.stages if s.peak > self.budget_bytes]


def layout_of(config: Config, gpus: int | None) -> Layout:
    tp, pp = config.parallel.tp, config.parallel.pp
    gpus = tp * pp if gpus is None else gpus
    if gpus < 1 or gpus % (tp * pp):
        raise ConfigError(f"--gpus {gpus}: must be a positive multiple of parallel.tp x parallel.pp = {tp * pp}")
    return Layout(gpus=gpus, tp=tp, pp=pp, dp=gpus // (tp * pp))


def _trained_model(role: str, n: int, config: Config, dp: int) -> ModelMemory:
    par = config.parallel
    e = dtype_bytes(config.model.params_dtype)
    grads = n * (4 if par.grad_reduce_in_fp32 else e)
    # AdamW moments (2 x fp32) + fp32 main params when the weights are 16-bit (fp32 weights are their own
    # masters); the distributed optimizer shards all of it over DP.
    state = n * (8 + (4 if e < 4 else 0))
    if par.distributed_optimizer:
        state //= dp
    return ModelMemory(role=role, params=n, weights=n * e, gradients=grads, optimizer=state)


def micro_batch_of(config: Config) -> MicroBatch:
    """The largest packed micro-batch: train.micro_batch_tokens filled with the longest sequences a step
    can have (a row longer than the budget is packed alone, so the micro-batch is at least one row)."""
    longest = min(config.data.max_prompt_len + config.rollout.max_tokens, config.rollout.max_model_len)
    return MicroBatch.of(max(config.train.micro_batch_tokens, longest), longest)


def plan_memory(config: Config, model: ModelConfig, *, gpus: int | None = None, gpu_gb: float = 80.0,
                budget_gb: float = 72.0) -> MemoryPlan:
    """The per-GPU plan of `config` for `model` on `gpus` GPUs (default tp x pp: DP = 1)."""
    lay = layout_of(config, gpus)
    try:
        shape = rank_shape(model, tp=lay.tp, pp=lay.pp, stage=lay.pp - 1)
    except ValueError as error:
        raise ConfigError(f"parallel.tp/pp: {error}") from None
    n = param_count(shape).total
    prime = config.prime.mode == "prime"
    models = [_trained_model("policy", n, config, lay.dp)]
    if prime:
        models.append(_trained_model("prm", n, config, lay.dp))
    has_ref = prime and config.prime.ref_type == "freeze"
    ref_weights = n * dtype_bytes(config.model.ref_dtype) if has_ref else 0

    mb = micro_batch_of(config)
    attention = "flash" if config.model.params_dtype != "float32" else "sdpa"
    train_act = activation_bytes(shape, mb, config.parallel.activation_memory(), dtype=config.model.params_dtype,
                                 attention=attention, device="cuda")
    ref_act = activation_bytes(shape, mb, config.parallel.activation_memory(trained=False),
                               dtype=config.model.ref_dtype if has_ref else config.model.params_dtype,
                               attention=attention, device="cuda")

    r = config.rollout
    vllm_share = int(r.gpu_memory_utilization * gpu_gb * GB)
    vllm_weights = full_model_params(model) * dtype_bytes(r.dtype) // r.tp
    kv = vllm_share - vllm_weights - int(VLLM_WORKSPACE_GB * GB)
    kv_per_token = 2 * model.num_layers * model.num_query_groups * model.head_dim * dtype_bytes(r.dtype) // r.tp
    asleep = r.sleep_between_steps

    context = Component("CUDA context + NCCL (assumed)", int(CUDA_CONTEXT_GB * GB), "")
    resident = [context]
    for m in models:
        resident += [Component(f"{m.role} weights", m.weights, "parallel.tp / parallel.pp"),
                     Component(f"{m.role} gradients", m.gradients, "parallel.grad_reduce_in_fp32, parallel.tp"),
                     Component(f"{m.role} optimizer state", m.optimizer,
                               "parallel.distributed_optimizer=true (shards it over DP), more GPUs")]
    if has_ref:
        resident.append(Component("reference weights", ref_weights, "parallel.tp / parallel.pp"))
    vllm_awake = [Component("vLLM weights", vllm_weights, "rollout.tp"),
                  Component("vLLM KV cache + workspace", vllm_share - vllm_weights,
                            "rollout.gpu_memory_utilization")]
    vllm_training = ([Component("vLLM asleep (assumed)", int(VLLM_ASLEEP_GB * GB), "")] if asleep
                     else [Component("vLLM awake (not sleeping)", vllm_share, "rollout.sleep_between_steps=true")])
    act_knob = ("parallel.recompute=full, parallel.sequence_parallel=true (tp > 1), "
                "or a lower train.micro_batch_tokens")
    fwd_knob = "a lower train.micro_batch_tokens"
    stages = [
        Stage("rollout", tuple(resident + vllm_awake)),
        Stage("old/ref logprobs", tuple(resident + vllm_training + [
            Component("forward working set (one micro-batch)", max(train_act.forward_peak, ref_act.forward_peak),
                      fwd_knob)])),
    ]
    if prime and config.prm.update != "none":
        stages.append(Stage("PRM update", tuple(resident + vllm_training + [
            Component("PRM activations (one micro-batch)", train_act.train_peak, act_knob)])))
    stages.append(Stage("policy update", tuple(resident + vllm_training + [
        Component("policy activations (one micro-batch)", train_act.train_peak, act_knob)])))
    stages.append(Stage("refit", tuple(resident + [
        Component("vLLM weights (woken for the refit)", vllm_weights, "rollout.tp"),
        Component("refit bucket", r.refit_bucket_mb * 2**20, "rollout.refit_bucket_mb")]
        + ([Component("vLLM KV cache + workspace", vllm_share - vllm_weights, "rollout.gpu_memory_utilization")]
           if not asleep else []))))
    return MemoryPlan(layout=lay, model=model, micro_batch=mb, models=tuple(models), train_activations=train_act,
                      ref_activations=ref_act, vllm_weights=vllm_weights, vllm_kv_cache=kv,
                      kv_tokens=max(kv, 0) // max(kv_per_token, 1), stages=tuple(stages),
                      gpu_bytes=int(gpu_gb * GB), budget_bytes=int(budget_gb * GB))


def advice(plan: MemoryPlan, config: Config) -> list[str]:
    """One line per problem: the stage over budget, its largest component and the knob that fixes it."""
    lines = []
    budget = plan.budget_bytes / GB
    if plan.vllm_kv_cache <= 0:
        lines.append(f"vLLM KV cache: rollout.gpu_memory_utilization={config.rollout.gpu_memory_utilization} "
                     f"leaves no room for a KV cache after vLLM's weights ({plan.vllm_weights / GB:.1f} GB): raise "
                     f"rollout.gpu_memory_utilization or rollout.tp")
    elif plan.kv_tokens < config.rollout.max_model_len:
        lines.append(f"vLLM KV cache: {plan.kv_tokens} tokens < rollout.max_model_len="
                     f"{config.rollout.max_model_len}: raise rollout.gpu_memory_utilization or rollout.tp")
    for stage in plan.over_budget():
        top = stage.largest()
        over = (stage.peak - plan.budget_bytes) / GB
        fix = _fix(top, config, room=plan.budget_bytes - (stage.peak - top.bytes), gpu=plan.gpu_bytes)
        lines.append(f"{stage.name}: peak {stage.peak / GB:.1f} GB > budget {budget:.1f} GB (over by {over:.1f} GB); "
                     f"largest component: {top.name} {top.bytes / GB:.1f} GB: {fix}")
    return lines


def _fix(top: Component, config: Config, *, room: int, gpu: int) -> str:
    """The knob for `top`; `room` is what the stage leaves for it within the budget."""
    par = config.parallel
    if "activations" in top.name or "working set" in top.name:
        steps = []
        if par.recompute != "full" and "working set" not in top.name:
            steps.append("set parallel.recompute=full")
        if par.tp > 1 and not par.sequence_parallel and "working set" not in top.name:
            steps.append("set parallel.sequence_parallel=true")
        steps.append(f"lower train.micro_batch_tokens (now {config.train.micro_batch_tokens})")
        return " or ".join(steps)
    if "optimizer" in top.name and not par.distributed_optimizer:
        return "set parallel.distributed_optimizer=true (shards it over DP) and/or use more GPUs"
    if top.name.startswith("vLLM awake"):
        return "set rollout.sleep_between_steps=true"
    if top.name.startswith("vLLM KV"):
        # vLLM's share is utilization x GPU: what fits is the room left for it plus its weights
        util = max(room + (config.rollout.gpu_memory_utilization * gpu - top.bytes), 0) / gpu
        return (f"lower rollout.gpu_memory_utilization (now {config.rollout.gpu_memory_utilization}; at most "
                f"{int(util * 100) / 100:.2f} fits) and/or raise rollout.tp (fewer vLLM weights per GPU)")
    return f"change {top.knob}" if top.knob else "use more GPUs per model (parallel.tp / parallel.pp)"
