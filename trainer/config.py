"""The run configuration: one typed tree, loaded from YAML, overridden with dotted `--set key=value`.

Every key has a type and (where it is an enumeration) its allowed values; unknown keys and bad values fail
naming the dotted key and what is allowed. Defaults follow prime_spec.md (the released PRIME code where the
paper, the code and the verl recipe disagree; the alternatives are options). `configs/*.yaml` are presets.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def choice(first: str, *rest: str, default: str | None = None) -> Any:
    """A string field restricted to `(first, *rest)` (checked on load, named in errors in this order); its
    default is `default`, or the first allowed value."""
    allowed = (first, *rest)
    if default is not None and default not in allowed:
        raise ValueError(f"default {default!r} is not one of {allowed}")
    return field(default=first if default is None else default, metadata={"choices": allowed})


@dataclass
class RunConfig:
    dir: str = "runs/prime-tiny"        # the run directory (config.yaml, metrics.jsonl, checkpoints/, plots)
    resume: str = "auto"                # auto (latest checkpoint if any) | none | a checkpoint dir | a step number
    deterministic: bool = True          # torch deterministic algorithms (bitwise resume on CPU)


@dataclass
class ModelSection:
    path: str = ""                      # HF checkpoint of the SFT model; "" = build a tiny one and SFT it (default run)
    # Compute dtype of the policy and the PRM weights. bfloat16: Float16Module compute with fp32 main params
    # (masters) in megatron-core's optimizer and fp32 gradient accumulation; float32: fp32 throughout.
    params_dtype: str = choice("float32", "bfloat16")
    # The frozen reference. Must equal params_dtype when the PRM is trained against it (prime mode, ref_type
    # freeze): r_t = beta (log pi_phi - log pi_ref) is then exactly 0 at step 0, as PRIME requires.
    ref_dtype: str = choice("float32", "bfloat16")
    # Layer implementation (models/transformer_impl.py): auto = Transformer Engine's layers on CUDA when
    # transformer_engine imports, Megatron's local layers otherwise (always on CPU).
    transformer_impl: str = choice("auto", "local", "transformer_engine")
    tiny_overrides: dict = field(default_factory=dict)  # make_tiny_checkpoint(**overrides) for the default run


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    backend: str = choice("auto", "gloo", "nccl")
    collective_timeout_s: float = 600.0  # a dead rank ends the job after this long instead of hanging
    # megatron-core's distributed optimizer for the policy and the PRM: the fp32 main parameters and the AdamW
    # moments are sharded over the DP ranks (ZeRO-1; gradients reduce-scattered, updated weights all-gathered).
    # Same numerics; 12 B/param (16 with bf16 weights' fp32 masters) -> 12/dp (+2 or 4 for the weights).
    distributed_optimizer: bool = False
    # How checkpoints hold the distributed optimizer's state (megatron-core's sharding types): dp_reshardable
    # writes each DP rank's shard as it is (fastest; a resume may change DP only), fully_reshardable gathers
    # it over DP into per-parameter tensors (a resume may change TP, PP and DP). Without the distributed
    # optimizer the state is per parameter anyway: any layout. Models always reshard.
    optimizer_checkpoint: str = choice("dp_reshardable", "fully_reshardable")
    overlap_grad_reduce: bool = True    # DDP reduces gradient buckets over DP while backward still runs
    grad_reduce_in_fp32: bool = True    # accumulate and reduce gradients in fp32 (bf16 weights included)
    # Activation memory of the policy and the PRM (models/memory.py; results unchanged, tested bitwise):
    # recompute `full` keeps only each checkpointed layer's input (uniform: every recompute_num_layers layers
    # form one unit; block: the first recompute_num_layers layers per stage), `selective` recomputes only
    # recompute_modules (core_attn, mlp). sequence_parallel (tp > 1) shards norms/residuals over TP ranks.
    recompute: str = choice("none", "full", "selective")
    recompute_method: str = choice("uniform", "block")
    recompute_num_layers: int = 1
    recompute_modules: list = field(default_factory=lambda: ["core_attn"])
    sequence_parallel: bool = False

    def activation_memory(self, *, trained: bool = True):
        """The models' ActivationMemory; a model that is never trained (the reference) recomputes nothing."""
        from primeflow.models.memory import ActivationMemory

        return ActivationMemory(recompute=self.recompute if trained else "none",
                                recompute_method=self.recompute_method,
                                recompute_num_layers=self.recompute_num_layers,
                                recompute_modules=tuple(self.recompute_modules),
                                sequence_parallel=self.sequence_parallel)


