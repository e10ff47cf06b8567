"""The saving half of test_checkpoint_reshard.py, under torchrun (2 processes, gloo):

    torchrun --nproc-per-node 2 tests/checkpoint/mp_reshard.py --ckpt HF_DIR --root ROOT --seed S

For each case of CASES, in ROOT/<case>/: a policy + PRM on the trainer's machinery (megatron-core DDP and
optimizer) at the case's layout, two AdamW steps, then
  run/        checkpoint step 2 as the trainer writes it (the case's optimizer sharding type);
  canonical/  the same state saved with every optimizer in model space (`fully_reshardable`), the form that
              does not depend on the layout: the test compares it, tensor by tensor, with the canonical copy
              a 1-process run writes after loading run/ at TP=1, DP=1.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from primeflow.trainer.checkpointing import CheckpointManager
from primeflow.trainer.parallel import init_distributed, shutdown

# helpers.py by path, not through sys.path: test_checkpoint_reshard.py imports this module during collection,
# and this folder on sys.path would make a later `from conftest import ...` find tests/checkpoint/conftest.py
_spec = importlib.util.spec_from_file_location("_primeflow_tests_checkpoint_helpers",
                                               Path(__file__).resolve().with_name("helpers.py"))
h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h)

# case -> (tp, build_set options). dp = 2 / tp.
CASES = {
    "dp2_distributed_dp_reshardable": (1, {"distributed": True, "checkpoint_format": "dp_reshardable",
                                           "dtype": "bfloat16"}),
    "tp2_distributed_fully_reshardable": (2, {"distributed": True, "checkpoint_format": "fully_reshardable",
                                              "dtype": "bfloat16"}),
    "tp2_model_space_fp32": (2, {"distributed": False, "dtype": "float32"}),
}
TRAINER_STATE = {"step": 2, "loader": {"cursor": 5}}


def save_case(root: Path, ckpt: Path, name: str, seed: int) -> None:
    tp, options = CASES[name]
    init_distributed(tp=tp, pp=1, backend="gloo")
    models, opts, scheds = h.build_set(ckpt, init_seed=seed, **options)
    vocab = models["policy"].model_config.vocab_size
    for i in range(2):
        h.train_step(models, opts, scheds, seed=seed + i, vocab=vocab)
    for sub in ("run", "canonical"):
        if sub == "canonical":
            for opt in opts.values():
                opt.checkpoint_format = "fully_reshardable"
        CheckpointManager(root / name / sub).save(2, models=models, optimizers=opts, schedulers=scheds,
                                                  trainer_state=TRAINER_STATE)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", type=Path, required=True)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for name in CASES:
        save_case(args.root, args.ckpt, name, args.seed)
    shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
