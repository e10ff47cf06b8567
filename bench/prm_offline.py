"""Can the tiny model's implicit PRM learn the chain task at all? An offline diagnostic for issue 18.

The online runs (prm_sweep_*.json) never see the PRM rank its batch above chance. This takes the RL loop out:
a fixed, balanced, cleanly labelled set of chain-task responses, half written correctly (chain_response) and
half with one wrong step (a result off by 1-3 at a random step, the later steps computed consistently from
the wrong value: the policy's typical slip). The implicit PRM (a trainable copy of the SFT model against the
frozen SFT model, R = beta * sum of log-ratios over the response tokens, prime_spec 4.1's CE through
kernels.prm_ce_terms) is trained for a few epochs, and measured on held-out problems after each:
- CE and accuracy (sign of R against the label), and pairwise accuracy (a correct vs a wrong response of the
  same problem: which has the larger R; 0.5 is chance);
- localisation: for wrong responses, the share whose lowest per-step reward (beta * log-ratio summed over a
  step line's tokens) is the corrupted step (trainer/stages/localisation.py's tie-shared credit), vs chance.

    python -m bench.prm_offline --model runs/<sft>/sft_model [--train 2000] [--test 400] [--epochs 4]
        [--grid lr=1e-4,1e-5 --grid beta=0.05,0.5] [--out bench/results/prm_offline_cpu_tiny_chain.json]

--data policy replaces the synthetic pairs with what the online loop trains on: --samples responses per problem
sampled from the SFT model itself (temperature 1, at most 64 new tokens, as configs/tiny_cpu_chain.yaml),
labelled by their boxed answer (an integer compared with the truth), the problems without both outcomes
dropped (the trainer's accuracy filter); pairwise accuracy then runs over every (correct, wrong) pair of a
problem, and localisation over the wrong responses whose first wrong step the task's labeller finds
(trainer/data/chain_steps.py).

The model is the SFT'd tiny checkpoint that the chain runs start from. It is run through HF transformers (a
2-layer, 259-token byte model: the Megatron path adds nothing to this question). One thread.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import random
import sys
import time
from pathlib import Path

import torch

from bench.hardware import environment, write_json_atomic


def corrupt(problem, rng: random.Random) -> tuple[str, int]:
    """(a response with one wrong step, the index of that step): the chain recomputed from the wrong value."""
    from primeflow.trainer.data.chain_arithmetic import apply_op
    k = rng.randrange(len(problem.ops))
    lines, acc = [], problem.start
    for i, (op, x) in enumerate(zip(problem.ops, problem.operands, strict=True)):
        value = apply_op(acc, op, x)
        if i == k:
            value += rng.choice([-3, -2, -1, 1, 2, 3])
        lines.append(f"{acc}{op}{x}={value}")
        acc = value
    return "\n".join([*lines, f"\\boxed{{{acc}}}"]), k


def build_examples(tokenizer, n: int, seed: int, knobs: dict) -> list[dict]:
    """n problems, each with a correct and a corrupted response: token ids, response start, step spans."""
    from primeflow.trainer.data.chain_arithmetic import chain_response, chain_task_with_problems
    rng = random.Random(seed)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = []
    for rec, problem in chain_task_with_problems(n, seed=seed, **knobs):
        text = tokenizer.apply_chat_template(rec.messages, tokenize=False, add_generation_prompt=True)
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        wrong_text, wrong_step = corrupt(problem, rng)
        pair = []
        for text, label, bad in ((chain_response(problem), 1.0, None), (wrong_text, 0.0, wrong_step)):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert len(ids) == len(text), "a byte-level tokenizer: one token per character"
            spans, pos = [], 0
            for line in text.split("\n")[:-1]:  # the step lines; the boxed answer is not a step
                spans.append((pos, pos + len(line)))
                pos += len(line) + 1
            pair.append({"ids": prompt + ids + [end], "start": len(prompt), "label": label, "steps": spans,
                         "wrong_step": bad})
        out.append(pair)
    return out


def _boxed_int(text: str) -> int | None:
    import re
    found = re.findall(r"\\boxed\{(-?\d+)\}", text)
    return int(found[-1]) if found else None


def sample_groups(model, tokenizer, n: int, seed: int, knobs: dict, samples: int,
                  max_new_tokens: int = 64) -> list[list[dict]]:
    """Groups of `samples` responses the model itself writes to n problems, those with both outcomes only."""
    from primeflow.trainer.data.chain_arithmetic import chain_task_with_problems
    from primeflow.trainer.data.chain_steps import label_steps
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(seed)
    groups = []
    for rec, problem in chain_task_with_problems(n, seed=seed, **knobs):
        text = tokenizer.apply_chat_template(rec.messages, tokenize=False, add_generation_prompt=True)
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt] * samples), attention_mask=torch.ones(samples, len(prompt),
                                 dtype=torch.long), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=max_new_tokens, eos_token_id=end, pad_token_id=end)
        group = []
        for row in out[:, len(prompt):].tolist():
            ids = row[:row.index(end) + 1] if end in row else row  # the end token is scored when written
            body = ids[:-1] if ids and ids[-1] == end else ids
            response = "".join(chr(i) if i < 128 else "\ufffd" for i in body)  # bytes: one token each
            label = 1.0 if _boxed_int(response) == problem.answer else 0.0
            steps = label_steps(problem, response)
            spans = [(w.start, w.end) for w in steps.steps]
            wrong = steps.first_wrong if label == 0.0 and steps.first_wrong is not None else None
            group.append({"ids": prompt + ids, "start": len(prompt), "label": label, "steps": spans,
                          "wrong_step": wrong})
        if 0 < sum(e["label"] for e in group) < samples:
            groups.append(group)
    return groups


def response_logp(model, examples: list[dict]) -> list[torch.Tensor]:
    """Per-example log-probs of the response tokens (end token included), one padded forward."""
    width = max(len(e["ids"]) for e in examples)
    ids = torch.zeros((len(examples), width), dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, e in enumerate(examples):
        ids[i, :len(e["ids"])] = torch.tensor(e["ids"])
        attn[i, :len(e["ids"])] = 1
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return [logp[i, e["start"] - 1:len(e["ids"]) - 1] for i, e in enumerate(examples)]


def pairwise_accuracy(groups: list[list[dict]], R: list[float]) -> float:
    """Over every (correct, wrong) pair of responses to one problem, the share whose correct one has the
    larger R (a tie counts 0.5); R is in the groups' flattened order. Unlike the trainer's prm_acc
    (kernels.prm_pairwise_accuracy: a mean over groups, ties 0) a mean over pairs, so problems with more
    mixed pairs weigh more."""
    scores, at = [], 0
    for group in groups:
        r = R[at:at + len(group)]
        at += len(group)
        scores += [1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0
                   for i, a in enumerate(group) for j, b in enumerate(group) if a["label"] > b["label"]]
    return sum(scores) / len(scores)


def evaluate(prm, ref, pairs: list[list[dict]], beta: float, batch: int = 32) -> dict:
    from primeflow.kernels import prm_ce_terms
    from primeflow.trainer.stages.localisation import localisation
    flat = [e for pair in pairs for e in pair]
    R, wrong = [], []
    with torch.no_grad():
        for i in range(0, len(flat), batch):
            chunk = flat[i:i + batch]
            for e, lp, lr in zip(chunk, response_logp(prm, chunk), response_logp(ref, chunk), strict=True):
                q = beta * (lp - lr)
                R.append(float(q.sum()))
                if e["wrong_step"] is not None:
                    wrong.append(([float(q[a:b].sum()) for a, b in e["steps"]], e["wrong_step"]))
    R_t = torch.tensor(R)
    labels = torch.tensor([e["label"] for e in flat])
    loc = localisation(wrong)
    return {"ce": float(prm_ce_terms(R_t, labels).mean()), "acc": float(((R_t > 0).float() == labels).float().mean()),
            "pairwise_acc": pairwise_accuracy(pairs, R), "localisation": loc.localised,
            "localisation_chance": loc.chance, "localisation_n": loc.n, "responses": len(flat),
            "correct_frac": float(labels.mean()),
            "mean_R_correct": float(R_t[labels == 1].mean()), "mean_R_wrong": float(R_t[labels == 0].mean())}


def train_one(model_dir: Path, train: list[list[dict]], test: list[list[dict]], *, lr: float, beta: float,
              epochs: int, batch: int, seed: int) -> dict:
    from primeflow.kernels import prm_ce_terms
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prm = copy.deepcopy(ref).train()
    optim = torch.optim.AdamW(prm.parameters(), lr=lr, weight_decay=0.0)
    history = [{"epoch": 0, **evaluate(prm, ref, test, beta), "train": evaluate(prm, ref, train[:len(test)], beta)}]
    print(f"{len(train)} training groups ({sum(len(g) for g in train)} responses), {len(test)} held out; "
          f"held-out correct fraction {history[0]['correct_frac']:.2f}", flush=True)
    rng = random.Random(seed)
    flat = [e for pair in train for e in pair]
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        rng.shuffle(flat)
        for i in range(0, len(flat), batch):
            chunk = flat[i:i + batch]
            with torch.no_grad():
                ref_lp = response_logp(ref, chunk)
            R = torch.stack([beta * (lp - r).sum() for lp, r in zip(response_logp(prm, chunk), ref_lp, strict=True)])
            loss = prm_ce_terms(R, torch.tensor([e["label"] for e in chunk])).mean()
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(prm.parameters(), 10.0)
            optim.step()
        history.append({"epoch": epoch, **evaluate(prm, ref, test, beta),
                        "train": evaluate(prm, ref, train[:len(test)], beta)})
        print(f"lr={lr} beta={beta} epoch {epoch}: held-out {json.dumps(history[-1], default=str)[:400]}",
              flush=True)
    return {"lr": lr, "beta": beta, "history": history, "train_s": time.perf_counter() - start}


def train_with_trainer(model_dir: Path, train: list[list[dict]], test: list[list[dict]], *, lr: float,
                       beta: float, epochs: int, batch: int, seed: int) -> dict:
    """train_one through the trainer's own PRM path instead of HF: Megatron models built from the same
    checkpoint (build_prime_models, a 1-process gloo world), trainer.stages.prm.prm_stage on TrainBatches of
    whole groups (prm.update=after, prm.mini_batch_size=batch) and, for the held-out numbers, prm_stage with
    prm.update=none. If this learns where the online runs do not, the loop's data is the difference; if it
    does not learn where train_one does, the trainer's PRM path is."""
    from primeflow.trainer import parallel
    from primeflow.trainer.batch import build_train_batch
    from primeflow.trainer.config import Config
    from primeflow.trainer.models_setup import build_prime_models
    from primeflow.trainer.stages.prm import prm_stage

    parallel.init_distributed(tp=1, pp=1)
    torch.manual_seed(seed)
    config = Config()
    config.prime.ref_type = "freeze"  # the PRM is scored against the frozen SFT copy it starts from
    config.prime.beta, config.prm.optim.lr, config.prm.mini_batch_size = beta, lr, batch
    models = build_prime_models(config, model_dir)

    def as_batch(groups: list[list[dict]]):
        flat = [e for g in groups for e in g]
        size = len(groups[0])
        return build_train_batch([e["ids"][:e["start"]] for e in flat], [e["ids"][e["start"]:] for e in flat],
                                 [[0.0] * (len(e["ids"]) - e["start"]) for e in flat], ["stop"] * len(flat),
                                 [e["label"] for e in flat], group_size=size,
                                 eos_ids={flat[0]["ids"][-1]}, pad_id=0).to(parallel.device())

    def held_out(groups: list[list[dict]]) -> dict:
        config.prm.update = "none"
        R = []
        for i in range(0, len(groups), 16):
            chunk = groups[i:i + 16]
            b = as_batch(chunk)
            scores = prm_stage(models, b, config, old_logp=torch.zeros(b.response_mask.shape))
            R += scores.token_rewards.sum(-1).tolist()
        config.prm.update = "after"
        from primeflow.kernels import prm_ce_terms
        ce = float(prm_ce_terms(torch.tensor(R), torch.tensor([e["label"] for g in groups for e in g])).mean())
        return {"ce": ce, "pairwise_acc": pairwise_accuracy(groups, R)}

    groups_per_batch = max(1, batch // len(train[0]))
    history = [{"epoch": 0, **held_out(test)}]
    rng = random.Random(seed)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = list(train)
        rng.shuffle(order)
        for i in range(0, len(order) - groups_per_batch + 1, groups_per_batch):
            b = as_batch(order[i:i + groups_per_batch])
            prm_stage(models, b, config, old_logp=torch.zeros(b.response_mask.shape))
        history.append({"epoch": epoch, **held_out(test)})
        print(f"trainer path lr={lr} beta={beta} epoch {epoch}: held-out {history[-1]}", flush=True)
    return {"lr": lr, "beta": beta, "path": "trainer", "history": history, "train_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prm_offline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the SFT'd tiny checkpoint (HF directory)")
    parser.add_argument("--train", type=int, default=2000, help="training problems (x2 responses)")
    parser.add_argument("--test", type=int, default=400, help="held-out problems (x2 responses)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--grid", action="append", default=[], metavar="lr=A,B | beta=A,B")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", choices=("synthetic", "policy"), default="synthetic")
    parser.add_argument("--samples", type=int, default=4, help="--data policy: responses per problem")
    parser.add_argument("--path", choices=("hf", "trainer"), default="hf",
                        help="train the PRM with plain HF + torch, or with the trainer's prm_stage")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    knobs = {"steps": 4, "digits": 1, "ops": ["+", "-", "*"]}  # configs/tiny_cpu_chain.yaml's task dial
    if args.data == "synthetic":
        train = build_examples(tokenizer, args.train, seed=1000 + args.seed, knobs=knobs)
        test = build_examples(tokenizer, args.test, seed=2000 + args.seed, knobs=knobs)
    else:
        from transformers import AutoModelForCausalLM
        policy = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
        train = sample_groups(policy, tokenizer, args.train, 1000 + args.seed, knobs, args.samples)
        test = sample_groups(policy, tokenizer, args.test, 2000 + args.seed, knobs, args.samples)
    axes = {"lr": [1e-4], "beta": [0.05]}
    for item in args.grid:
        key, values = item.split("=", 1)
        if key not in axes:
            raise SystemExit(f"--grid key {key!r}: allowed keys are {sorted(axes)}")
        axes[key] = [float(v) for v in values.split(",")]
    fit = train_one if args.path == "hf" else train_with_trainer
    runs = [fit(args.model, train, test, lr=lr, beta=beta, epochs=args.epochs, batch=args.batch, seed=args.seed)
            for lr, beta in itertools.product(axes["lr"], axes["beta"])]
    command = "python -m bench.prm_offline " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"kind": "prm_offline", "command": command, "environment": environment(), "model": str(args.model),
              "task": knobs,
              "data": args.data, "path": args.path, "samples": args.samples if args.data == "policy" else 2,
              "train_problems": args.train, "test_problems": args.test, "train_groups": len(train),
              "test_groups": len(test), "batch": args.batch, "runs": runs}
    if args.out:
        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
