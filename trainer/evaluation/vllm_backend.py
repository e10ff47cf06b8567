"""The real generation backend: an in-process vLLM engine over an HF checkpoint directory.

Prompts arrive as fully rendered strings (the chat template already added any BOS / role markers), so they
are tokenized here without special tokens and handed to vLLM as token ids. Sampling is seeded per prompt
(``seed + i * n``; vLLM gives the j-th of n samples ``seed + i * n + j``), so a run is reproducible and a
problem's samples do not depend on which other problems are in the batch.

This uses vLLM directly: the trainer's ``primeflow.trainer.rollout.RolloutEngine`` had not landed when this
was written. Any object with the ``GenerationBackend.generate`` signature can replace it (e.g. a thin adapter
over the trainer's live engine for periodic validation, so no second engine is built).
"""

from __future__ import annotations

import os
from pathlib import Path


class VLLMBackend:
    """``generate(prompts, n, temperature, top_p, max_tokens, seed) -> list[list[str]]`` with vLLM.

    ``tp_size``: tensor-parallel degree (1 on CPU); ``dtype``: "auto" reads the checkpoint's;
    ``max_model_len``: context length (default: the checkpoint's); a prompt that leaves no room for
    ``max_tokens`` is an error naming the prompt, not a silent truncation.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        tp_size: int = 1,
        dtype: str = "auto",
        max_model_len: int | None = None,
        seed: int = 0,
        enforce_eager: bool | None = None,
        gpu_memory_utilization: float = 0.9,
    ) -> None:
        import torch

        # In-process engine core (no spawned child): works from the CLI, tests and the trainer alike.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default reserves far more
        from vllm import LLM

        on_gpu = torch.cuda.is_available()
        kwargs = {}
        if on_gpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm = LLM(
            model=str(model_dir),
            tensor_parallel_size=tp_size,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            enforce_eager=(not on_gpu) if enforce_eager is None else enforce_eager,
            **kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)

    def generate(
        self, prompts: list[str], n: int, temperature: float, top_p: float, max_tokens: int, seed: int
    ) -> list[list[str]]:
        from vllm import SamplingParams

        ids = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        for i, x in enumerate(ids):
            if len(x) + max_tokens > self.max_model_len:
                raise ValueError(
                    f"prompt {i} has {len(x)} tokens; with max_tokens={max_tokens} it exceeds max_model_len="
                    f"{self.max_model_len}: lower --max-tokens or raise --max-model-len (prompt starts "
                    f"{prompts[i][:80]!r})"
                )
        params = [
            SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p if temperature > 0 else 1.0,
                max_tokens=max_tokens,
                seed=seed + i * n,
                skip_special_tokens=True,
            )
            for i in range(len(prompts))
        ]
        outs = self.llm.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=False)
        return [[c.text for c in sorted(o.outputs, key=lambda c: c.index)] for o in outs]

    def close(self) -> None:
        """Drop the engine (frees the KV cache); the object is unusable afterwards."""
        del self.llm