@dataclass
class DataConfig:
    train_files: list = field(default_factory=list)  # JSONL/parquet (Eurus-2-RL-Data schema or {problem, answer})
    on_bad_row: str = choice("raise", "skip")
    prompts_per_step: int = 8           # prompt groups per PRIME step after filtering (the paper: 256)
    max_prompt_len: int = 128
    system_prompt: bool = False         # PRIME's action-centric CoT system prompt
    prompt_suffix: bool = False         # PRIME's math/code answer-format instruction
    # The built-in task used when train_files is empty (trainer/data/builtin.py): `arithmetic` (one
    # expression, knobs in data.arithmetic) or `chain` (chained arithmetic written step by step, knobs in
    # data.chain; its step labels drive the prm/localisation metrics). The embedded default is the chain
    # task: 4 steps of 1-digit + - *, which the SFT'd tiny model solves 25-35 % of the time (configs/tiny_cpu.yaml)
    task: str = choice("arithmetic", "chain", default="chain")
    arithmetic: dict = field(default_factory=lambda: {"n": 2000, "digits": 2, "ops": ["+"], "n_operands": 2})
    chain: dict = field(default_factory=lambda: {"n": 2000, "steps": 4, "digits": 1, "ops": ["+", "-", "*"]})


@dataclass
class FilterConfig:
    enabled: bool = True
    low: float = 0.2                    # keep groups with low <= mean score <= high (inclusive)
    high: float = 0.8
    max_fetches: int = 8                # fetches per step before a warning (and data/filter_starved=1); the step
                                        # keeps fetching until its batch is full or the epoch ends (as PRIME)


@dataclass
class RolloutConfig:
    n: int = 4                          # K samples per prompt (contiguous)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 64                # a 4-step chain answer is ~40 tokens
    tp: int = 1                         # vLLM tensor parallel size (may differ from the trainer's)
    dtype: str = choice("float32", "bfloat16")
    max_model_len: int = 256
    kv_cache_gib: float = 1.0           # CPU KV cache
    gpu_memory_utilization: float = 0.5
    sleep_between_steps: bool = False   # GPU: free vLLM's KV cache/weights while training; CPU: no-op
    refit_bucket_mb: int = 256
    tis_cap: float = 0.0                # > 0: truncated importance sampling weights min(pi_old/pi_vllm, cap)


@dataclass
class PrimeConfig:
    mode: str = choice("prime", "rloo")  # rloo = outcome-only RLOO (no PRM), for comparison
    beta: float = 0.05
    granularity: str = choice("token", "whole")
    reward_norm: str = choice("batch_norm", "none")
    # `freeze` (the paper's, and the 7B presets'): the frozen SFT copy. The tiny default uses `policy`
    # (pi_ref = the policy's old log-probs): the one measured setting whose PRM learns while the policy moves
    # (configs/tiny_cpu.yaml's header, bench/results/learning_efficiency_cpu_tiny_chain_ref_policy_lr1.5e-5.json)
    ref_type: str = choice("freeze", "policy", default="policy")
    advantage_form: str = choice("prime", "paper")
    gamma_process: float = 1.0
    gamma_outcome: float = 1.0
    process_coef: float = 1.0
    outcome_coef: float = 1.0
    whiten: bool = True


@dataclass
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    grad_clip: float = 10.0


@dataclass
class PRMConfig:
    update: str = choice("after", "before", "none")
    # One fused head call per micro-batch for the PRM and the reference (kernels.linear_prime_rewards) where
    # supported (stages/prm_head.py: TP=1, PP=1, ref_type freeze); false: the two-head path, to compare.
    fused_head: bool = True
    mini_batch_size: int = 8            # responses per PRM optimizer step (global); the paper: 256 of 1024
    # How the CE terms of a PRM mini-batch are combined: `mean` (prime_spec 4.1, PRIME's code), or
    # `class_balanced`: correct and wrong responses each carry half of the loss (stages/prm_ce.py), so at
    # init the tokens they share get no net push whatever the batch's accuracy (an opt-in experiment).
    ce_weighting: str = choice("mean", "class_balanced")
    # Passes of the PRM update over each batch. The rewards always come from the first pass (`after`: each
    # mini-batch scored before its first optimizer step) or from after the last (`before`); prm_loss is the
    # first pass's mean, the loss on data the PRM has not trained on. Meant to let the PRM keep pace with a
    # moving policy; on the tiny chain task 2-4 passes overfit each batch instead (bench/README, issue 18).
    epochs: int = 1
    # The paper's 7B values are lr 1e-6 (PRM) and 5e-7 (policy); the tiny default needs larger steps to move
    # within a few dozen RL steps: on the chain task only PRM lr 1e-4 (of 1e-5, 3e-5, 1e-4, 3e-4, 1e-3) moved
    # prm_loss below ln 2 (bench/results/prm_sweep_cpu_tiny_chain*.json).
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, weight_decay=0.0, grad_clip=10.0))


@dataclass
class PPOConfig:
    clip: float = 0.2
    agg: str = choice("seq-mean-token-mean", "token-mean")
    mini_batch_size: int = 8            # responses per policy optimizer step (global); the paper: 256 of 1024
    epochs: int = 1
    # Tiny default: 1.5e-5 (5e-5 raises accuracy as fast but outruns the PRM: configs/tiny_cpu.yaml's header)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1.5e-5, weight_decay=0.01, grad_clip=1.0))


@dataclass
class TrainConfig:
    steps: int = 60
    seed: int = 0
    micro_batch_tokens: int = 4096      # token budget of one packed micro-batch (forward/backward pass)
    checkpoint_every: int = 5
    keep_last: int = 2
    validate_every: int = 20            # 0 = off
    validation_benchmarks: list = field(default_factory=lambda: ["arithmetic"])  # + math500, aime24, ...
    validation_limit: int = 64          # problems per benchmark


