"""Megatron (primeflow.models) vs transformers checks, shared by the in-pytest TP=1 tests and the torchrun
script (mp_parity.py) for TP/PP > 1. Every check raises AssertionError with the measured error.

transformers is the independent reference: same checkpoint, fp32, computed row by row without padding.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from primeflow.models import ModelConfig, build_model, hf_state_dict, load_hf_checkpoint, sequence_logprobs
from transformers import AutoModelForCausalLM


def _load_tolerances():
    """tests/tolerances.py by path (tests/ is deliberately not on sys.path; see conftest.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_primeflow_tests_tolerances",
                                                  Path(__file__).resolve().parents[1] / "tolerances.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TOL = _load_tolerances()
REL_TOL = _TOL.MODEL_PARITY_REL


def load_hf(ckpt: Path):
    return AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()


def build_loaded(ckpt: Path, role: str = "policy", *, initialize: bool = False):
    """The model as the trainer builds it: uninitialised weights, each rank reading its slices of the file."""
    cfg = ModelConfig.from_hf(ckpt)
    model = build_model(cfg, role=role, params_dtype=torch.float32, initialize=initialize)
    load_hf_checkpoint(model, ckpt)
    return model, cfg


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    return (got.double() - want.double()).abs().max().item() / scale if want.numel() else 0.0


def gather_vocab(logits_bsv: torch.Tensor) -> torch.Tensor:
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp == 1:
        return logits_bsv
    parts = [torch.empty_like(logits_bsv) for _ in range(tp)]
    dist.all_gather(parts, logits_bsv.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=-1)


def random_batch(vocab: int, seed: int, B: int = 3, T: int = 13) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, T] and a mask with one full row, one right-padded, one left-padded row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, T - 4:] = 0          # right padding
    mask[2, :5] = 0              # left padding
    return ids, mask


def hf_row_logprobs(hf, ids: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[B, T-1] reference: each row's valid span run alone through transformers (no padding at all)."""
    out = torch.zeros(ids.shape[0], ids.shape[1] - 1, dtype=torch.float32)
    for b in range(ids.shape[0]):
        cols = mask[b].nonzero().flatten()
        s, e = int(cols[0]), int(cols[-1]) + 1
        seq = ids[b:b + 1, s:e]
        logp = torch.log_softmax(hf(seq).logits[0, :-1].double() / temperature, dim=-1)
        out[b, s:e - 1] = logp.gather(-1, seq[0, 1:, None])[:, 0].float()
    return out


def check_logits(model, hf, cfg: ModelConfig, seed: int) -> float:
    """Unpadded batch: full logits (TP-gathered, padding columns dropped) vs transformers."""
    ids, _ = random_batch(cfg.vocab_size, seed)
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.no_grad():
        logits = gather_vocab(model(ids, pos, None))
        want = hf(ids).logits
    assert logits.shape[-1] == cfg.padded_vocab_size(parallel_state.get_tensor_model_parallel_world_size())
    assert torch.isneginf(logits[..., cfg.vocab_size:]).all(), "padded vocab columns must be -inf"
    err = _rel_err(logits[..., :cfg.vocab_size], want)
    assert err <= REL_TOL, f"logits rel err {err:.2e}"
    return err


def check_logprob_head(model, hf, cfg: ModelConfig, seed: int) -> float:
    """model(..., labels=) (fused head) == log_softmax(HF logits) gathered at the labels."""
    ids, _ = random_batch(cfg.vocab_size, seed + 1)
    labels = torch.randint(0, cfg.vocab_size, ids.shape, generator=torch.Generator().manual_seed(seed + 2))
    labels[0, 0], labels[0, 1] = 0, cfg.vocab_size - 1  # first and last vocabulary column
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.no_grad():
        logp = model(ids, pos, None, labels=labels)
        want = torch.log_softmax(hf(ids).logits.double(), -1).gather(-1, labels[..., None])[..., 0]
    assert logp.dtype == torch.float32 and logp.shape == ids.shape
    err = _rel_err(logp, want)
    assert err <= REL_TOL, f"log-prob head rel err {err:.2e}"
    return err


def check_sequence_logprobs(model, hf, cfg: ModelConfig, seed: int, temperature: float = 0.7) -> float:
    """Padded (left + right) batch through packing; positions whose target is padding must be 0."""
    ids, mask = random_batch(cfg.vocab_size, seed + 3)
    with torch.no_grad():
        got = sequence_logprobs(model, ids, attention_mask=mask, temperature=temperature)
        want = hf_row_logprobs(hf, ids, mask, temperature)
    if got is None:  # not the last pipeline stage
        return 0.0
    assert got.shape == (ids.shape[0], ids.shape[1] - 1) and got.dtype == torch.float32
    target_pad = mask[:, 1:] == 0
    assert (got[target_pad] == 0).all()
    err = _rel_err(got, want)
    assert err <= REL_TOL, f"sequence_logprobs rel err {err:.2e}"
    return err


def check_gradients(model, hf, cfg: ModelConfig, seed: int) -> float:
    """d/dθ of sum(w * logp) through sequence_logprobs vs transformers' autograd, every tensor (HF names)."""
    ids, mask = random_batch(cfg.vocab_size, seed + 4)
    w = torch.randn(ids.shape[0], ids.shape[1] - 1, generator=torch.Generator().manual_seed(seed + 5))
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.grad = None
    (sequence_logprobs(model, ids, attention_mask=mask) * w).sum().backward()
    got = hf_state_dict(model, grads=True)
    hf.zero_grad(set_to_none=True)
    (hf_row_logprobs_grad(hf, ids, mask) * w).sum().backward()
    want = {n: p.grad for n, p in hf.named_parameters()}
    worst = 0.0
    for name, g in got.items():
        ref = want[name] if name in want else None
        assert ref is not None, f"no HF gradient for {name}"
        err = _rel_err(g, ref)
        assert err <= REL_TOL, f"gradient of {name}: rel err {err:.2e}"
        worst = max(worst, err)
    return worst


def hf_row_logprobs_grad(hf, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Differentiable twin of hf_row_logprobs (fp32 throughout)."""
    rows = []
    for b in range(ids.shape[0]):
        cols = mask[b].nonzero().flatten()
        s, e = int(cols[0]), int(cols[-1]) + 1
        seq = ids[b:b + 1, s:e]
        logp = torch.log_softmax(hf(seq).logits[0, :-1], dim=-1).gather(-1, seq[0, 1:, None])[:, 0]
        row = torch.zeros(ids.shape[1] - 1)
        rows.append(torch.cat([row[:s], logp, row[e - 1:]]))
    return torch.stack(rows)


def check_pipeline_logits(model, hf, cfg: ModelConfig, seed: int) -> float:
    """PP > 1: logits of an unpadded batch through Megatron's forward-only pipeline schedule."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    ids, _ = random_batch(cfg.vocab_size, seed)
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    got: list[torch.Tensor] = []

    def forward_step(_it, chunk):
        out = chunk(ids, pos, None)

        def collect(t):
            got.append(t.detach())
            return t.sum() * 0.0, {}

        return out, collect

    with torch.no_grad():
        get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([None]), model=[model],
                                    num_microbatches=1, seq_length=ids.shape[1], micro_batch_size=ids.shape[0],
                                    forward_only=True)
    if not parallel_state.is_pipeline_last_stage():
        assert not got
        return 0.0
    logits = gather_vocab(got[0])
    with torch.no_grad():
        want = hf(ids).logits
    err = _rel_err(logits[..., :cfg.vocab_size], want)
    assert err <= REL_TOL, f"pipeline logits rel err {err:.2e}"
    return err


# One AdamW step. eps is large on purpose: Adam's first step is ~lr * sign(g) wherever |g| >> eps, which
# turns fp32 rounding on near-zero gradient entries into a full +-lr flip; with eps = lr = 1e-3 the update is
# 1-Lipschitz in g and the comparison measures the model, not the sign of noise (see tolerances.py).
ADAMW = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-3, weight_decay=0.1)
STEP_ATOL = _TOL.MODEL_ADAMW_STEP_ATOL


