"""Shared builders for trainer stage tests: a 1-process world, tiny PRIME models, random rollouts."""

from __future__ import annotations

import random

import pytest
import torch
from primeflow.models import make_tiny_checkpoint
from primeflow.trainer import parallel
from primeflow.trainer.batch import TrainBatch, build_train_batch
from primeflow.trainer.config import Config
from primeflow.trainer.models_setup import build_prime_models

EOS_IDS = {256, 258}
PAD_ID = 256


# Module fixtures shared by the stage-level tests; a module uses them by binding the same names
# (`_one_thread = helpers._one_thread`, `ckpt = helpers.ckpt`).
@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny GEMMs: on a shared 2-core host, torch's second intra-op thread makes these modules ~15x slower
    (measured 1.5 s vs 22 s per reference step while another job was running), so run them single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny HF checkpoint (seed 3) in a 1-process world."""
    init_world()
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=3)


def init_world() -> None:
    parallel.init_distributed(tp=1, pp=1)


def random_rollouts(seed: int, *, groups: int = 3, K: int = 4, vocab: int = 250) -> TrainBatch:
    """Random prompts/responses of mixed lengths (some ending with EOS, some truncated, one of length 1),
    binary outcomes with both values in every group."""
    rng = random.Random(seed)
    B = groups * K
    prompts = [[rng.randrange(vocab) for _ in range(rng.randrange(3, 20))] for _ in range(B)]
    responses, finish = [], []
    for i in range(B):
        body = [rng.randrange(vocab) for _ in range(rng.randrange(0, 14))]
        if i % 5 == 3:
            responses.append(body + [rng.randrange(vocab)])
            finish.append("length")
        else:
            responses.append(body + [258])
            finish.append("stop")
    outcome = [float(k % 2 == (g % 2)) for g in range(groups) for k in range(K)]
    return build_train_batch(prompts, responses, [[0.0] * len(r) for r in responses], finish, outcome,
                             group_size=K, eos_ids=EOS_IDS, pad_id=PAD_ID)


def frozen_reference_config() -> Config:
    """The built-in config with the paper's frozen SFT reference (prime.ref_type=freeze). The stage tests check
    that path: a reference model of its own, and the fused PRM + reference head it enables. The embedded
    default uses ref_type=policy, whose PRM stage is the two-head path minus the reference forward."""
    config = Config()
    config.prime.ref_type = "freeze"
    return config


def tiny_models(ckpt, config: Config | None = None):
    config = config or frozen_reference_config()
    return build_prime_models(config, ckpt), config
