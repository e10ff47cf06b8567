"""One PRIME step twice: through the trainer's real stages (fp32 Megatron) and as an independent float64
re-implementation written from ../shared/docs/prime_spec.md (transformers float64 models, one row at a
time, no packing; nothing from primeflow.kernels or primeflow.kernels.reference), plus `compare`, which
lists every quantity where the two disagree beyond its tolerance.

Loaded by path from tests/trainer/test_prime_step_float64.py (tests/ is not a package).

Quantities: token rewards [B, R], the PRM CE loss, the PRM parameters after its optimizer step, the
advantages [B, R], pg_loss and the policy parameters after their optimizer step.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from primeflow.models import hf_state_dict
from primeflow.trainer.stages.advantage import advantage_stage
from primeflow.trainer.stages.logprobs import batch_logprobs
from primeflow.trainer.stages.policy import policy_stage
from primeflow.trainer.stages.prm import prm_stage
from primeflow.trainer.stages.results import PolicyTargets
from tolerances import MODEL_PARITY_REL, adam_first_step_allowed
from transformers import AutoModelForCausalLM

# ---------------------------------------------------------------------------------------------------------
# Tolerances: the fp32 trainer vs the float64 truth. Each one is a first-order error bound, from the
# measured error of the fp32 forward and the measured conditioning of this setup (12 rows of <= 15 response
# tokens, K = 4, beta = 0.05, the PRM perturbed by PERTURB), next to the largest error measured: fresh seeds,
# 20 per mode, on this 2-core CPU host (issue 14). "eps_lp" is the fp32 log-prob error.
#
# * log-probs: fp32 Megatron vs float64 transformers, the same weights: eps_lp <= 5.5e-6 measured, for
#   |log p| up to 14 (~4e-7 relative: fp32 accumulation over hidden 256 / vocab 259; tests/tolerances.py quotes
#   <= 6e-7 for the models suite's smaller-logit inputs). Upper bound used below: eps_lp = 6e-6.
# * token rewards r = beta (lp_prm - lp_ref): |dr| <= beta * 2 eps_lp = 6e-7, against max |r| >= 0.10 (`after`,
#   the perturbed PRM) and >= 0.54 (`before`, the updated PRM) over all seeds: <= 6e-6 relative.
#   REWARD_REL = 1e-4 on max |dr| / max |r| (measured 3.6e-6).
# * PRM CE loss: d/dR of the BCE is sigma(R) - o, |.| <= 1, and R = beta sum_t q_t over <= 15 tokens:
#   |dL| <= beta * 15 * 2 eps_lp = 9e-6. PRM_LOSS_ATOL = 5e-5 (measured 1.6e-7).
# * advantages: batch_norm divides by M = max |reverse cumsum| (max |r| / M <= 0.8 measured), so a normalised
#   reward is off by <= 6e-6 * 0.8 = 5e-6. The PRIME transform scales it by K/(K-1) = 4/3 and subtracts a
#   group baseline off by as much; the return sums <= 15 tokens of both: |dG| <= 2 * 4/3 * 15 * 5e-6 = 2e-4.
#   Whitening divides by std(returns) >= 0.56 measured: |dA| <~ 4e-4 if all roundings had one sign; being
#   independent they add like sqrt(15): ~1e-4. ADV_ATOL = 3e-4 on whitened advantages (measured 8.7e-6).
# * pg_loss: a mean of -A rho with rho = exp(lp - lp_old) = 1 +- 2 eps_lp (two fp32 forwards of one policy; 1
#   exactly in float64): |d pg_loss| <= max |dA| + max |A| * 2 eps_lp. PG_LOSS_ATOL = 3e-4 (measured 4.2e-7).
# * parameters after one AdamW step. Adam's first step is p' = p (1 - lr wd) - lr g / (|g| + eps) (the bias
#   corrections cancel m and v exactly), i.e. ~ -lr sign(g): a gradient known to +-delta makes an element's
#   update uncertain by |u(g) - u(g')| <= 2 |g - g'| / (max(|g|, |g'|) + eps), u = g / (|g| + eps) (same
#   signs: eps |g - g'| / ((|g| + eps)(|g'| + eps)); opposite signs: each term <= |g - g'| / (max + eps)),
#   at most 2 (a sign flip). With delta = GRAD_REL * max |g| of the tensor, element i may be off by
#       lr * min(2, 2 delta / (|g_i| + eps)) + PARAM_ULPS * 2^-24 * |p_i|
#   (the last term: rounding p' to fp32 and the fp32 AdamW arithmetic; the worst element measured used 0.28 of
#   its allowance, a norm weight ~1.0 off by 0.7 ulp). Elements with a gradient at the noise level may flip
#   and are rightly not pinned down (~3-4 % of them: allowance >= lr / 2); every other element is held far
#   below the 2 lr that a wrong sign or a wrong gradient produces. GRAD_REL = MODEL_PARITY_REL = 1e-4: the
#   gradients (post-clip, read at optimizer.step) were <= 3.5e-6 of the tensor's largest entry off the float64
#   autograd here, for the PRM CE gradient and the PPO gradient (which carries the advantages' error too).
# ---------------------------------------------------------------------------------------------------------
REWARD_REL = 1e-4
PRM_LOSS_ATOL = 5e-5
ADV_ATOL = 3e-4
PG_LOSS_ATOL = 3e-4
GRAD_REL = MODEL_PARITY_REL
PARAM_ULPS = 4.0
# The PRM is perturbed by p <- p * (1 + PERTURB * N(0, 1)) before the step (PRM == ref gives rewards of
# exactly 0 in `after` mode, which would make process rewards invisible to the comparison).
PERTURB = 0.1

BATCH_NORM_EPS = 1e-6  # prime_spec 3.3
WHITEN_EPS = 1e-8  # prime_spec 7.4
ADAM_EPS = 1e-8  # trainer/models_setup.py:make_optimizer builds AdamW with eps=1e-8


# ------------------------------------------------------------------------------------------- trainer side
def perturb_prm(models, seed: int, scale: float = PERTURB) -> dict[str, torch.Tensor]:
    """Multiply every PRM parameter by (1 + scale * N(0,1)), deterministically from `seed` (zeros, e.g. the
    padded vocabulary rows, stay zero); return the perturbed PRM as HF-named fp32 tensors."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in models.prm.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            p.mul_(1.0 + scale * noise.to(p.device))
    return {k: v.detach().cpu().clone() for k, v in hf_state_dict(models.prm).items()}


