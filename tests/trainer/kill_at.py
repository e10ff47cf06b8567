"""`python kill_at.py STAGE@STEP ARGS...` runs `primeflow train ARGS...` and SIGKILLs the process as the loop
enters STAGE ("prm" or "policy") of STEP: no cleanup, no flush, a real crash (test_train_e2e.py resumes it).
The hook is passed into the trainer here; production code reads no fault setting."""

from __future__ import annotations

import os
import signal
import sys

from primeflow.trainer.stage_hooks import StageHook
from primeflow.trainer.train import main


def kill_at(spec: str) -> StageHook:
    stage, step = spec.split("@")

    def hook(at_stage: str, at_step: int) -> None:
        if at_stage == stage and at_step == int(step):
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[2:], on_stage=kill_at(sys.argv[1])))
