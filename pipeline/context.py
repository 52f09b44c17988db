"""What a stage gets besides its config and inputs: where to write, how to log, which machine.

Kept out of the config so the fingerprint does not depend on the machine a stage runs on.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.tracking import Tracker


@dataclass
class StageContext:
    stage: str                 # stage name
    out_dir: Path              # write everything here (the runner renames it into place on success)
    run_dir: Path              # runs/<name>/: shared caches (token shards, rollouts) live here
    seed: int                  # the recipe's seed
    tracker: Tracker           # log lines, metrics.jsonl, W&B
    num_processes: int = 1     # world size the stage was launched with
    extra: dict = field(default_factory=dict)

    @property
    def device(self) -> str:
        import torch  # lazy: pipeline/ stays importable without torch, so plan and status answer at once
        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def is_main(self) -> bool:
        return int(os.environ.get("RANK", "0")) == 0

    def log(self, message: str) -> None:
        self.tracker.info(message)


def seed_everything(seed: int) -> None:
    import numpy as np  # lazy, as above
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