def swap_prm_and_ref_weights(models) -> None:
    """Mutation helper: the trainable PRM gets the reference's weights and the frozen ref the PRM's."""
    with torch.no_grad():
        for a, b in zip(models.prm.parameters(), models.ref.parameters(), strict=True):
            tmp = a.detach().clone()
            a.copy_(b)
            b.copy_(tmp)


def trainer_step(models, batch, config) -> dict:
    """One PRIME step through the real stages, in trainer/train.py:prime_step's order."""
    old_logp = batch_logprobs(models.policy, batch, budget=config.train.micro_batch_tokens,
                              temperature=config.rollout.temperature)
    scores = prm_stage(models, batch, config, old_logp=old_logp) if config.prime.mode == "prime" else None
    adv = advantage_stage(batch, config, old_logp=old_logp,
                          token_rewards=None if scores is None else scores.token_rewards)
    metrics = {**(scores.metrics.read() if scores else {}), **adv.metrics.read(),
               **policy_stage(models, batch, config, PolicyTargets(old_logp, adv.advantages), step=1).read()}
    out = {
        "advantages": adv.advantages.detach().cpu(),
        "pg_loss": metrics["pg_loss"],
        "policy_params": {k: v.detach().cpu().clone() for k, v in hf_state_dict(models.policy).items()},
    }
    if config.prime.mode == "prime":
        out["token_rewards"] = scores.token_rewards.detach().cpu()
        out["prm_loss"] = metrics["prm_loss"]
        out["prm_params"] = {k: v.detach().cpu().clone() for k, v in hf_state_dict(models.prm).items()}
    return out


