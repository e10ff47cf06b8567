"""`primeflow plan`'s activation formula (models/memory_plan.py) against measurement on real small Megatron
models, on CPU under torchrun over gloo (tests/trainer/plan_measure.py measures; test_plan.py asserts the
same comparison within 15 %):

    .venv/bin/python -m bench.plan_validation      # writes bench/results/cpu_plan_validation.json

Per case (shape, TP, dtype, recompute, SP): parameter elements, saved-tensor bytes of one micro-batch,
the allocator peak of its forward + backward and of a no-grad forward, predicted vs measured.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from primeflow.models import ModelConfig
from primeflow.models.memory import ActivationMemory
from primeflow.models.memory_plan import MicroBatch, activation_bytes, param_count, rank_shape
from primeflow.trainer.planning.shapes import tiny_model_config

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "trainer" / "plan_measure.py"
_LLAMA = {"architecture": "llama", "hidden_size": 384, "num_attention_heads": 6, "num_key_value_heads": 2,
          "intermediate_size": 1024, "num_hidden_layers": 3, "vocab_size": 320}
_MHA = {"hidden_size": 512, "num_attention_heads": 8, "num_key_value_heads": 8, "intermediate_size": 1408,
        "vocab_size": 512}
# Three shapes (qwen2 GQA 4/2 heads with an odd vocabulary, llama GQA 6/2 x 3 layers, MHA 8/8), TP 1 and 2,
# fp32 and bf16, recompute none / full uniform (1 and 2 layers per unit) / full block / selective, SP on/off.
CASES = [
    {"name": "qwen_tp1_fp32_none", "tp": 1, "dtype": "float32", "memory": {}, "hf": {}, "rows": 4, "seq_len": 64},
    {"name": "qwen_tp1_fp32_full", "tp": 1, "dtype": "float32", "memory": {"recompute": "full"}, "hf": {},
     "rows": 4, "seq_len": 64},
    {"name": "qwen_tp2_fp32_sp", "tp": 2, "dtype": "float32", "memory": {"sequence_parallel": True}, "hf": {},
     "rows": 4, "seq_len": 64},
    {"name": "llama_tp2_bf16_none", "tp": 2, "dtype": "bfloat16", "memory": {}, "hf": _LLAMA, "rows": 3,
     "seq_len": 96},
    {"name": "llama_tp2_bf16_sp_full", "tp": 2, "dtype": "bfloat16",
     "memory": {"sequence_parallel": True, "recompute": "full"}, "hf": _LLAMA, "rows": 3, "seq_len": 96},
    {"name": "mha_tp1_fp32_selective", "tp": 1, "dtype": "float32",
     "memory": {"recompute": "selective", "recompute_modules": ["core_attn", "mlp"]}, "hf": _MHA, "rows": 2,
     "seq_len": 128},
    {"name": "mha_tp2_fp32_selective", "tp": 2, "dtype": "float32",
     "memory": {"recompute": "selective", "recompute_modules": ["core_attn", "mlp"]}, "hf": _MHA, "rows": 2,
     "seq_len": 128},
    {"name": "mha_tp2_fp32_sp_block", "tp": 2, "dtype": "float32",
     "memory": {"recompute": "full", "recompute_method": "block", "sequence_parallel": True}, "hf": _MHA,
     "rows": 2, "seq_len": 128},
    {"name": "qwen4l_tp1_bf16_full2", "tp": 1, "dtype": "bfloat16",
     "memory": {"recompute": "full", "recompute_num_layers": 2}, "hf": {"num_hidden_layers": 4, "vocab_size": 320},
     "rows": 4, "seq_len": 48},
]
_DROP_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TRITON_INTERPRET")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(cases: list[dict], workdir: Path, nproc: int = 2, timeout_s: int = 600) -> list[dict]:
    """Run the torchrun worker (`nproc` processes over gloo) on `cases`; rank 0's records."""
    cases_file, out = workdir / "cases.json", workdir / "measured.json"
    cases_file.write_text(json.dumps(cases))
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(WORKER), "--cases", str(cases_file), "--out", str(out),
           "--workdir", str(workdir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"plan_measure.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(out.read_text())


def predicted(case: dict) -> dict[str, int]:
    cfg: ModelConfig = tiny_model_config(case["hf"])
    memory = ActivationMemory(**{k: tuple(v) if isinstance(v, list) else v for k, v in case["memory"].items()})
    shape = rank_shape(cfg, tp=case["tp"])
    act = activation_bytes(shape, MicroBatch(case["rows"] * case["seq_len"], case["rows"], case["seq_len"]),
                           memory, dtype=case["dtype"], attention="sdpa", device="cpu")
    return {"params": param_count(shape).total, "saved_bytes": act.saved, "train_peak_bytes": act.train_peak,
            "forward_peak_bytes": act.forward_peak}


def compare(measured: list[dict]) -> list[dict]:
    rows = []
    for record in measured:
        want = predicted(record["case"])
        rows.append({"case": record["case"]["name"], "tp": record["case"]["tp"], "dtype": record["case"]["dtype"],
                     "memory": record["case"]["memory"],
                     **{key: {"predicted": want[key], "measured": record[key],
                              "error": (want[key] - record[key]) / record[key]} for key in want}})
    return rows


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        rows = compare(measure(CASES, Path(tmp)))
    out = ROOT / "bench" / "results" / "cpu_plan_validation.json"
    out.write_text(json.dumps({"what": "primeflow plan formula vs measured (CPU, torchrun x2 over gloo)",
                               "command": "python -m bench.plan_validation", "cases": rows}, indent=1))
    for row in rows:
        print(f"{row['case']:<26}" + "".join(f" {k} {row[k]['error']:+.1%}" for k in
                                             ("params", "saved_bytes", "train_peak_bytes", "forward_peak_bytes")))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
