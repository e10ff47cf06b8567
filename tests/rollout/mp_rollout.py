"""Two processes under torchrun (gloo): one vLLM engine per rank (external_launcher, vLLM TP = --vllm-tp) and
a Megatron policy re-built in several trainer layouts, each synced into the same engines. Run by
test_rollout_multiproc.py:

    torchrun --nproc_per_node=2 mp_rollout.py --ckpts CKPTS.json --seed S --vllm-tp {1,2} --out RESULT.json

Layouts (trainer TP x PP x DP over the 2 ranks; the trainer loads perturbed_k, the engine holds what the
previous layout synced, so "before" is always a real gap):
  --vllm-tp 1 (two independent vLLM replicas):
      dp2  trainer TP1 DP2: each rank generates ITS OWN prompts (the trainer's data-parallel rollout)
      tp2  trainer TP2 -> vLLM TP1: TP shards gathered per bucket; both replicas get full weights
      pp2  trainer PP2 -> vLLM TP1: each stage's buckets broadcast over the PP group
  --vllm-tp 2 (one replica over both ranks):
      tp2  trainer TP2 -> vLLM TP2
      dp2  trainer TP1 DP2 -> vLLM TP2 (both ranks pass the same prompts, as a replica must)
Per layout: the streamed HF tensors vs the checkpoint on disk (bitwise), mismatch before/after sync,
cross-rank agreement of the generated batches. Rank 0 writes every rank's results.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from primeflow.models import ModelConfig, build_model, load_hf_checkpoint, sequence_logprobs  # noqa: E402
from primeflow.trainer.parallel import dp_group, init_distributed  # noqa: E402
from primeflow.trainer.rollout import RolloutEngine, SamplingConfig, encode_chat, logprob_mismatch  # noqa: E402
from primeflow.trainer.rollout.weight_sync import global_plan, stream_hf_tensors  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

QUESTIONS = ["What is 12+34?", "Compute 7*8-5.", "Name a prime larger than 10.", "Say hi."]
N = 2
MAX_TOKENS = 32


def policy(ckpt: Path):
    model = build_model(ModelConfig.from_hf(ckpt), role="policy", params_dtype="float32")
    load_hf_checkpoint(model, ckpt)
    return model.eval()


def batch_dict(batch) -> dict:
    return {k: getattr(batch, k) for k in ("prompt_ids", "response_ids", "logprobs", "finish_reasons",
                                            "group_size", "prompt_index", "prompt_truncated")}


def mismatch(model, batch, group=None) -> dict | None:
    pad = batch.padded(pad_id=256)
    with torch.no_grad():
        trainer = sequence_logprobs(model, pad["input_ids"], attention_mask=pad["attention_mask"])
    if trainer is None:  # not the last pipeline stage
        return None
    mean, peak = logprob_mismatch(pad["vllm_logp"], trainer, pad["response_mask"], group=group)
    return {"mean": mean, "max": peak, "tokens": int(pad["response_mask"].sum())}


def stream_vs_checkpoint(model, ckpt: Path) -> dict:
    """Consume the sync stream without vLLM and compare every tensor with the checkpoint, bitwise."""
    want = load_file(str(ckpt / "model.safetensors"))
    counters = {"bytes": 0, "tensors": 0, "buckets": 0}
    names, worst = [], 0.0
    for name, t in stream_hf_tensors(model, global_plan(model, 2**18), counters):
        names.append(name)
        worst = max(worst, (t.double() - want[name].double()).abs().max().item())
        assert t.dtype == want[name].dtype and t.shape == want[name].shape, name
    return {"names": sorted(names), "expected": sorted(want), "max_abs_diff": worst, **counters}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpts", type=Path, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--vllm-tp", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    ckpts = {k: Path(v) for k, v in json.loads(args.ckpts.read_text()).items()}
    init_distributed(tp=1)
    rank = dist.get_rank()
    engine = RolloutEngine(ckpts["base"], tp_size=args.vllm_tp, max_model_len=256, seed=args.seed)
    prompts = encode_chat(engine.tokenizer, QUESTIONS)
    sampling = SamplingConfig(max_tokens=MAX_TOKENS, seed=args.seed)
    res: dict = {"rank": rank, "replica": engine.replica_index, "replicas": engine.num_replicas, "layouts": {}}
    if args.vllm_tp == 1:
        layouts = [("dp2", 1, 1, "perturbed_1"), ("tp2", 2, 1, "perturbed_2"), ("pp2", 1, 2, "perturbed_3")]
    else:
        layouts = [("tp2", 2, 1, "perturbed_1"), ("dp2", 1, 1, "perturbed_2")]
    for name, tp, pp, ckpt_name in layouts:
        lay = init_distributed(tp=tp, pp=pp)
        model = policy(ckpts[ckpt_name])
        # Own prompts per rank only where each rank is its own vLLM replica AND its own trainer DP rank.
        own = args.vllm_tp == 1 and lay.dp == 2
        mine = prompts[rank::2] if own else prompts
        group = dp_group() if lay.dp > 1 else None
        out: dict = {"tp": lay.tp, "pp": lay.pp, "dp": lay.dp, "own_prompts": own, "prompts": mine}
        out["stream"] = stream_vs_checkpoint(model, ckpts[ckpt_name])
        out["before"] = mismatch(model, engine.generate(mine, N, sampling), group)
        stats = engine.sync_weights(model, bucket_mb=0.25)
        out["refit"] = {"seconds": stats.seconds, "bytes": stats.bytes, "buckets": stats.buckets,
                        "tensors": stats.tensors}
        after = engine.generate(mine, N, sampling)
        out["after_batch"] = batch_dict(after)
        out["after"] = mismatch(model, after, group)
        res["layouts"][name] = out
        del model
    res["greedy"] = batch_dict(engine.generate(prompts, 1, SamplingConfig(temperature=0.0, max_tokens=16)))
    res["last_ckpt"] = str(ckpts[layouts[-1][3]])
    if args.vllm_tp > 1:
        try:  # the two ranks of the replica pass different prompts: both must refuse, not hang
            engine.generate([prompts[rank]], 1, sampling)
            res["divergent_prompts"] = None
        except ValueError as e:
            res["divergent_prompts"] = str(e)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, res)
    if rank == 0:
        args.out.write_text(json.dumps({"vllm_tp": args.vllm_tp, "ranks": gathered}))
    dist.barrier()


if __name__ == "__main__":
    main()