# ------------------------------------------------------------------------------------- float64 reference
def hf64(ckpt, state: dict[str, torch.Tensor] | None = None):
    """The checkpoint as a transformers float64 model, optionally with `state` (HF names) loaded into it."""
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float64)
    if state is not None:
        missing, unexpected = model.load_state_dict({k: v.double() for k, v in state.items()}, strict=False)
        assert not unexpected and not [k for k in missing if "rotary" not in k], (missing, unexpected)
    return model


class Rows:
    """The batch as plain per-row python data (no padding): ids [P_i + n_i] (prompt + valid response),
    prompt lengths, valid response tokens n_i (incl. the EOS), outcomes, group size K, and R, the response
    columns of the trainer's [B, R] tensors."""

    def __init__(self, ids: list[torch.Tensor], prompt_len: list[int], n: list[int], outcome: list[float],
                 K: int, R: int) -> None:
        self.ids, self.prompt_len, self.n, self.outcome, self.K, self.R = ids, prompt_len, n, outcome, K, R
        self.B = len(ids)


def rows_of(batch) -> Rows:
    ids, P, n = [], [], []
    for i in range(batch.rows):
        seq = int(batch.attention_mask[i].sum())
        ids.append(batch.input_ids[i, :seq].cpu())
        P.append(int(batch.prompt_len[i]))
        n.append(int(batch.response_mask[i].sum()))
    return Rows(ids, P, n, [float(o) for o in batch.outcome.cpu()], batch.group_size, batch.response_mask.shape[1])


def response_logprobs64(model, rows: Rows, *, temperature: float = 1.0) -> list[torch.Tensor]:
    """Per row [n_i] float64 log pi(y_t | x, y_<t): the logits of the position before each response token
    (prime_spec 3.2: the standard shift by one), divided by `temperature`. Differentiable under grad mode."""
    out = []
    for ids, P, n in zip(rows.ids, rows.prompt_len, rows.n, strict=True):
        logits = model(ids[None]).logits[0].double() / temperature
        z = logits[P - 1:P - 1 + n]
        lse = z.max(-1, keepdim=True).values + (z - z.max(-1, keepdim=True).values).exp().sum(-1, keepdim=True).log()
        out.append((z - lse).gather(-1, ids[P:P + n, None])[:, 0])
    return out


def to_BR(per_row: list[torch.Tensor], R: int) -> torch.Tensor:
    out = torch.zeros(len(per_row), R, dtype=torch.float64)
    for i, x in enumerate(per_row):
        out[i, :x.numel()] = x.detach()
    return out


def prm_ce64(prm_lp: list[torch.Tensor], ref_lp: list[torch.Tensor], outcome: list[float], beta: float):
    """prime_spec 4.1: -mean_i [o_i log sig(R_i) + (1-o_i) log(1 - sig(R_i))], R_i = beta sum_t (lp_phi - lp_ref)."""
    terms = []
    for a, b, o in zip(prm_lp, ref_lp, outcome, strict=True):
        R_i = beta * (a - b.detach()).sum()
        # log sig(x) = -log(1 + e^-x), written stably for either sign
        log_sig = -torch.nn.functional.softplus(-R_i)
        log_one_minus_sig = -torch.nn.functional.softplus(R_i)
        terms.append(-(o * log_sig + (1.0 - o) * log_one_minus_sig))
    return torch.stack(terms).mean()


def grads_of(model) -> dict[str, torch.Tensor]:
    return {k: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for k, p in model.named_parameters()}


