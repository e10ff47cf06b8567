"""One process, one gloo world of 1 (trainer.parallel.init_distributed), a Megatron policy and a real vLLM
RolloutEngine (external_launcher): the in-process rollout scenario, run as a child by test_rollout_vllm.py.

    python rollout_child.py --ckpts CKPTS.json --seed S --out RESULT.json

Why a child process: a vLLM engine changes process-wide state (its own parallel groups, the torch
distributed world) that must not leak into the rest of the pytest session. The child measures; the parent
asserts (and computes the independent transformers references). Phases, all on ONE fp32 engine built from
`base` (then one bf16 engine, built after the fp32 one is dropped):
  initial      engine = trainer = base: sampled log-probs vs Megatron recompute
  before_sync  trainer loads perturbed_1; the engine still has base
  after_sync   sync_weights(trainer) with small buckets; same prompts and seed again
  repeat       the same seeded call again (reproducibility)
  temperature  T = 0.7 sampling vs recompute at T = 0.7
  greedy       temperature 0 (parent compares with transformers on perturbed_1)
  stop / length  stop_token_ids taken from the greedy output; max_tokens=3
  too_long / truncated   a prompt over the budget, then with truncate_prompts
  missing / wrong_shape  sync from a 1-layer model / a wider-MLP model: errors, engine untouched
  asleep       generate while asleep raises; works again after wake_up
  bf16         a bf16 engine synced from a bf16 trainer: measured mismatch
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from primeflow.models import ModelConfig, build_model, load_hf_checkpoint, sequence_logprobs  # noqa: E402
from primeflow.trainer.parallel import init_distributed  # noqa: E402
from primeflow.trainer.rollout import (  # noqa: E402
    RolloutEngine,
    SamplingConfig,
    encode_chat,
    logprob_mismatch,
)

QUESTIONS = ["What is 12+34?", "Compute 7*8-5.", "Name a prime larger than 10.", "Say hi."]
MAX_MODEL_LEN = 256


def policy(ckpt: Path, dtype: str = "float32"):
    model = build_model(ModelConfig.from_hf(ckpt), role="policy", params_dtype=dtype)
    load_hf_checkpoint(model, ckpt)
    return model.eval()


def batch_dict(batch) -> dict:
    return {k: getattr(batch, k) for k in ("prompt_ids", "response_ids", "logprobs", "finish_reasons",
                                            "group_size", "prompt_index", "prompt_truncated")}


def mismatch(model, batch, temperature: float = 1.0) -> dict:
    """vLLM's log-probs vs the Megatron recompute on the padded batch, plus layout facts of padded()."""
    pad = batch.padded(pad_id=256)
    with torch.no_grad():
        trainer = sequence_logprobs(model, pad["input_ids"], attention_mask=pad["attention_mask"],
                                    temperature=temperature)
    mean, peak = logprob_mismatch(pad["vllm_logp"], trainer, pad["response_mask"])
    return {"mean": mean, "max": peak, "tokens": int(pad["response_mask"].sum()),
            "padded_shapes": {k: list(v.shape) for k, v in pad.items()},
            "padded_dtypes": {k: str(v.dtype) for k, v in pad.items()}}


