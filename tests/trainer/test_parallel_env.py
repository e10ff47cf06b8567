"""A single-process run (no torchrun: no RANK) ignores a MASTER_ADDR / MASTER_PORT / WORLD_SIZE / LOCAL_RANK
left in the shell (an earlier torchrun's exports, another job's port): its world of one process gets 127.0.0.1
and a free port. The issue: `os.environ.setdefault("MASTER_PORT", ...)` kept a stale port, so the run failed on
a port in use."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

_PROBE = """
import json, os
from primeflow.trainer import parallel
layout = parallel.init_distributed()
parallel.barrier()
print(json.dumps({k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "LOCAL_RANK", "RANK")}
                 | {"world": layout.world_size}))
parallel.shutdown()
"""


def test_a_stale_master_port_in_the_shell_is_not_used_without_torchrun():
    with socket.socket() as busy:  # the stale port: something else listens on it
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # deliberately keeps MASTER_*/WORLD_SIZE/LOCAL_RANK: the stale exports under test (RANK is unset)
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "TRITON_INTERPRET")}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="4", LOCAL_RANK="3",
                   OMP_NUM_THREADS="1")
        done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["MASTER_ADDR"] == "127.0.0.1" and seen["MASTER_PORT"] != str(port), seen
    assert (seen["WORLD_SIZE"], seen["LOCAL_RANK"], seen["RANK"], seen["world"]) == ("1", "0", "0", 1), seen
