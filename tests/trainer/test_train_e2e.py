"""End-to-end PRIME runs through the real CLI (real vLLM on CPU, real Megatron over gloo), each in its own
process(es):

- one process (TP=1): metrics.jsonl carries the contract's keys, TensorBoard events, curves.png, checkpoints,
  the PRM loss starts at ln 2;
- SIGKILL during the PRM update and during the policy update, then `--resume auto`: the metrics of every
  step equal the uninterrupted run's exactly (deterministic CPU mode);
- torchrun with 2 processes: DP=2, TP=2 (trainer and vLLM TP=2), and PP=2 (with a resume from its
  pipeline-sharded checkpoint);
- "2 nodes": two torchrun launches on localhost with --nnodes 2, with the sharded optimizer and a resume after
  step 1, equal the 1-node DP=2 run.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tolerances
from child_env import fresh_world_env

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

TIMEOUT_S = 900
KILL_AT = Path(__file__).resolve().parent / "kill_at.py"
# The runs here start from the 2-digit addition preset (24-token answers, the frozen reference and so the
# fused PRM + reference head), not the embedded default's 64-token chain task: the same machinery, faster.
PRESET = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu_addition.yaml"
# Metrics that measure wall time or process memory are not expected to repeat; everything else must, bit for bit.
NONDETERMINISTIC = ("time/", "tokens_per_s", "refit_gb_per_s", "memory/")
CONTRACT_KEYS = ("step", "outcome_acc", "filter_kept_frac", "prm_loss", "prm_acc", "pg_loss", "pg_clipfrac",
                 "logprob_mismatch", "response_len", "tokens_per_s", "time/rollout", "time/verify", "time/old_logp",
                 "time/prm", "time/advantage", "time/policy", "time/refit")


def _env(**extra) -> dict[str, str]:
    return fresh_world_env(OMP_NUM_THREADS="1", **extra)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory) -> Path:
    """A tiny model SFT'd briefly on the arithmetic task (through `primeflow sft`), so rollouts mix right
    and wrong answers and the accuracy filter has groups to keep."""
    from primeflow.models import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("e2e_model")
    base = make_tiny_checkpoint(root / "base", seed=0)
    out = root / "sft"
    proc = subprocess.run([sys.executable, "-m", "primeflow", "sft", "--model", str(base), "--out", str(out),
                           "--steps", "350", "--batch-size", "64"], capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _args(model: Path, run_dir: Path, steps: int, *extra: str) -> list[str]:
    sets = [f"model.path={model}", f"run.dir={run_dir}", f"train.steps={steps}", "train.checkpoint_every=1",
            "train.keep_last=5", "data.prompts_per_step=4", "filter.max_fetches=20", "ppo.mini_batch_size=8",
            "prm.mini_batch_size=8", "ppo.optim.lr=1e-5", "prm.optim.lr=1e-5", "logging.progress=false", *extra]
    return ["train", "--config", str(PRESET), *[a for s in sets for a in ("--set", s)]]


def _train(model: Path, run_dir: Path, steps: int, *extra: str, fault: str | None = None, nproc: int = 1,
           nnodes: int = 1) -> subprocess.CompletedProcess:
    """`primeflow train` (or, with fault="<stage>@<step>", kill_at.py: SIGKILLed entering that stage)."""
    env = _env()
    args = _args(model, run_dir, steps, *extra)
    entry = ["-m", "primeflow"] if fault is None else [str(KILL_AT), fault]
    if fault is not None:
        args = args[1:]  # kill_at.py runs the train command itself
    if nproc == 1 and nnodes == 1:
        return subprocess.run([sys.executable, *entry, *args], capture_output=True, text=True,
                              timeout=TIMEOUT_S, env=env)
    port = _free_port()
    launches = []
    for node in range(nnodes):
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--node-rank={node}",
               f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1", f"--master-port={port}",
               *entry, *args]
        launches.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outs = [p.communicate(timeout=TIMEOUT_S) for p in launches]
    rc = max(abs(p.returncode) for p in launches)
    return subprocess.CompletedProcess(launches[0].args, rc, "".join(o for o, _ in outs), "".join(e for _, e in outs))


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _deterministic(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(NONDETERMINISTIC)} for r in rows]


def _assert_trainer_logprobs_match_vllm(rows: list[dict]) -> None:
    """The trainer's old log-probs vs vLLM's, token by token: both fp32 forwards of the same weights, so the
    worst token is within tolerances.VLLM_FP32_LOGPROB_ATOL (a wrong weight sync, RoPE, temperature or
    gathered SP/PP log-prob is 1e-2 or more)."""
    worst = [r["logprob_mismatch_max"] for r in rows]
    print(f"logprob_mismatch_max per step: {worst}")
    assert max(worst) < tolerances.VLLM_FP32_LOGPROB_ATOL, worst


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-4000:] + "\n---\n" + proc.stderr[-6000:]


@pytest.fixture(scope="module")
def reference_run(sft_model, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run_ref")
    _ok(_train(sft_model, run_dir, 3))
    return run_dir


def test_single_process_run_writes_the_contract(reference_run):
    rows = _metrics(reference_run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in CONTRACT_KEYS:
        assert all(key in r and math.isfinite(r[key]) for r in rows), key
    # PRM == ref at step 0: the first PRM mini-batch's CE is exactly ln 2; later mini-batches of step 1 moved
    assert abs(rows[0]["prm_loss"] - math.log(2)) < 0.01
    assert all(0 < r["filter_kept_frac"] <= 1 and 0 <= r["outcome_acc"] <= 1 for r in rows)
    _assert_trainer_logprobs_match_vllm(rows)
    # A lifetime peak: never decreases; the process holds vLLM plus three models, far from 0 and from 64 GB.
    rss = [r["memory/peak_rss_gb"] for r in rows]
    assert rss == sorted(rss) and 0.1 < rss[0] < 64, rss
    assert (reference_run / "config.yaml").is_file() and (reference_run / "curves.png").stat().st_size > 1000
    assert list(reference_run.glob("events.out.tfevents.*")) or list(reference_run.glob("**/events.out.tfevents.*"))
    assert sorted(p.name for p in (reference_run / "checkpoints").iterdir() if p.name.startswith("step_")) == [
        "step_1", "step_2", "step_3"]


def test_resuming_a_finished_run_exits_0_and_changes_nothing(sft_model, reference_run, tmp_path):
    import shutil

    run_dir = tmp_path / "finished"
    shutil.copytree(reference_run, run_dir)
    proc = _train(sft_model, run_dir, 3, "run.resume=auto")
    _ok(proc)
    assert "already complete (step 3 of train.steps=3)" in proc.stdout + proc.stderr
    assert _metrics(run_dir) == _metrics(reference_run)


@pytest.mark.parametrize("fault", ["prm@2", "policy@3"])
def test_sigkill_mid_step_then_resume_reproduces_the_uninterrupted_run(sft_model, reference_run, tmp_path, fault):
    run_dir = tmp_path / "run"
    killed = _train(sft_model, run_dir, 3, fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    done_before = int(fault.split("@")[1]) - 1
    assert [r["step"] for r in _metrics(run_dir)] == list(range(1, done_before + 1))
    _ok(_train(sft_model, run_dir, 3, "run.resume=auto"))
    assert _deterministic(_metrics(run_dir)) == _deterministic(_metrics(reference_run))


@pytest.mark.multiproc
def test_dp2_under_torchrun_and_two_nodes_equal_one_node(sft_model, tmp_path):
    """DP=2 as 2 processes on one node and as 1 process on each of 2 nodes, both with megatron-core's
    distributed optimizer: the same arithmetic, so the metrics must be equal exactly, although the 2-node
    run stops after step 1 and resumes from that checkpoint (optimizer shards gathered on DP rank 0, scattered
    back on load). (Plain vs distributed optimizer differ by the grad norm's summation order: bounded in
    tests/trainer/test_data_parallel.py.)"""
    one_node, two_nodes = tmp_path / "dp2", tmp_path / "2node"
    _ok(_train(sft_model, one_node, 2, "parallel.distributed_optimizer=true", nproc=2))
    _ok(_train(sft_model, two_nodes, 1, "parallel.distributed_optimizer=true", nproc=1, nnodes=2))
    _ok(_train(sft_model, two_nodes, 2, "parallel.distributed_optimizer=true", "run.resume=auto", nproc=1, nnodes=2))
    a, b = _metrics(one_node), _metrics(two_nodes)
    assert [r["step"] for r in a] == [1, 2]
    assert _deterministic(a) == _deterministic(b)
    # The DP=2 run's step-1 checkpoint resumes in one process (DP=1): dist_checkpointing reshards the weights
    # and the distributed optimizer's state; the per-rank RNG streams are not restored at another layout.
    import shutil

    one_rank = tmp_path / "dp1"
    shutil.copytree(one_node, one_rank)
    shutil.rmtree(one_rank / "checkpoints" / "step_2")
    proc = _train(sft_model, one_rank, 2, "parallel.distributed_optimizer=true", "run.resume=auto")
    _ok(proc)
    resumed = "(step 1; resharded: saved with layout tp=1 pp=1 dp=2 (world 2), this run has tp=1 pp=1 dp=1 (world 1))"
    assert resumed in proc.stdout + proc.stderr, proc.stdout[-2000:]
    rows = _metrics(one_rank)
    assert [r["step"] for r in rows] == [1, 2] and rows[0] == a[0]
    assert all(math.isfinite(rows[1][k]) for k in CONTRACT_KEYS)


@pytest.mark.multiproc
@pytest.mark.parametrize("memory", [(), ("parallel.sequence_parallel=true", "parallel.recompute=full")],
                         ids=["plain", "sequence_parallel+recompute"])
def test_tp2_trainer_and_vllm_under_torchrun(sft_model, tmp_path, memory):
    """TP=2 training with vLLM at TP=2; with sequence parallelism and full recompute too (the trainer's
    log-probs still agree with vLLM's, so packing pads for SP and the sharded tokens are gathered right)."""
    run_dir = tmp_path / "tp2"
    _ok(_train(sft_model, run_dir, 2, "parallel.tp=2", "rollout.tp=2", *memory, nproc=2))
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    _assert_trainer_logprobs_match_vllm(rows)


@pytest.mark.multiproc
def test_pp2_trains_and_resumes_from_its_pipeline_checkpoint(sft_model, tmp_path):
    """PP=2 (one layer per stage, Megatron's pipeline schedule for every training pass): the contract holds,
    the trainer's old log-probs agree with vLLM's (so the PP weight sync and the broadcast log-probs are
    right), both stages write their own shards, and resuming from the step-2 checkpoint reproduces step 3."""
    import shutil

    full, resumed = tmp_path / "pp2", tmp_path / "pp2_resumed"
    _ok(_train(sft_model, full, 3, "parallel.pp=2", nproc=2))
    rows = _metrics(full)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in CONTRACT_KEYS:
        assert all(key in r and math.isfinite(r[key]) for r in rows), key
    _assert_trainer_logprobs_match_vllm(rows)
    assert abs(rows[0]["prm_loss"] - math.log(2)) < 0.01  # a first-stage zero would not be ln 2
    assert all(r["policy_grad_norm"] > 0 for r in rows)
    for m in ("policy", "prm"):  # each stage writes its own slices (dist_checkpointing files __<rank>_<n>.distcp)
        files = sorted(p.name for p in (full / "checkpoints" / "step_2" / "dist" / m).glob("__*.distcp"))
        assert {name.split("_")[2] for name in files} == {"0", "1"}, files
    # a copy of the run without its last checkpoint: --resume auto continues from step 2's PP shards
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_3")
    _ok(_train(sft_model, resumed, 3, "parallel.pp=2", "run.resume=auto", nproc=2))
    assert _deterministic(_metrics(resumed)) == _deterministic(rows)


def test_bad_config_and_missing_model_fail_clearly_and_touch_nothing(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "primeflow", "train", "--set", f"run.dir={run_dir}", "--set",
                           "prm.update=sometimes"], capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode != 0 and "prm.update: 'sometimes' is not allowed" in proc.stderr
    assert not run_dir.exists()
    proc = subprocess.run([sys.executable, "-m", "primeflow", "train", "--set", f"run.dir={run_dir}", "--set",
                           f"model.path={tmp_path / 'nope'}"], capture_output=True, text=True, timeout=300,
                          env=_env())
    assert proc.returncode != 0 and "is not an HF checkpoint directory" in proc.stderr
    # a bad --resume is one line, exit 2, before any model is built (no SFT warm-start started)
    proc = subprocess.run([sys.executable, "-m", "primeflow", "train", "--set", f"run.dir={run_dir}", "--resume",
                           "banana"], capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("primeflow train: resume='banana': expected 'auto'")
    assert not (run_dir / "sft_model").exists()


def test_malformed_data_and_missing_checkpoint_fail_naming_them(sft_model, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"problem": "1+1=", "answer": "2"}\n{"problem": "2+2=", "answer": \n')
    run_dir = tmp_path / "run"
    bad_data = _args(sft_model, run_dir, 1, f"data.train_files=[{data}]")
    proc = subprocess.run([sys.executable, "-m", "primeflow", *bad_data],
                          capture_output=True, text=True, timeout=300, env=_env())
    # a user error like a bad config: one line naming file and line, exit 2, no traceback
    assert proc.returncode == 2 and f"{data}:2:" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("primeflow train:")] == [
        next(line for line in proc.stderr.splitlines() if f"{data}:2:" in line)]
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()
    proc = subprocess.run([sys.executable, "-m", "primeflow", *_args(sft_model, run_dir, 1, "run.resume=7")],
                          capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode != 0 and "step_7" in proc.stderr, proc.stderr[-2000:]


def test_fresh_start_in_a_used_run_dir_replaces_the_old_runs_records(sft_model, tmp_path):
    """resume=none (or no checkpoint yet) in a directory holding an older run: the new run's metrics and
    checkpoints replace the old ones instead of failing on, or mixing with, them."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 5, "outcome_acc": 0.9}) + "\n")
    _ok(_train(sft_model, run_dir, 1, "run.resume=none"))
    assert [r["step"] for r in _metrics(run_dir)] == [1]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step_")) == ["step_1"]
