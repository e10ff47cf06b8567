"""The smallest real end-to-end check: tiny checkpoint -> vLLM sampling -> trainer-side log-prob recompute.

This is the rollout/scoring seam of PRIME in miniature: vLLM samples responses and reports each sampled
token's log-prob; the trainer recomputes the same log-probs from its own forward pass (here transformers'
logits through `primeflow.kernels.token_logprobs`). Their gap is the `logprob_mismatch` metric of a real
run; in fp32 on CPU it should be ~1e-5, and a large value means the two sides disagree about the model
(weights, RoPE, tokenizer, temperature handling).

Run: `python -m primeflow.models.smoke [OUT_DIR]` (about half a minute on 2 CPU cores, most of it importing
vLLM). `primeflow train` runs it until the trainer exists.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPTS = ("What is 12+34?", "Compute 7*8-5.", "What is 99-17?")
SAMPLES_PER_PROMPT = 2
MAX_TOKENS = 24


def _vllm_sample(ckpt: Path, prompt_ids: list[list[int]], *, seed: int) -> list[tuple[list[int], list[int],
                                                                                          list[float]]]:
    """(prompt ids, response ids, vLLM's log-prob of each sampled token) for every sample."""
    # In-process engine core: no spawned child, so this works from any caller (CLI, tests, notebooks).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default would reserve far more
    from vllm import LLM, SamplingParams

    # fp32 end to end so the comparison measures implementation differences, not bf16 rounding.
    llm = LLM(model=str(ckpt), dtype="float32", max_model_len=256, seed=seed, enforce_eager=True)
    params = SamplingParams(n=SAMPLES_PER_PROMPT, temperature=1.0, max_tokens=MAX_TOKENS, logprobs=0,
                            seed=seed)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
    samples = []
    for ids, out in zip(prompt_ids, outs, strict=True):
        for comp in out.outputs:
            resp = list(comp.token_ids)
            # logprobs=0 returns only the sampled token's entry at each position.
            lps = [step[tok].logprob for step, tok in zip(comp.logprobs, resp, strict=True)]
            samples.append((ids, resp, lps))
    del llm
    return samples


def _recompute(ckpt: Path, samples) -> list[list[float]]:
    """Trainer-side log-probs of the sampled tokens: transformers logits -> primeflow token_logprobs."""
    import torch
    from primeflow.kernels import token_logprobs
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    result = []
    with torch.no_grad():
        for prompt, resp, _ in samples:
            ids = torch.tensor([prompt + resp])
            logits_TV = model(ids).logits[0]
            # Position t predicts token t+1: response token j sits at len(prompt)+j, predicted from one before.
            start = len(prompt) - 1
            logits_RV = logits_TV[start:start + len(resp)].contiguous()
            result.append(token_logprobs(logits_RV, torch.tensor(resp)).tolist())
    return result


def run_smoke(out_dir: str | Path, *, seed: int = 0) -> dict[str, Any]:
    """Build a tiny checkpoint in `out_dir`, sample with vLLM, recompute log-probs; return the metrics.

    Keys: `logprob_mismatch` (mean |logp_vllm - logp_recomputed| over response tokens),
    `logprob_mismatch_max`, `n_samples`, `n_tokens`, `time/checkpoint`, `time/rollout`, `time/recompute`,
    `time/total`, and `example` (one decoded sample). Also written to `out_dir/smoke.json` and printed.
    """
    from transformers import AutoTokenizer

    from .tiny import make_tiny_checkpoint

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ckpt = make_tiny_checkpoint(out / "tiny_checkpoint", seed=seed)
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    prompt_ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False) for p in PROMPTS]
    t1 = time.perf_counter()
    samples = _vllm_sample(ckpt, prompt_ids, seed=seed)
    t2 = time.perf_counter()
    recomputed = _recompute(ckpt, samples)
    t3 = time.perf_counter()

    diffs = [abs(a - b) for (_, _, lv), lr in zip(samples, recomputed, strict=True)
             for a, b in zip(lv, lr, strict=True)]
    if not diffs:
        raise RuntimeError("vLLM returned no response tokens; nothing to compare")
    metrics: dict[str, Any] = {
        "logprob_mismatch": sum(diffs) / len(diffs),
        "logprob_mismatch_max": max(diffs),
        "n_samples": len(samples),
        "n_tokens": len(diffs),
        "time/checkpoint": t1 - t0,
        "time/rollout": t2 - t1,
        "time/recompute": t3 - t2,
        "time/total": t3 - t0,
        "example": {"prompt": PROMPTS[0], "response": tok.decode(samples[0][1])},
    }
    (out / "smoke.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return metrics


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        run_smoke(argv[0])
    else:
        with tempfile.TemporaryDirectory(prefix="primeflow-smoke-") as tmp:
            run_smoke(tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