def clip64(grads: dict[str, torch.Tensor], max_norm: float) -> dict[str, torch.Tensor]:
    """Global-norm clipping (scale max_norm / (norm + 1e-6) when norm > max_norm, as torch clips)."""
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    if max_norm > 0 and norm > max_norm:
        return {k: g * (max_norm / (norm + 1e-6)) for k, g in grads.items()}
    return grads


def lr_at_step1(optim_cfg) -> float:
    """trainer/models_setup.py's schedule: linear warmup over warmup_steps, then constant. The first optimizer
    step runs at factor min(1, 1 / warmup) (constant 1 with no warmup: PRIME's schedule)."""
    w = optim_cfg.warmup_steps
    return optim_cfg.lr * (min(1.0, 1.0 / w) if w > 0 else 1.0)


def adamw_step1_64(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], optim_cfg) -> dict:
    """The first AdamW step in float64, by hand (Loshchilov & Hutter: decoupled decay, then Adam with bias
    correction): p <- p (1 - lr wd); m = (1-b1) g; v = (1-b2) g^2; p <- p - lr (m/(1-b1)) / (sqrt(v/(1-b2)) + eps)."""
    lr, wd = lr_at_step1(optim_cfg), optim_cfg.weight_decay
    b1, b2 = optim_cfg.betas
    out = {}
    for k, p in params.items():
        g = grads[k]
        m, v = (1 - b1) * g, (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1), v / (1 - b2)
        out[k] = p * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + ADAM_EPS)
    return out


def rloo_advantages64(rewards: list[torch.Tensor] | None, rows: Rows, *, reward_norm: str, whiten: bool,
                      gamma_process: float, gamma_outcome: float, process_coef: float, outcome_coef: float
                      ) -> list[torch.Tensor]:
    """prime_spec 3.3 + 7.1 + 7.3 + 7.4, the released PRIME code's form, as per-group python loops.

    rewards None: outcome-only RLOO (no process term)."""
    K, B = rows.K, rows.B
    n = rows.n
    proc = [torch.zeros(n[i], dtype=torch.float64) for i in range(B)]
    if rewards is not None:
        r = [x.detach().double().clone() for x in rewards]
        if reward_norm == "batch_norm":  # 3.3: one scalar for the whole batch
            biggest = 0.0
            for x in r:
                for t in range(len(x)):
                    biggest = max(biggest, abs(float(x[t:].sum())))
            r = [x / (biggest + BATCH_NORM_EPS) for x in r]
        for g0 in range(0, B, K):  # 7.3: m_i, B = sum m / (K-1), r * K/(K-1) - B on masked positions
            means = [float(r[i].mean()) for i in range(g0, g0 + K)]
            base = sum(means) / (K - 1)
            for i in range(g0, g0 + K):
                proc[i] = r[i] * (K / (K - 1)) - base
    outc = [torch.zeros(n[i], dtype=torch.float64) for i in range(B)]
    for g0 in range(0, B, K):  # 7.1: plain RLOO on the last valid token
        group = rows.outcome[g0:g0 + K]
        for k in range(K):
            others = [group[j] for j in range(K) if j != k]
            outc[g0 + k][n[g0 + k] - 1] = group[k] - sum(others) / (K - 1)

    def returns(x: torch.Tensor, gamma: float) -> torch.Tensor:
        out, carry = torch.zeros_like(x), 0.0
        for t in reversed(range(len(x))):
            carry = float(x[t]) + gamma * carry
            out[t] = carry
        return out

    ret = [process_coef * returns(proc[i], gamma_process) + outcome_coef * returns(outc[i], gamma_outcome)
           for i in range(B)]
    if not whiten:
        return ret
    flat = torch.cat(ret)  # 7.4: masked mean and Bessel-corrected variance over all valid tokens
    mu = float(flat.sum()) / flat.numel()
    var = float(((flat - mu) ** 2).sum()) / (flat.numel() - 1)
    return [(x - mu) / math.sqrt(var + WHITEN_EPS) for x in ret]


