"""Float64 truths for the RL ops, written from prime_spec's formulas with plain Python loops.

Deliberately unvectorized (one prompt group, one response, one position at a time) and independent of
primeflow's code, so a vectorization or masking mistake there cannot be mirrored here. Small shapes only.
Loaded by path (tests/kernels is not a package): see `load_rl_truth` in the test files.
"""

from __future__ import annotations

import math

import torch


def rloo_truth(
    rewards,
    outcome,
    mask,
    *,
    group_size,
    gamma_process=1.0,
    gamma_outcome=1.0,
    reward_norm="batch_norm",
    form="prime",
    whiten=True,
    process_coef=1.0,
    outcome_coef=1.0,
):
    """prime_spec 3.3 + 7.1-7.4 on a prefix mask, float64 [B, T]."""
    K = group_size
    B, T = rewards.shape
    L = [int(mask[i].sum()) for i in range(B)]  # prefix mask: valid positions are 0..L_i-1
    r = [[float(rewards[i, t]) if t < L[i] else 0.0 for t in range(T)] for i in range(B)]
    o = [float(x) for x in outcome]

    # 3.3: divide by max over responses and positions of |sum_{s>=t} r_s| + 1e-6.
    if reward_norm == "batch_norm":
        sums = [sum(r[i][t : L[i]]) for i in range(B) for t in range(L[i])]
        biggest = math.nan if any(math.isnan(x) for x in sums) else max(abs(x) for x in sums)
        scale = biggest + 1e-6
        r = [[x / scale for x in row] for row in r]

    returns = [[0.0] * T for _ in range(B)]
    for g in range(B // K):
        rows = range(g * K, (g + 1) * K)
        means = {i: sum(r[i][: L[i]]) / L[i] for i in rows}
        total = sum(means.values())
        for i in rows:
            # 7.3 (prime): r*K/(K-1) - sum_j m_j/(K-1); 7.2 (paper): r - sum_{j != i} m_j/(K-1).
            if form == "prime":
                proc = [r[i][t] * K / (K - 1) - total / (K - 1) for t in range(L[i])]
            else:
                proc = [r[i][t] - (total - means[i]) / (K - 1) for t in range(L[i])]
            # 7.1: the outcome, on the last valid token, minus the mean of the other responses' outcomes.
            loo_outcome = o[i] - sum(o[j] for j in rows if j != i) / (K - 1)
            for t in range(L[i]):
                g_proc = sum(gamma_process ** (s - t) * proc[s] for s in range(t, L[i]))
                g_out = gamma_outcome ** (L[i] - 1 - t) * loo_outcome
                returns[i][t] = process_coef * g_proc + outcome_coef * g_out
    out = torch.tensor(returns, dtype=torch.float64)
    if not whiten:
        return out
    values = [returns[i][t] for i in range(B) for t in range(L[i])]
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)  # Bessel-corrected
    return (out - mean) / math.sqrt(var + 1e-8)  # every position, padding included


def ppo_truth(logp, old_logp, adv, mask, *, clip, agg):
    """(loss, d loss / d logp, clipfrac, ppo_kl) in float64, spec 8, with explicit per-token derivatives."""
    B, T = logp.shape
    loss_tok = [[0.0] * T for _ in range(B)]
    dloss_tok = [[0.0] * T for _ in range(B)]
    clipped = kl = 0.0
    for i in range(B):
        for t in range(T):
            if not bool(mask[i, t]):
                continue
            d = float(logp[i, t]) - float(old_logp[i, t])
            a, ratio = float(adv[i, t]), math.exp(d)
            unclipped, clipped_term = -a * ratio, -a * min(max(ratio, 1 - clip), 1 + clip)
            loss_tok[i][t] = max(unclipped, clipped_term)
            # d/dlogp: the unclipped branch has slope -a*ratio; the clipped one is flat where it is larger.
            dloss_tok[i][t] = 0.0 if clipped_term > unclipped else -a * ratio
            clipped += clipped_term > unclipped
            kl += -d
    n_row = [int(mask[i].sum()) for i in range(B)]
    n = sum(n_row)
    weight = [0.0] * B
    if agg == "token-mean":
        weight = [1.0 / max(n, 1)] * B
    else:
        rows = sum(1 for k in n_row if k > 0)
        weight = [1.0 / (max(k, 1) * max(rows, 1)) for k in n_row]
    loss = sum(weight[i] * sum(loss_tok[i]) for i in range(B))
    grad = torch.tensor(
        [[weight[i] * dloss_tok[i][t] for t in range(T)] for i in range(B)], dtype=torch.float64
    )
    return loss, grad, clipped / max(n, 1), kl / max(n, 1)


def prm_ce_truth(prm_logp, ref_logp, mask, outcome, *, beta):
    """(loss, d loss / d prm_logp) in float64, spec 4.1: BCE(sigmoid(beta * sum log-ratio), outcome)."""
    B, T = prm_logp.shape
    loss = 0.0
    grad = torch.zeros(B, T, dtype=torch.float64)
    for i in range(B):
        reward = beta * sum(
            float(prm_logp[i, t]) - float(ref_logp[i, t]) for t in range(T) if bool(mask[i, t])
        )
        o = float(outcome[i])
        log_sig = -math.log1p(math.exp(-reward)) if reward >= 0 else reward - math.log1p(math.exp(reward))
        log_sig_neg = log_sig - reward  # log(1 - sigmoid(R)) = log sigmoid(R) - R
        loss += -(o * log_sig + (1 - o) * log_sig_neg) / B
        sig = 1.0 / (1.0 + math.exp(-reward)) if reward >= 0 else math.exp(reward) / (1.0 + math.exp(reward))
        for t in range(T):
            if bool(mask[i, t]):
                grad[i, t] = beta * (sig - o) / B
    return loss, grad


def pairwise_accuracy_truth(scores, outcome, *, group_size):
    """spec 4.5 dpo_acc: per group, |acc diff|-weighted fraction of differing pairs whose reward
    difference has the same sign; groups with no difference count 0.5; mean over groups."""
    K = group_size
    accs = []
    for g in range(len(scores) // K):
        num = den = 0.0
        for i in range(g * K, (g + 1) * K):
            for j in range(i + 1, (g + 1) * K):
                da, ds = float(outcome[i]) - float(outcome[j]), float(scores[i]) - float(scores[j])
                if da == 0:
                    continue
                den += abs(da)
                num += abs(da) if (ds > 0) == (da > 0) and ds != 0 else 0.0
        accs.append(num / den if den > 0 else 0.5)
    return sum(accs) / len(accs)
