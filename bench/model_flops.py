"""Model FLOPs of one PRIME or outcome-only RLOO step, for MFU (the step breakdown's `flops`).

Per token, a forward pass costs 2·P + 4·L·A·T flops (PaLM, appendix B: P = parameters in matmuls including
the LM head, embeddings excluded; L layers, A = heads x head_dim, T = the sequence length; attention is
counted over the full context as PaLM does). A forward+backward pass costs 3x its forward. The passes of one
step over its prompt+response tokens, as primeflow's trainer runs them:
  rollout          1 forward (generation; KV-cached decoding computes each token once)
  old log-probs    1 forward
  policy update    3 forwards per PPO epoch
  PRIME only:      reference log-probs 1 forward (ref_type=freeze; none with ref_type=policy),
                   PRM (prm.update): after  3 (its update's forward+backward also gives the rewards),
                                     before 3 + 1 (the update, then scoring with the updated PRM),
                                     none   1 (scoring only; an offline PRM has no backward),
                                     + 3 per further PRM pass (prm.epochs > 1; the PRM alone, no reference).
The verifier, the advantage and the weight sync do no model flops. MFU = flops / (step time x devices x
peak flops per device), the convention of PaLM and NeMo-RL.
"""

from __future__ import annotations

from typing import Any


def matmul_params(hf_config: dict[str, Any]) -> int:
    """Parameters that multiply activations (attention, MLP and LM head; no embeddings, norms or biases)."""
    hidden = hf_config["hidden_size"]
    heads = hf_config["num_attention_heads"]
    head_dim = hf_config.get("head_dim") or hidden // heads
    kv_heads = hf_config.get("num_key_value_heads") or heads
    attention = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    mlp = 3 * hidden * hf_config["intermediate_size"]  # gate, up, down (SwiGLU)
    return hf_config["num_hidden_layers"] * (attention + mlp) + hidden * hf_config["vocab_size"]


def forward_flops(hf_config: dict[str, Any], tokens: float, seq_len: float) -> float:
    """Flops of one forward pass over `tokens` tokens in sequences of mean length `seq_len`."""
    heads = hf_config["num_attention_heads"]
    width = (hf_config.get("head_dim") or hf_config["hidden_size"] // heads) * heads
    per_token = 2 * matmul_params(hf_config) + 4 * hf_config["num_hidden_layers"] * width * seq_len
    return per_token * tokens


# PRM forward-pass equivalents per prm.update mode (trainer/stages/prm.py).
PRM_PASSES = {"after": 3, "before": 3 + 1, "none": 1}


def forward_passes(trainer_config: dict[str, Any]) -> int:
    """Forward-pass equivalents of one step (see the module docstring)."""
    passes = 1 + 1 + 3 * trainer_config["ppo"]["epochs"]
    if trainer_config["prime"]["mode"] == "prime":
        passes += 1 if trainer_config["prime"]["ref_type"] == "freeze" else 0
        update = trainer_config["prm"]["update"]
        passes += PRM_PASSES[update]
        if update != "none":  # configs recorded before prm.epochs existed ran one pass
            passes += 3 * (trainer_config["prm"].get("epochs", 1) - 1)
    return passes


def step_flops(hf_config: dict[str, Any], trainer_config: dict[str, Any], tokens: float, sequences: float) -> float:
    """Model flops of one step that processed `tokens` prompt+response tokens in `sequences` sequences."""
    return forward_passes(trainer_config) * forward_flops(hf_config, tokens, tokens / max(sequences, 1.0))