def ppo_loss64(logp: list[torch.Tensor], old: list[torch.Tensor], adv: list[torch.Tensor], *, clip: float,
               agg: str) -> torch.Tensor:
    """prime_spec 8: -min(rho A, clip(rho, 1-eps, 1+eps) A) per token; seq-mean-token-mean or token-mean."""
    per_row = []
    for lp, lo, a in zip(logp, old, adv, strict=True):
        rho = torch.exp(lp - lo.detach())
        per_row.append(torch.maximum(-a * rho, -a * rho.clamp(1 - clip, 1 + clip)))
    per_row = [t for t in per_row if t.numel()]
    if agg == "token-mean":
        return torch.cat(per_row).sum() / sum(t.numel() for t in per_row)
    return torch.stack([t.mean() for t in per_row]).mean()


def _optimizer_step64(want: dict, name: str, model, loss: torch.Tensor, optim_cfg, *,
                      loss_key: str | None = None) -> None:
    """Backward `loss`, clip, one float64 AdamW step: fills want[<loss_key or name_loss>], want[name_grads],
    want[name_params_before], want[name_params] and want[name_lr]."""
    loss.backward()
    want[loss_key or f"{name}_loss"] = loss.item()
    g = clip64(grads_of(model), optim_cfg.grad_clip)
    want[f"{name}_grads"] = g
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    want[f"{name}_params_before"] = start
    want[f"{name}_params"] = adamw_step1_64(start, g, optim_cfg)
    want[f"{name}_lr"] = lr_at_step1(optim_cfg)


def reference_step(ckpt, batch, config, *, prm_state: dict[str, torch.Tensor] | None,
                   updated_prm_state: dict[str, torch.Tensor] | None = None) -> dict:
    """The float64 step. prm_state: the PRM's (perturbed) weights before the step. With prm.update="before"
    the rewards are those of the updated PRM: `updated_prm_state` gives its weights (the trainer's, whose
    update `compare` checks separately against this function's float64 update), else this function's own."""
    rows = rows_of(batch)
    T = config.rollout.temperature
    p = config.prime
    if config.ppo.mini_batch_size < rows.B or config.prm.mini_batch_size < rows.B or config.ppo.epochs != 1:
        raise ValueError("the reference models one PRM and one policy mini-batch over the whole batch")
    want: dict = {}
    policy = hf64(ckpt)
    with torch.no_grad():
        old = response_logprobs64(policy, rows, temperature=T)  # 10.2 step 2.3: pi_old at the rollout temperature
    rewards = None
    if p.mode == "prime":
        if p.ref_type != "freeze" or p.granularity != "token" or config.prm.update not in ("after", "before"):
            raise ValueError("the reference models ref_type=freeze, granularity=token, update after/before")
        ref = hf64(ckpt)
        prm = hf64(ckpt, prm_state)
        with torch.no_grad():
            ref_lp = response_logprobs64(ref, rows)  # 3.2: raw logits, no temperature
        prm_lp = response_logprobs64(prm, rows)
        _optimizer_step64(want, "prm", prm, prm_ce64(prm_lp, ref_lp, rows.outcome, p.beta), config.prm.optim)
        if config.prm.update == "after":  # 4.3: rewards from the forward of the update, pre-step PRM
            scored = prm_lp
        else:  # `before`: a second, no-grad forward with the updated PRM
            upd = hf64(ckpt, updated_prm_state if updated_prm_state is not None else want["prm_params"])
            with torch.no_grad():
                scored = response_logprobs64(upd, rows)
        rewards = [p.beta * (a.detach() - b) for a, b in zip(scored, ref_lp, strict=True)]  # 3.1
        want["token_rewards"] = to_BR(rewards, rows.R)
    adv = rloo_advantages64(rewards, rows, reward_norm=p.reward_norm if rewards is not None else "none",
                            whiten=p.whiten, gamma_process=p.gamma_process, gamma_outcome=p.gamma_outcome,
                            process_coef=p.process_coef if rewards is not None else 0.0,
                            outcome_coef=p.outcome_coef)
    want["advantages"] = to_BR(adv, rows.R)
    logp = response_logprobs64(policy, rows, temperature=T)
    _optimizer_step64(want, "policy", policy, ppo_loss64(logp, old, adv, clip=config.ppo.clip, agg=config.ppo.agg),
                      config.ppo.optim, loss_key="pg_loss")
    want["mask"] = to_BR([torch.ones(n) for n in rows.n], rows.R) > 0
    return want


