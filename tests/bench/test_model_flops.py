"""bench/model_flops.py against independent counts: the parameters of a real transformers model, the
flops torch's FlopCounterMode sees in its forward pass, and the forward-pass equivalents the trainer's step
stages really run (measured on tiny Megatron models, not retyped from the code's rule)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]


def _model_flops():
    spec = importlib.util.spec_from_file_location("bench_model_flops", ROOT / "bench" / "model_flops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Grouped-query attention, head_dim != hidden / heads, untied head: every term of the count is exercised.
HF_CONFIG = {"hidden_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
             "intermediate_size": 160, "num_hidden_layers": 3, "vocab_size": 301, "tie_word_embeddings": False,
             "max_position_embeddings": 256}


def _hf_model() -> torch.nn.Module:
    # eager attention: QK^T and AV are plain matmuls the counter sees (it does not count the CPU SDPA kernel);
    # they run over the full T x T scores, the convention model_flops follows (PaLM's).
    config = transformers.Qwen2Config(**HF_CONFIG, attn_implementation="eager")
    return transformers.Qwen2ForCausalLM(config).eval()


def test_matmul_params_equal_the_linear_weights_of_the_real_model():
    model = _hf_model()
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert _model_flops().matmul_params(HF_CONFIG) == linear


@pytest.mark.parametrize("batch,seq_len", [(1, 1), (2, 37), (3, 64)])
def test_forward_flops_equal_what_flop_counter_measures(batch, seq_len):
    model = _hf_model()
    ids = torch.randint(0, HF_CONFIG["vocab_size"], (batch, seq_len))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(ids, use_cache=False)
    expected = counter.get_total_flops()  # matmuls and attention; elementwise ops are not counted by either
    assert _model_flops().forward_flops(HF_CONFIG, batch * seq_len, seq_len) == pytest.approx(expected, rel=1e-12)


def test_step_flops_is_the_passes_times_one_measured_forward_at_the_mean_length():
    # equal-length sequences, where the mean length is every sequence's length: the composition of the
    # two counts (tokens, sequences -> seq_len) against a forward FlopCounterMode measured
    batch, seq_len = 3, 40
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        _hf_model()(torch.randint(0, HF_CONFIG["vocab_size"], (batch, seq_len)), use_cache=False)
    config = {"ppo": {"epochs": 1}, "prime": {"mode": "prime", "ref_type": "freeze"}, "prm": {"update": "after"}}
    flops = _model_flops().step_flops(HF_CONFIG, config, batch * seq_len, batch)
    assert flops == pytest.approx(_model_flops().forward_passes(config) * counter.get_total_flops(), rel=1e-12)


# ---- forward-pass equivalents of one step, measured on the trainer's own stages -------------------------
#
# The expected count is not written down here: the step's stages (old log-probs, the PRM stage, the
# advantage, the policy update, in prime_step's order) run on tiny Megatron models under FlopCounterMode,
# and their matmul flops are divided by those of one forward over the same batch. On this CPU path the
# counter sees exactly the transformer layers' linear layers (the fused LM-head log-prob kernel and the
# attention kernel are invisible to it); a linear layer costs the same per token in every pass, and its
# backward is two matmuls of its forward's size (input and weight gradients), so the quotient is the
# number of forward-pass equivalents the stages really ran. Generation adds one forward (vLLM decodes
# each token once with the KV cache), which no CPU test can run.

ROLLOUT_PASSES = 1

_stage_spec = importlib.util.spec_from_file_location(
    "_flops_stage_helpers", ROOT / "tests" / "trainer" / "stage_helpers.py")
stage_helpers = importlib.util.module_from_spec(_stage_spec)
_stage_spec.loader.exec_module(stage_helpers)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from primeflow.models import make_tiny_checkpoint

    stage_helpers.init_world()
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=3)


def _matmul_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _measured_passes(ckpt, mode: str, ref_type: str, update: str, epochs: int, prm_epochs: int = 1) -> float:
    from primeflow.trainer.config import Config
    from primeflow.trainer.stages.advantage import advantage_stage
    from primeflow.trainer.stages.logprobs import batch_logprobs
    from primeflow.trainer.stages.policy import policy_stage
    from primeflow.trainer.stages.prm import prm_stage
    from primeflow.trainer.stages.results import PolicyTargets

    config = Config()
    config.prime.mode, config.prime.ref_type, config.prm.update, config.ppo.epochs = mode, ref_type, update, epochs
    config.prm.epochs = prm_epochs
    models, config = stage_helpers.tiny_models(ckpt, config)
    batch = stage_helpers.random_rollouts(0)
    budget = config.train.micro_batch_tokens
    one_forward = _matmul_flops(lambda: batch_logprobs(models.policy, batch, budget=budget))

    def step() -> None:  # prime_step's model work, in its order
        old_logp = batch_logprobs(models.policy, batch, budget=budget, temperature=config.rollout.temperature)
        scores = prm_stage(models, batch, config, old_logp=old_logp) if mode == "prime" else None
        adv = advantage_stage(batch, config, old_logp=old_logp,
                              token_rewards=scores.token_rewards if scores is not None else None)
        policy_stage(models, batch, config, PolicyTargets(old_logp, adv.advantages), step=1)

    return ROLLOUT_PASSES + _matmul_flops(step) / one_forward


@pytest.mark.parametrize("mode,ref_type,update,epochs,prm_epochs", [
    ("rloo", "freeze", "none", 1, 1),
    ("rloo", "freeze", "none", 2, 1),
    ("prime", "freeze", "after", 1, 1),
    ("prime", "policy", "after", 1, 1),
    ("prime", "freeze", "before", 1, 1),
    ("prime", "freeze", "none", 1, 1),
    ("prime", "policy", "none", 2, 1),
    ("prime", "freeze", "after", 1, 3),    # the fused head's first pass, then the PRM alone
    ("prime", "policy", "before", 1, 2),   # the two-head path
    ("prime", "freeze", "none", 1, 2),     # no update: prm.epochs does nothing
])
def test_forward_passes_equal_what_the_step_stages_run(tiny_ckpt, mode, ref_type, update, epochs, prm_epochs):
    measured = _measured_passes(tiny_ckpt, mode, ref_type, update, epochs, prm_epochs)
    config = {"ppo": {"epochs": epochs}, "prime": {"mode": mode, "ref_type": ref_type},
              "prm": {"update": update, "epochs": prm_epochs}}
    assert _model_flops().forward_passes(config) == pytest.approx(measured, rel=1e-12)
