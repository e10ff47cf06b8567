"""The real generation backend: the trainer's vLLM ``RolloutEngine`` behind the text-in/text-out protocol.

- ``RolloutEngineBackend(engine)`` wraps any ``primeflow.trainer.rollout.RolloutEngine``: the trainer passes
  its live (weight-synced) engine for periodic validation, so no second engine is built.
- ``VLLMBackend(model_dir, ...)`` builds a RolloutEngine on an HF checkpoint for ``primeflow eval``.

Prompts arrive as fully rendered strings (the chat template already added any BOS / role markers), so they
are tokenized without special tokens. Row ``i*n + j`` (sample j of prompt i) is sampled with seed
``seed + i*n + j`` (RolloutEngine's rule), so a run is reproducible. Responses are decoded with
``skip_special_tokens=True`` (the EOS token the engine keeps in the response is dropped).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class RolloutEngineBackend:
    """``generate(prompts, n, temperature, top_p, max_tokens, seed) -> list[list[str]]`` on a RolloutEngine."""

    def __init__(self, engine: Any, tokenizer: Any | None = None) -> None:
        self.engine = engine
        self.tokenizer = tokenizer if tokenizer is not None else engine.tokenizer

    def generate(
        self, prompts: list[str], n: int, temperature: float, top_p: float, max_tokens: int, seed: int
    ) -> list[list[str]]:
        from ..rollout import SamplingConfig

        ids = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        sampling = SamplingConfig(
            temperature=float(temperature),
            top_p=float(top_p) if temperature > 0 else 1.0,
            max_tokens=int(max_tokens),
            seed=int(seed),
        )
        batch = self.engine.generate(ids, n, sampling)
        out: list[list[str]] = [[] for _ in prompts]
        for row, resp in enumerate(batch.response_ids):
            out[batch.prompt_index[row]].append(self.tokenizer.decode(resp, skip_special_tokens=True))
        return out


def checkpoint_dtype(model_dir: str | Path) -> str:
    """The checkpoint's dtype from config.json (``dtype`` or ``torch_dtype``), float32 if unset/unknown."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return _DTYPES.get(str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32"), "float32")


def checkpoint_context(model_dir: str | Path) -> int:
    """The checkpoint's context length (``max_position_embeddings``)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    value = cfg.get("max_position_embeddings")
    if not isinstance(value, int) or value < 2:
        raise ValueError(f"{model_dir}/config.json has no usable max_position_embeddings; pass --max-model-len")
    return value


class VLLMBackend(RolloutEngineBackend):
    """A RolloutEngine on ``model_dir`` for standalone evaluation.

    ``dtype``: "auto" (the checkpoint's), "float32", "bfloat16" or "float16". ``max_model_len``: prompt +
    response budget (default: the checkpoint's ``max_position_embeddings``); a prompt that leaves no room for
    ``max_tokens`` raises naming the prompt (RolloutEngine's check) unless ``truncate_prompts`` (then its
    beginning is dropped; ``primeflow eval --long-prompts truncate``, which counts them beforehand).
    ``tp_size > 1`` needs torch.distributed initialized (torchrun; see cli.py).
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        tp_size: int = 1,
        dtype: str = "auto",
        max_model_len: int | None = None,
        seed: int = 0,
        gpu_memory_utilization: float = 0.9,
        kv_cache_gib: float = 1.0,
        truncate_prompts: bool = False,
    ) -> None:
        from ..rollout import RolloutEngine

        if dtype != "auto" and dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r} is not allowed; allowed: auto, {', '.join(_DTYPES)}")
        engine = RolloutEngine(
            model_dir,
            tp_size=tp_size,
            dtype=checkpoint_dtype(model_dir) if dtype == "auto" else dtype,
            max_model_len=max_model_len or checkpoint_context(model_dir),
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_gib=kv_cache_gib,
            truncate_prompts=truncate_prompts,
        )
        super().__init__(engine)

    def close(self) -> None:
        """Drop the engine (frees the KV cache before another model's engine is built)."""
        self.engine = None