@dataclass
class SFTConfig:
    steps: int = 350                    # ~25-35 % sampled accuracy on the default chain task: room for RL
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 20
    examples: int = 4000


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    wandb_project: str = ""             # "" = off; W&B runs offline unless WANDB_MODE says otherwise
    progress: bool = True
    # Logs of vLLM, transformers, Megatron, torch (trainer/third_party_logs.py): "file" keeps them in
    # run.dir/third_party.log, off the console; "console" prints them where the libraries do
    third_party: str = choice("file", "console")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelSection = field(default_factory=ModelSection)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    prime: PrimeConfig = field(default_factory=PrimeConfig)
    prm: PRMConfig = field(default_factory=PRMConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


class ConfigError(ValueError):
    """A bad config key or value; the message names the dotted key and what is allowed."""


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, hint: Any, f: dataclasses.Field) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {sorted(f.name for f in dataclasses.fields(hint))}, "
                              f"got {value!r}")
        return _build(hint, value, key + ".")
    origin = typing.get_origin(hint) or hint
    if origin is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
    elif origin is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            value = int(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    elif origin is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    elif origin is str:
        value = str(value)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{key}: {value!r} is not allowed; allowed values: {list(choices)}")
    elif origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
    elif origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return value


def _build(cls, values: dict[str, Any], prefix: str = ""):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}; allowed keys under "
                          f"{prefix.rstrip('.') or 'the top level'}: {sorted(fields)}")
    hints = _hints(cls)
    obj = cls()
    for name, value in values.items():
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            # merge into the section's defaults (a YAML file may set only some keys of a section)
            merged = {**dataclasses.asdict(getattr(obj, name)), **value}
            setattr(obj, name, _coerce(prefix + name, merged, hints[name], fields[name]))
        else:
            setattr(obj, name, _coerce(prefix + name, value, hints[name], fields[name]))
    return obj


def _set_dotted(tree: dict[str, Any], key: str, raw: str) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- `key=value` overrides (values parsed as YAML scalars/lists)."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
        tree = loaded or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), raw)
    config = _build(Config, tree)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Cross-field checks (ranges and consistency), each naming the key."""
    checks = [
        (config.rollout.n >= 2, "rollout.n", "must be >= 2 (leave-one-out needs K >= 2)"),
        (config.data.prompts_per_step >= 1, "data.prompts_per_step", "must be >= 1"),
        (0.0 <= config.filter.low <= config.filter.high <= 1.0, "filter.low/filter.high",
         "need 0 <= low <= high <= 1"),
        (config.prime.beta > 0, "prime.beta", "must be > 0"),
        (config.ppo.clip > 0, "ppo.clip", "must be > 0"),
        (config.rollout.temperature > 0, "rollout.temperature", "must be > 0 (the trainer scores at it)"),
        (config.rollout.max_tokens >= 1, "rollout.max_tokens", "must be >= 1"),
        (config.train.steps >= 0, "train.steps", "must be >= 0"),
        (config.train.micro_batch_tokens >= 16, "train.micro_batch_tokens", "must be >= 16"),
        (config.ppo.mini_batch_size >= 1 and config.prm.mini_batch_size >= 1, "ppo/prm.mini_batch_size",
         "must be >= 1"),
        (config.ppo.epochs >= 1, "ppo.epochs", "must be >= 1"),
        (config.prm.epochs >= 1, "prm.epochs", "must be >= 1"),
        (config.parallel.tp >= 1 and config.parallel.pp >= 1, "parallel.tp/pp", "must be >= 1"),
        (config.rollout.tis_cap >= 0, "rollout.tis_cap", "must be >= 0 (0 = off)"),
        (len(config.ppo.optim.betas) == 2, "ppo.optim.betas", "needs two values"),
        (len(config.prm.optim.betas) == 2, "prm.optim.betas", "needs two values"),
    ]
    for ok, key, message in checks:
        if not ok:
            raise ConfigError(f"{key}: {message}")
    try:
        config.parallel.activation_memory()
    except ValueError as error:
        raise ConfigError(f"parallel.{error}") from None
    if (config.prime.mode == "prime" and config.prime.ref_type == "freeze"
            and config.model.ref_dtype != config.model.params_dtype):
        raise ConfigError(
            f"model.ref_dtype: {config.model.ref_dtype!r} differs from model.params_dtype "
            f"{config.model.params_dtype!r}; the PRM and the reference must compute in one precision (allowed: "
            f"ref_dtype = params_dtype), otherwise the step-0 rewards beta * (log pi_phi - log pi_ref) are "
            f"precision noise instead of 0 and batch_norm scales that noise up to the outcome term")
    if config.prime.mode == "rloo" and config.prm.update != "none":
        config.prm.update = "none"  # outcome-only RLOO has no PRM to update


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def from_dict(values: dict[str, Any]) -> Config:
    config = _build(Config, values)
    validate(config)
    return config


__all__ = ["Config", "ConfigError", "load_config", "dump_yaml", "to_dict", "from_dict", "validate"]