def error_of(fn) -> dict:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the parent asserts on the type and message
        return {"type": type(e).__name__, "message": str(e)}
    return {"type": None, "message": ""}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpts", type=Path, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    ckpts = {k: Path(v) for k, v in json.loads(args.ckpts.read_text()).items()}
    res: dict = {}
    init_distributed(tp=1)

    # RNG / thread state around engine construction must be unchanged (the trainer's stream).
    torch.manual_seed(args.seed)
    rng_before, threads_before, set_threads_before = torch.get_rng_state(), torch.get_num_threads(), \
        torch.set_num_threads
    engine = RolloutEngine(ckpts["base"], max_model_len=MAX_MODEL_LEN, seed=args.seed)
    res["process_state_kept"] = {"rng": bool(torch.equal(rng_before, torch.get_rng_state())),
                                 "threads": torch.get_num_threads() == threads_before,
                                 "set_num_threads": torch.set_num_threads is set_threads_before}
    prompts = encode_chat(engine.tokenizer, QUESTIONS)
    res["prompts"] = prompts
    res["eos_token_ids"] = list(engine.eos_token_ids)
    n = 4
    sampling = SamplingConfig(temperature=1.0, max_tokens=32, seed=args.seed)

    trainer = policy(ckpts["base"])
    batch = engine.generate(prompts, n, sampling)
    res["initial"] = {"batch": batch_dict(batch), "mismatch": mismatch(trainer, batch)}

    del trainer
    trainer = policy(ckpts["perturbed_1"])
    rng_gen = torch.get_rng_state()
    batch = engine.generate(prompts, n, sampling)
    res["generate_keeps_rng"] = bool(torch.equal(rng_gen, torch.get_rng_state()))
    res["before_sync"] = {"batch": batch_dict(batch), "mismatch": mismatch(trainer, batch)}

    stats = engine.sync_weights(trainer, bucket_mb=0.25)
    res["refit"] = {"seconds": stats.seconds, "bytes": stats.bytes, "gb_per_s": stats.gb_per_s,
                    "buckets": stats.buckets, "tensors": stats.tensors}
    batch = engine.generate(prompts, n, sampling)
    res["after_sync"] = {"batch": batch_dict(batch), "mismatch": mismatch(trainer, batch)}
    res["repeat"] = {"batch": batch_dict(engine.generate(prompts, n, sampling))}
    res["unseeded"] = [batch_dict(engine.generate(prompts[:1], 2, SamplingConfig(max_tokens=16)))
                       for _ in range(2)]

    hot = SamplingConfig(temperature=0.7, max_tokens=32, seed=args.seed + 1)
    batch = engine.generate(prompts, 2, hot)
    res["temperature"] = {"batch": batch_dict(batch), "mismatch": mismatch(trainer, batch, temperature=0.7)}

    greedy = SamplingConfig(temperature=0.0, max_tokens=24)
    g = engine.generate(prompts, 1, greedy)
    res["greedy"] = batch_dict(g)
    # A stop token that greedy decoding reaches at step j >= 2 (its first occurrence): the stopped response
    # must be exactly the greedy prefix up to and including it.
    stops = []
    for row, ids in enumerate(g.response_ids):
        for j in range(2, len(ids)):
            if ids[j] not in ids[:j]:
                stops.append((row, j, ids[j]))
                break
    res["stop"] = []
    for row, j, tok in stops:
        b = engine.generate([prompts[row]], 1, SamplingConfig(temperature=0.0, max_tokens=24, stop_token_ids=[tok]))
        res["stop"].append({"row": row, "j": j, "token": tok, "batch": batch_dict(b)})
    res["length"] = batch_dict(engine.generate(prompts, 2, SamplingConfig(max_tokens=3, seed=args.seed)))

    budget = MAX_MODEL_LEN - 24
    rnd = random.Random(args.seed)
    long_prompt = [rnd.randrange(0, 256) for _ in range(budget + 7)]
    fits = [rnd.randrange(0, 256) for _ in range(budget)]
    res["too_long"] = error_of(lambda: engine.generate([prompts[0], fits, long_prompt], 2, greedy))
    engine.truncate_prompts = True
    res["truncated"] = {"long_prompt": long_prompt, "fits": fits,
                        "batch": batch_dict(engine.generate([prompts[0], fits, long_prompt], 2, greedy))}
    engine.truncate_prompts = False
    res["bad_token"] = error_of(lambda: engine.generate([[1, 2, 999]], 1, greedy))
    res["empty_prompt"] = error_of(lambda: engine.generate([[1, 2], []], 1, greedy))

    res["missing"] = error_of(lambda: engine.sync_weights(policy(ckpts["one_layer"])))
    res["wrong_shape"] = error_of(lambda: engine.sync_weights(policy(ckpts["wide_mlp"])))
    res["greedy_after_failed_sync"] = batch_dict(engine.generate(prompts, 1, greedy))

    engine.sleep()
    res["asleep_generate"] = error_of(lambda: engine.generate(prompts, 1, greedy))
    res["asleep_sync"] = error_of(lambda: engine.sync_weights(trainer))
    engine.wake_up()
    res["woken_greedy"] = batch_dict(engine.generate(prompts, 1, greedy))

    # bf16: a second engine (the first is dropped) synced from a bf16 trainer holding perturbed_1.
    engine.close()
    engine.close()  # idempotent
    res["world_after_close"] = {"initialized": dist.is_initialized()}
    if dist.is_initialized():
        t = torch.ones(3)
        dist.all_reduce(t)  # the default group still works
        res["world_after_close"]["all_reduce"] = t.tolist()
    gc.collect()
    engine = RolloutEngine(ckpts["base"], max_model_len=MAX_MODEL_LEN, seed=args.seed, dtype="bfloat16")
    trainer16 = policy(ckpts["perturbed_1"], dtype="bfloat16")
    engine.sync_weights(trainer16)
    batch = engine.generate(prompts, 2, sampling)
    res["bf16"] = {"mismatch": mismatch(trainer16, batch), "mismatch_vs_fp32_trainer": mismatch(trainer, batch)}
    engine.close()
    res["world_after_second_close"] = dist.is_initialized()
    res["generate_after_close"] = error_of(lambda: engine.generate(prompts, 1, greedy))
    args.out.write_text(json.dumps(res))


if __name__ == "__main__":
    main()
