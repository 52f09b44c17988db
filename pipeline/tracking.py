"""Metrics: one console line per step, metrics.jsonl always, W&B when the recipe asks for it.

W&B runs of one recipe share group = run name (or `tracking.group`: a sweep's points share the sweep's
name), job_type = stage, and the metric names below, so one
panel compares stages. Without an API key W&B runs offline under runs/<name>/wandb (`wandb sync` later).

Shared metric names: train/loss, train/lr, train/tokens_per_s, train/mfu, eval/<...>.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def short_names(keys: list[str]) -> dict[str, str]:
    """Each key's shortest '/'-suffix that no other key of the line shares ("loss", but
    "base/acc/arithmetic" next to "eval/acc/arithmetic"), so a console line never repeats a name."""
    names = {}
    for key in keys:
        parts = key.split("/")
        for n in range(1, len(parts) + 1):
            name = "/".join(parts[-n:])
            if sum(k == name or k.endswith("/" + name) for k in keys) == 1:
                break
        names[key] = name
    return names


def _format_value(key: str, value: Any, name: str | None = None) -> str:
    name = name or key.split("/")[-1]
    if name == "tokens_per_s":
        return f"{value / 1000:.1f}k tok/s" if value >= 1000 else f"{value:.0f} tok/s"
    if name == "lr":
        return f"lr {value:.1e}"
    if isinstance(value, float):
        return f"{name} {value:.4g}"
    return f"{name} {value}"


def wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_mode() -> str:
    """WANDB_MODE when set, else online with a key and offline without."""
    return os.environ.get("WANDB_MODE") or ("online" if wandb_has_key() else "offline")


class Tracker:
    """Logs a stage's metrics. Only the main process writes; other ranks get a silent tracker."""

    def __init__(self, stage: str, out_dir: Path, run_dir: Path, run_name: str, config: dict,
                 wandb_cfg: Any = None, is_main: bool = True, echo: bool = True):
        self.stage, self.out_dir, self.is_main, self.echo = stage, Path(out_dir), is_main, echo
        self.start = time.time()
        self._eta_origin: tuple[float, int] | None = None  # (time, step) of the first step with a total
        self.wandb_run = None
        self.last_step: int | None = None  # tables go to this W&B step (an unstepped log would advance it)
        self.log_file = self.out_dir / "log.txt"
        if not is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        if wandb_cfg is not None and wandb_cfg.wandb:
            self.wandb_run = _start_wandb(stage, run_dir, run_name, config, wandb_cfg)

    # -- console + file
    def info(self, message: str) -> None:
        if not self.is_main:
            return
        line = f"{self.stage} | {message}"
        if self.echo:
            print(line, flush=True)
        with open(self.log_file, "a") as fh:
            fh.write(line + "\n")

    def log(self, metrics: dict[str, Any], step: int | None = None, total: int | None = None) -> None:
        """Record metrics for `step`; with `total`, the console line carries progress and an ETA."""
        if not self.is_main:
            return
        record = {"step": step, "time": round(time.time() - self.start, 3), **metrics}
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
        if step is not None:
            self.last_step = step
        parts = []
        if step is not None:
            parts.append(f"step {step}/{total}" if total else f"step {step}")
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        names = short_names(list(numbers))
        parts += [_format_value(k, v, names[k]) for k, v in numbers.items()]
        if step and total:
            parts.append(f"eta {self._eta(step, total)}")
        self.info(" | ".join(parts))

    def _eta(self, step: int, total: int) -> str:
        """Remaining time from the pace since the first step logged with a total, so set-up work
        before the loop (tokenizing, evals, a resumed run's earlier steps) does not skew it."""
        now = time.time()
        if self._eta_origin is None:
            # first step: only the time since the stage started is known
            self._eta_origin = (now, step)
            return format_duration((now - self.start) / step * (total - step))
        t0, s0 = self._eta_origin
        if step <= s0:
            return "?"
        return format_duration((now - t0) / (step - s0) * (total - step))

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        """A table of samples: to W&B as a Table, always to <key>.jsonl in the stage dir."""
        if not self.is_main:
            return
        path = self.out_dir / (key.replace("/", "_") + ".jsonl")
        with open(path, "a") as fh:
            for row in rows:
                fh.write(json.dumps(dict(zip(columns, row)), default=str) + "\n")
        if self.wandb_run is not None:
            import wandb
            self._log_media({key: wandb.Table(columns=columns, data=[[str(c) for c in r] for r in rows])})

    def images(self, paths: dict[str, Path | str]) -> None:
        """Plots already written to disk (the files stay the record), to W&B as Images."""
        if self.wandb_run is not None and paths:
            import wandb
            self._log_media({key: wandb.Image(str(path)) for key, path in paths.items()})

    def _log_media(self, media: dict[str, Any]) -> None:
        # At the last logged step, never unstepped: an unstepped log advances W&B's step past it, and
        # W&B then drops every later log to that step (a table after an image was silently lost).
        self.wandb_run.log(media, **({"step": self.last_step} if self.last_step is not None else {}))

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            for key, value in metrics.items():
                self.wandb_run.summary[key] = value

    def finish(self) -> str | None:
        """Close W&B; return the run path (entity/project/id) or the offline dir."""
        if self.wandb_run is None:
            return None
        run = self.wandb_run
        path = run.path if not run.settings._offline else str(Path(run.dir).parent)
        run.finish()
        self.wandb_run = None
        return path


def _start_wandb(stage: str, run_dir: Path, run_name: str, config: dict, cfg: Any):
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency
        print("tracking: wandb not installed; metrics.jsonl only", file=sys.stderr)
        return None
    if not os.environ.get("WANDB_MODE"):
        os.environ.pop("WANDB_MODE", None)  # an empty value would fail wandb's own settings check
    mode = wandb_mode()
    wandb_dir = Path(run_dir) / "wandb"
    wandb_dir.mkdir(parents=True, exist_ok=True)
    return wandb.init(project=cfg.project, entity=cfg.entity, group=getattr(cfg, "group", None) or run_name,
                      job_type=stage, name=f"{run_name}-{stage}", config=config, dir=str(wandb_dir), mode=mode,
                      reinit="create_new", settings=wandb.Settings(silent=True, console="off"))
