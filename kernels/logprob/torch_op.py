"""PyTorch twins of the Triton launchers (same signatures, same math): the CPU path for vocab-parallel
token log-probs and for `prime_token_rewards` on logits. Rows are processed in chunks so the fp32 temporaries
stay bounded (CHUNK_ELEMENTS fp32 values) whatever N*V is.
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 22  # 16 MB of fp32 per temporary


def _row_chunks(n_rows: int, vocab: int):
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


def chunk_stats(z_CV: torch.Tensor, with_entropy: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(max, log sum exp(z - max), entropy | None) of fp32 rows z (already divided by T); consumes z_CV."""
    m_C = z_CV.amax(dim=1)
    m_safe_C = torch.where(torch.isinf(m_C) & (m_C < 0), torch.zeros_like(m_C), m_C)
    d_CV = z_CV.sub_(m_safe_C[:, None])  # z - m (in place)
    if not with_entropy:
        s_C = torch.exp(d_CV).sum(dim=1)  # one temporary
        return m_C, torch.log(s_C), None
    e_CV = torch.exp(d_CV)
    s_C = e_CV.sum(dim=1)
    # sum e*(z-m) relative to the max; -inf columns have e = 0 and contribute 0 (not 0 * -inf).
    w_C = torch.where(e_CV > 0, e_CV * d_CV, torch.zeros_like(e_CV)).sum(dim=1)
    log_s_C = torch.log(s_C)
    return m_C, log_s_C, log_s_C - w_C / s_C


def token_stats(logits_NV: torch.Tensor, labels_N: torch.Tensor, temperature: float, with_entropy: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(max, log sum exp(z - max), entropy | None, z[label] or 0 where label == -1), fp32 [N]: the math of
    token_stats_fwd_kernel."""
    n_rows, vocab = logits_NV.shape
    inv_t = 1.0 / temperature
    m_N = torch.empty(n_rows, dtype=torch.float32, device=logits_NV.device)
    ls_N = torch.empty_like(m_N)
    ent_N = torch.empty_like(m_N) if with_entropy else None
    for lo, hi in _row_chunks(n_rows, vocab):
        z_CV = logits_NV[lo:hi].float() * inv_t
        m_C, ls_C, ent_C = chunk_stats(z_CV, with_entropy)
        m_N[lo:hi] = m_C
        ls_N[lo:hi] = ls_C
        if with_entropy:
            ent_N[lo:hi] = ent_C
    has_label_N = labels_N >= 0
    x_t_N = logits_NV.gather(1, labels_N.clamp(min=0)[:, None]).squeeze(1).float()
    zt_N = torch.where(has_label_N, x_t_N * inv_t, torch.zeros_like(x_t_N))
    return m_N, ls_N, ent_N, zt_N


def token_grad(grad_logp_N: torch.Tensor, grad_ent_N: torch.Tensor | None, logits_NV: torch.Tensor,
               labels_N: torch.Tensor, m_N: torch.Tensor, ls_N: torch.Tensor, ent_N: torch.Tensor | None,
               temperature: float) -> torch.Tensor:
    """dlogits = (1/T)(g (onehot - p) - g_ent p (log p + H)), chunked over rows, in the logits' dtype."""
    n_rows, vocab = logits_NV.shape
    inv_t = 1.0 / temperature
    grad_NV = torch.empty_like(logits_NV)
    for lo, hi in _row_chunks(n_rows, vocab):
        # out of place first: for fp32 logits .float() is the saved tensor itself, which mul_ would overwrite
        log_p_CV = (logits_NV[lo:hi].float() * inv_t).sub_(m_N[lo:hi, None]).sub_(ls_N[lo:hi, None])
        p_CV = torch.exp(log_p_CV)
        dz_CV = p_CV * (-grad_logp_N[lo:hi, None])
        if grad_ent_N is not None:
            term_CV = torch.where(p_CV > 0, p_CV * (log_p_CV + ent_N[lo:hi, None]), torch.zeros_like(p_CV))
            dz_CV -= grad_ent_N[lo:hi, None] * term_CV
        labels_C = labels_N[lo:hi]
        rows_C = torch.nonzero(labels_C >= 0).squeeze(1)
        dz_CV[rows_C, labels_C[rows_C]] += grad_logp_N[lo:hi][rows_C]
        grad_NV[lo:hi] = dz_CV.mul_(inv_t)
    return grad_NV
