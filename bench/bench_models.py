"""Megatron model forward+backward with the fused log-prob head vs an unfused log_softmax head.

Run (from the repo root):
    .venv/bin/pytest bench/bench_models.py --benchmark-only --benchmark-json bench/results/<name>.json
Models (random weights, TP=1 in a gloo world of one, fp32 on CPU / bf16 on CUDA):
  tiny  - make_tiny_checkpoint's shape (hidden 256, 2 layers, V 259)
  0.5B  - Qwen2.5-0.5B's shape (hidden 896, 14 heads / 2 KV, ffn 4864, V 151936) with 2 layers by default
          (the head is what differs between the providers; PRIMEFLOW_BENCH_FULL=1 builds all 24 layers).
Batch: B=4 rows x T=256 tokens (PRIMEFLOW_BENCH_B / _T). Providers:
  fused   - model(..., labels=) -> primeflow.kernels.linear_token_logprobs: no [tokens, V] tensor
  unfused - model(...) logits [B, T, V] -> fp32 log_softmax -> gather (what a plain Megatron/HF head does)
extra_info: tokens/s, peak extra host memory of one step (bench/memory.py) and, on the fused case (run
second), the time and memory ratios against the unfused case of the same model in this process.
GPU: the same command on a CUDA machine runs bf16 on the GPU (memory is then torch's allocator peak:
bench/device.py).
"""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
from device import peak_extra_memory

FULL = os.environ.get("PRIMEFLOW_BENCH_FULL") == "1"
B = int(os.environ.get("PRIMEFLOW_BENCH_B", 4))
T = int(os.environ.get("PRIMEFLOW_BENCH_T", 256))
ROUNDS = int(os.environ.get("PRIMEFLOW_BENCH_ROUNDS", 3))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = "bfloat16" if DEVICE == "cuda" else "float32"

SHAPES = {
    "tiny": dict(architecture="qwen2", vocab_size=259, hidden_size=256, ffn_hidden_size=576, num_layers=2,
                 num_attention_heads=4, num_query_groups=2, head_dim=64),
    "0.5B": dict(architecture="qwen2", vocab_size=151936, hidden_size=896, ffn_hidden_size=4864,
                 num_layers=24 if FULL else 2, num_attention_heads=14, num_query_groups=2, head_dim=64),
}
_RESULTS: dict[tuple[str, str], tuple[float, int]] = {}


@pytest.fixture(scope="module")
def world():
    from megatron.core import parallel_state

    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(s.getsockname()[1]))
        dist.init_process_group("gloo", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    yield
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


def _model(name: str):
    from primeflow.models import ModelConfig, build_model

    cfg = ModelConfig(**SHAPES[name], max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1e6,
                      rope_scaling_factor=None, tie_word_embeddings=False, qkv_bias=True, params_dtype=DTYPE)
    torch.manual_seed(0)
    return build_model(cfg, role="policy", device=DEVICE), cfg


def _step(model, ids, pos, labels, fused: bool) -> float:
    model.zero_grad(set_to_none=True)
    if fused:
        logp = model(ids, pos, None, labels=labels)
    else:
        logits = model(ids, pos, None)
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels[..., None])[..., 0]
    loss = logp.mean()
    loss.backward()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return loss.item()


@pytest.mark.parametrize("provider", ["unfused", "fused"])  # fused second: its ratios use unfused's figures
@pytest.mark.parametrize("shape", list(SHAPES))
def test_forward_backward(benchmark, world, shape, provider):
    model, cfg = _model(shape)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=g).to(DEVICE)
    labels = torch.randint(0, cfg.vocab_size, (B, T), generator=g).to(DEVICE)
    pos = torch.arange(T, device=DEVICE).expand(B, T)
    fused = provider == "fused"
    _step(model, ids, pos, labels, fused)  # warm-up (allocator, first-call paths)
    _, peak = peak_extra_memory(lambda: _step(model, ids, pos, labels, fused))
    t0 = time.perf_counter()
    benchmark.pedantic(_step, args=(model, ids, pos, labels, fused), rounds=ROUNDS, iterations=1)
    median = benchmark.stats.stats.median if benchmark.stats else (time.perf_counter() - t0) / ROUNDS
    _RESULTS[(shape, provider)] = (median, peak)
    info = benchmark.extra_info
    info.update(device=DEVICE, dtype=DTYPE, tokens=B * T, layers=cfg.num_layers, vocab=cfg.vocab_size,
                tokens_per_s=B * T / median, peak_extra_bytes=peak,
                logits_bytes=B * T * cfg.vocab_size * 4)
    if fused and (shape, "unfused") in _RESULTS:
        base_t, base_m = _RESULTS[(shape, "unfused")]
        info.update(time_ratio_vs_unfused=median / base_t, peak_memory_ratio_vs_unfused=peak / max(base_m, 1))
    print(f"\n{shape:5s} {provider:8s} {B * T / median:9.0f} tok/s  peak +{peak / 2**20:8.1f} MiB")
