"""Two processes under torchrun, one real vLLM engine per rank (external_launcher), a Megatron policy in
several trainer layouts synced into it (mp_rollout.py): trainer DP2 / TP2 / PP2 -> vLLM TP1 (two replicas)
and trainer TP2 / DP2 -> vLLM TP2 (one replica over both ranks). One torchrun job per vLLM TP size, shared
by the tests below."""

from __future__ import annotations

import pytest
import tolerances

pytestmark = [pytest.mark.vllm, pytest.mark.multiproc]

FP32_MEAN_TOL = 1e-3                                    # the fp32 bar (measured ~1.5e-6)
FP32_MAX_TOL = tolerances.VLLM_FP32_LOGPROB_ATOL        # worst token (measured ~8e-6)
BEFORE_SYNC_MIN_MEAN = 100 * FP32_MEAN_TOL              # perturbed trainer vs stale engine (measured ~1.3-2)
LAYOUTS = {1: ["dp2", "tp2", "pp2"], 2: ["tp2", "dp2"]}
LAST_CKPT = {1: "perturbed_3", 2: "perturbed_2"}


@pytest.mark.parametrize("vllm_tp", [1, 2])
def test_replicas_follow_the_world_layout(torchrun_run, vllm_tp):
    ranks = torchrun_run(vllm_tp)["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert [r["replicas"] for r in ranks] == [2 // vllm_tp] * 2
    assert [r["replica"] for r in ranks] == [0, 1] if vllm_tp == 1 else [0, 0]
    assert list(ranks[0]["layouts"]) == LAYOUTS[vllm_tp]


@pytest.mark.parametrize("vllm_tp", [1, 2])
def test_streamed_tensors_equal_the_checkpoint(torchrun_run, vllm_tp):
    """Whatever the trainer layout, the sync stream yields every HF tensor, bitwise equal to the checkpoint
    the trainer loaded (TP shards gathered, q/k/v and gate/up split, vocab padding trimmed, PP broadcast)."""
    for r in torchrun_run(vllm_tp)["ranks"]:
        for name, lay in r["layouts"].items():
            s = lay["stream"]
            assert s["names"] == s["expected"], f"rank {r['rank']} {name}: {set(s['names']) ^ set(s['expected'])}"
            assert s["max_abs_diff"] == 0.0, (r["rank"], name, s["max_abs_diff"])
            assert s["buckets"] >= 10, s  # 0.25 MiB buckets: many collective rounds
            assert lay["refit"]["tensors"] == 27 and lay["refit"]["buckets"] == s["buckets"]


@pytest.mark.parametrize("vllm_tp", [1, 2])
def test_sync_closes_the_gap_in_every_layout(torchrun_run, vllm_tp):
    for r in torchrun_run(vllm_tp)["ranks"]:
        for name, lay in r["layouts"].items():
            if lay["pp"] > 1 and r["rank"] == 0:
                assert lay["before"] is None and lay["after"] is None  # first stage: no log-probs
                continue
            before, after = lay["before"], lay["after"]
            print(f"vLLM TP{vllm_tp} rank {r['rank']} {name}: before {before['mean']:.3f}, after "
                  f"{after['mean']:.2e} / max {after['max']:.2e}")
            assert before["mean"] >= BEFORE_SYNC_MIN_MEAN, (r["rank"], name, before)
            assert after["mean"] <= FP32_MEAN_TOL and after["max"] <= FP32_MAX_TOL, (r["rank"], name, after)


@pytest.mark.parametrize("vllm_tp", [1, 2])
def test_ranks_agree_or_generate_their_own_prompts(torchrun_run, vllm_tp, checks):
    r0, r1 = torchrun_run(vllm_tp)["ranks"]
    for name in LAYOUTS[vllm_tp]:
        a, b = r0["layouts"][name], r1["layouts"][name]
        checks.groups_contiguous_and_complete(a["after_batch"], a["prompts"], 2)
        checks.groups_contiguous_and_complete(b["after_batch"], b["prompts"], 2)
        if a["own_prompts"]:
            # Trainer DP=2 over two vLLM replicas: each rank sampled its own prompts; the DP-reduced mismatch
            # is the same global figure on both ranks.
            assert a["prompts"] != b["prompts"] and a["after_batch"]["prompt_ids"] != b["after_batch"]["prompt_ids"]
            assert a["after"] == {**b["after"], "tokens": a["after"]["tokens"]}
        else:
            # Same prompts and seeds on both ranks: two replicas with the same synced weights (or one TP=2
            # replica) produce the same samples.
            assert a["after_batch"]["response_ids"] == b["after_batch"]["response_ids"], name


@pytest.mark.parametrize("vllm_tp", [1, 2])
def test_greedy_after_sync_equals_transformers(torchrun_run, vllm_tp, ckpts, checks):
    ranks = torchrun_run(vllm_tp)["ranks"]
    prompts = ranks[0]["greedy"]["prompt_ids"]  # all four chat prompts, n=1, on both ranks
    eos = {256, 258}  # make_tiny_checkpoint: <|endoftext|>, <|im_end|> (tokenizer + generation_config)
    want = checks.hf_greedy(ckpts[LAST_CKPT[vllm_tp]], prompts, 16, eos)
    for r in ranks:
        assert r["greedy"]["response_ids"] == want, r["rank"]


def test_vllm_tp2_refuses_divergent_prompts(torchrun_run):
    for r in torchrun_run(2)["ranks"]:
        assert r["divergent_prompts"] and "must pass the same requests" in r["divergent_prompts"]