# ---------------------------------------------------------------------------------------------- compare
def param_errors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
                 lr: float) -> tuple[float, float, float]:
    """(max |got - want|, max err/allowed, fraction of elements whose update is pinned down, i.e. allowed
    < lr/2) over all tensors, with the per-element allowance derived in the header."""
    worst_abs, worst_ratio, pinned, total = 0.0, 0.0, 0, 0
    for k, w in want.items():
        gk = grads[k]
        allowed = adam_first_step_allowed(gk, w, lr=lr, grad_rel=GRAD_REL, param_ulps=PARAM_ULPS, eps=ADAM_EPS)
        err = (got[k].double() - w).abs()
        worst_abs = max(worst_abs, float(err.max()))
        worst_ratio = max(worst_ratio, float((err / allowed).max()))
        pinned += int((allowed < lr / 2).sum())
        total += allowed.numel()
    return worst_abs, worst_ratio, pinned / max(total, 1)


def errors(got: dict, want: dict) -> dict[str, tuple[float, float]]:
    """Quantity -> (error, allowed). Tensor errors: max over valid positions (padding must be 0 in both)."""
    out: dict[str, tuple[float, float]] = {}
    mask = want["mask"]
    if "token_rewards" in want:
        r_got, r_want = got["token_rewards"].double(), want["token_rewards"]
        scale = float(r_want.abs().max())
        err = float((r_got - r_want).abs().max())  # padding: both 0
        out["token_rewards"] = (err / max(scale, 1e-12), REWARD_REL)
        out["prm_loss"] = (abs(got["prm_loss"] - want["prm_loss"]), PRM_LOSS_ATOL)
        _, ratio, _ = param_errors(got["prm_params"], want["prm_params"], want["prm_grads"], want["prm_lr"])
        out["prm_params"] = (ratio, 1.0)
    a_got = torch.where(mask, got["advantages"].double(), 0.0)
    out["advantages"] = (float((a_got - want["advantages"]).abs().max()), ADV_ATOL)
    out["pg_loss"] = (abs(got["pg_loss"] - want["pg_loss"]), PG_LOSS_ATOL)
    _, ratio, _ = param_errors(got["policy_params"], want["policy_params"], want["policy_grads"], want["policy_lr"])
    out["policy_params"] = (ratio, 1.0)
    return out


def compare(got: dict, want: dict) -> list[str]:
    """The quantities that disagree (error > allowed, or not finite), each with its numbers."""
    failed = []
    for name, (err, allowed) in errors(got, want).items():
        if not (err <= allowed):
            failed.append(f"{name}: error {err:.3e} > allowed {allowed:.1e}")
    for key in ("token_rewards", "prm_loss", "prm_params"):
        if (key in want) != (key in got):
            failed.append(f"{key}: present in {'want' if key in want else 'got'} only")
    return failed


# ------------------------------------------------------------------------------------ accuracy filter
def kept_groups_reference(scores: list[Fraction], K: int, low: Fraction, high: Fraction) -> list[bool]:
    """prime_spec 6.1 with exact rational arithmetic: keep a prompt iff low <= mean of its K scores <= high
    (both bounds inclusive)."""
    return [low <= sum(scores[i:i + K]) / K <= high for i in range(0, len(scores), K)]
