"""`primeflow sft`: supervised warm-start, cross-entropy on prompt -> response pairs with the prompt masked.

Runs on the same Megatron models, packing and gradient machinery as the PRIME trainer (and therefore under
torchrun with TP/PP/DP the same way). The embedded default run uses it to turn a random tiny model into a
starting policy that lands in the accuracy band PRIME's filter keeps.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from primeflow.kernels import trusted_values

from . import parallel
from .batch import TrainBatch, build_train_batch, check_batch_values
from .config import OptimConfig, ParallelConfig, SFTConfig
from .models_setup import trained_model
from .stages.logprobs import micro_batch_plan, row_index
from .stages.optim_step import MicroLoss, minibatch_step


def tokenize_pairs(tokenizer, pairs: list[tuple[list[dict], str]]) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt ids (chat template with the generation prompt) and response ids ending with the chat's
    end-of-turn token (what the policy must learn to emit so that vLLM stops)."""
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if end_of_turn is None or end_of_turn == tokenizer.unk_token_id:
        end_of_turn = tokenizer.eos_token_id
    prompts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False)
               for m, _ in pairs]
    responses = [tokenizer.encode(r, add_special_tokens=False) + [end_of_turn] for _, r in pairs]
    return prompts, responses


def sft_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> TrainBatch:
    zeros = [[0.0] * len(r) for r in responses]
    return build_train_batch(prompts, responses, zeros, ["stop"] * len(prompts), [0.0] * len(prompts),
                             group_size=1, eos_ids=set(), pad_id=pad_id)


def sft_micro_loss(batch: TrainBatch) -> MicroLoss:
    """Token-mean NLL of the responses over the whole batch: each micro-batch's share is its summed NLL
    divided by the batch's response-token count."""
    n_tokens = float(sum(batch.response_lens))

    def share(rows: list[int], logp: torch.Tensor) -> torch.Tensor:
        return -(logp * batch.response_mask[row_index(rows, logp)]).sum() / n_tokens

    return MicroLoss(batch, share)


def run_sft(base: str | Path, out: str | Path, pairs: list[tuple[list[dict], str]], cfg: SFTConfig, *,
            seed: int = 0, micro_batch_tokens: int = 4096, log=print) -> Path:
    """Train `base` (HF dir) on `pairs` for cfg.steps steps of cfg.batch_size examples; export HF to `out`.
    Needs an initialised parallel layout (trainer.parallel.init_distributed)."""
    from primeflow.models import export_hf_checkpoint, unwrap_model
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    optim_cfg = OptimConfig(lr=cfg.lr, weight_decay=0.0, warmup_steps=cfg.warmup_steps, grad_clip=1.0)
    model, optim, sched = trained_model(base, role="policy", dtype="float32", optim=optim_cfg,
                                        parallel_cfg=ParallelConfig())
    prompts, responses = tokenize_pairs(tokenizer, pairs)
    order = random.Random(seed)
    vocab_size = unwrap_model(model).real_vocab_size
    t0 = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        pick = [order.randrange(len(pairs)) for _ in range(cfg.batch_size)]
        host_batch = sft_batch([prompts[i] for i in pick], [responses[i] for i in pick], tokenizer.pad_token_id)
        check_batch_values(host_batch, vocab_size=vocab_size)  # once on the host, as the PRIME step does
        batch = host_batch.to(parallel.device())
        plan = micro_batch_plan(batch, list(range(batch.rows)), micro_batch_tokens)
        with trusted_values():  # no per-micro-batch device reads for the kernels' value checks
            stats = minibatch_step(model, optim, plan, sft_micro_loss(batch))
        sched.step()
        if step == 1 or step % 25 == 0 or step == cfg.steps:
            log(f"sft step {step}/{cfg.steps}  nll/token {float(stats.loss):.4f}  ({time.perf_counter() - t0:.0f} s)")
    export_hf_checkpoint(unwrap_model(model), out)
    parallel.barrier()
    return Path(out)


def sft_pairs(source: str, *, n: int, seed: int) -> list[tuple[list[dict], str]]:
    """(messages, target response) pairs: a built-in task with its default knobs ("arithmetic"; "chain",
    written step by step), or a prompt file whose ground truth becomes the response `\\boxed{answer}` (math
    rows only)."""
    from .data import load_prompts
    from .data.builtin import TASKS, builtin_task

    if source in TASKS:
        return builtin_task(source, {}).sft_pairs(n, seed=seed)
    records = [r for r in load_prompts(source).records if r.ability == "math"]
    if not records:
        raise ValueError(f"{source}: no math rows to build SFT targets from")
    return [(r.messages, f"\\boxed{{{r.ground_truth}}}") for r in records[:n]]


def main(argv: list[str]) -> int:
    """primeflow sft --model HF_DIR --out HF_DIR [--task arithmetic] [--steps N ...]"""
    parser = argparse.ArgumentParser(prog="primeflow sft", description=__doc__)
    parser.add_argument("--model", required=True, help="HF checkpoint to start from")
    parser.add_argument("--out", required=True, help="where to write the fine-tuned HF checkpoint")
    parser.add_argument("--data", default="arithmetic",
                        help="'arithmetic' or 'chain' (the built-in tasks) or a JSONL of {problem, answer} / Eurus "
                             "rows whose answer becomes the target response '\\boxed{answer}'")
    parser.add_argument("--steps", type=int, default=SFTConfig.steps)
    parser.add_argument("--batch-size", type=int, default=SFTConfig.batch_size)
    parser.add_argument("--lr", type=float, default=SFTConfig.lr)
    parser.add_argument("--examples", type=int, default=SFTConfig.examples)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    args = parser.parse_args(argv)
    layout = parallel.init_distributed(tp=args.tp, pp=args.pp)
    pairs = sft_pairs(args.data, n=args.examples, seed=args.seed)
    if layout.is_rank0:
        print(f"SFT on {len(pairs)} examples from {args.data}")
    cfg = SFTConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, examples=args.examples)
    run_sft(args.model, args.out, pairs, cfg, seed=args.seed, log=print if layout.is_rank0 else (lambda *_: None))
    parallel.shutdown()
    return 0
