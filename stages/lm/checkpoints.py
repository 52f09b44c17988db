"""Resumable training state, one mechanism for every training loop (pretrain, sft, dpo, rm, rl).

    ckpt = Checkpoints(ctx.out_dir / "checkpoints", accelerator, every=cfg.checkpoint_every)
    saved = ckpt.loop_state()          # the last checkpoint's loop state ({} when none); readable before prepare
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    start = ckpt.resume(ctx)           # load_state; the number of steps already done (0 when none)
    for step in range(start + 1, total + 1):
        ...
        ckpt.save_if_due(step, total, ctx, {"tokens": tokens, ...})
    ckpt.finish(keep=cfg.keep_checkpoints)

A checkpoint is accelerate's save_state (every prepared model and optimizer, registered schedulers, and
each rank's python/numpy/torch RNG states) plus what the loop itself must carry on: each rank's
`loop_state_<rank>.pt` (data cursor, counters, the pre-training eval, ...) and position.json (the step,
the training seconds so far). It is written to step_N.tmp and renamed, then older ones are removed, so
a kill -9 at any moment leaves the previous checkpoint whole. The runner keeps `<stage>.tmp/` across a
kill when the fingerprint is unchanged, which is where these live.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch


class Checkpoints:
    def __init__(self, root: Path, accelerator, every: int):
        self.root, self.accelerator, self.every = Path(root), accelerator, every
        self._state: dict | None = None

    def latest(self) -> Path | None:
        done = sorted(p for p in self.root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
        return done[-1] if done else None

    def loop_state(self) -> dict:
        """This rank's loop state in the last checkpoint, {} when there is none."""
        if self._state is None:
            latest = self.latest()
            path = latest / f"loop_state_{self.accelerator.process_index}.pt" if latest else None
            # our own pickles (python RNG tuples, deques): not a weights-only load
            self._state = torch.load(path, weights_only=False) if path and path.is_file() else {}
        return self._state

    def resume(self, ctx) -> int:
        """Load the last checkpoint into the prepared objects; returns the steps it had done (0: none).

        The tracker's clock restarts here (setup is not training time) or continues the killed run's."""
        latest = self.latest()
        if latest is None:
            ctx.tracker.start = time.time()
            return 0
        self.accelerator.load_state(str(latest))
        position = json.loads((latest / "position.json").read_text())
        ctx.tracker.start = time.time() - position["elapsed"]
        ctx.log(f"resumed from {latest} (step {position['step']})")
        return position["step"]

    def due(self, step: int, total: int) -> bool:
        """A checkpoint after `step` steps of `total`: every `every` steps, never after the last one."""
        return step % self.every == 0 and step < total

    def save_if_due(self, step: int, total: int, ctx, state: dict | None = None) -> bool:
        if not self.due(step, total):
            return False
        self.save(step, ctx, state or {})
        return True

    def save(self, step: int, ctx, state: dict) -> None:
        acc = self.accelerator
        tmp, final = self.root / f"step_{step:07d}.tmp", self.root / f"step_{step:07d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=False)  # torch pickles: tied weights stay as they are
        torch.save(state, tmp / f"loop_state_{acc.process_index}.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            elapsed = time.time() - ctx.tracker.start
            (tmp / "position.json").write_text(json.dumps({"step": step, "elapsed": elapsed}))
            tmp.rename(final)
            for old in self.root.glob("step_*"):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def finish(self, keep: bool) -> None:
        """Delete the checkpoints from the finished dir unless asked to keep them."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process and not keep:
            shutil.rmtree(self.root, ignore_errors=True)