def check_train_step(model, hf, cfg: ModelConfig, seed: int) -> float:
    """One AdamW step on a log-prob loss: Megatron (this TP size) vs transformers, every updated tensor.

    Mutates both models (call last)."""
    ids, mask = random_batch(cfg.vocab_size, seed + 6)
    w = torch.randn(ids.shape[0], ids.shape[1] - 1, generator=torch.Generator().manual_seed(seed + 7))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **ADAMW)
    opt.zero_grad(set_to_none=True)
    (sequence_logprobs(model, ids, attention_mask=mask) * w).sum().backward()
    opt.step()
    hf_opt = torch.optim.AdamW(hf.parameters(), **ADAMW)
    hf_opt.zero_grad(set_to_none=True)
    (hf_row_logprobs_grad(hf, ids, mask) * w).sum().backward()
    hf_opt.step()
    got = hf_state_dict(model)
    want = dict(hf.named_parameters())
    worst = 0.0
    for name, t in got.items():
        err = (t.double() - want[name].detach().double()).abs().max().item()
        assert err <= STEP_ATOL, f"{name} after one AdamW step: max abs diff {err:.2e}"
        worst = max(worst, err)
    return worst


def check_pipeline_gradients(model, hf, cfg: ModelConfig, seed: int) -> float:
    """PP > 1: d/dθ sum(w * logp) through Megatron's forward+backward pipeline schedule (packed, padded
    batch) vs transformers, for the tensors of this stage. Tied embeddings: the first stage's embedding and
    the last stage's copy get their gradients summed over the embedding group, as Megatron's
    finalize_model_grads does."""
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from primeflow.models.logprobs import pack_padded, unpack_logprobs

    ids, mask = random_batch(cfg.vocab_size, seed + 4)
    w = torch.randn(ids.shape[0], ids.shape[1] - 1, generator=torch.Generator().manual_seed(seed + 5))
    packed = pack_padded(ids, mask)
    model.zero_grad(set_to_none=True)

    def forward_step(_it, chunk):
        out = chunk(packed.tokens_1t, packed.position_ids_1t, None, labels=packed.labels_1t,
                    packed_seq_params=packed.params)

        def loss(logp_1t):
            total = (unpack_logprobs(logp_1t, packed, ids.shape[1]) * w).sum()
            return total, {}

        return out, loss

    get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([None]), model=[model],
                                num_microbatches=1, seq_length=packed.tokens_1t.shape[1], micro_batch_size=1,
                                forward_only=False)
    if cfg.tie_word_embeddings and (model.pre_process or model.post_process):
        weight = model.shared_embedding_or_output_weight()
        dist.all_reduce(weight.grad, group=parallel_state.get_embedding_group())
    got = hf_state_dict(model, grads=True)
    hf.zero_grad(set_to_none=True)
    (hf_row_logprobs_grad(hf, ids, mask) * w).sum().backward()
    want = {n: p.grad for n, p in hf.named_parameters()}
    worst = 0.0
    for name, g in got.items():
        err = _rel_err(g, want[name])
        assert err <= REL_TOL, f"pipeline gradient of {name}: rel err {err:.2e}"
        worst = max(worst, err)
    return worst
