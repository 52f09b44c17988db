"""Third-party console output when the output is not a terminal (`make all > log 2>&1`, CI, SLURM).

    quiet_libraries()                        # pipeline/cli.py, before any library is imported
    with third_party_output(log_file): ...   # around a stage function (pipeline/launch.py)

Off a terminal, the libraries' progress bars (transformers' "Loading weights", "Writing model
shards", datasets' "Generating train split", huggingface_hub downloads; any tqdm imported later, via
TQDM_DISABLE) are switched off, and their log records and Python warnings go to the stage's log.txt
instead of the console, so a log file holds our one line per step and nothing between. In a
terminal nothing changes.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Loggers of the libraries a stage calls; third_party_output sends Python warnings to "py.warnings" too.
LIBRARY_LOGGERS = ("transformers", "datasets", "huggingface_hub", "accelerate", "torch", "peft", "trl",
                   "DeepSpeed", "deepspeed", "tokenizers", "py.warnings")
# Read when each library is imported, and inherited by `accelerate launch` workers.
PROGRESS_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


def is_terminal() -> bool:
    """Both stdout and stderr are terminals (a person watches them; nothing is being logged to a file)."""
    return all(getattr(stream, "isatty", lambda: False)() for stream in (sys.stdout, sys.stderr))


def quiet_libraries() -> None:
    """Progress bars off in this process and the processes it starts, unless the output is a terminal.
    A variable already set (e.g. HF_HUB_DISABLE_PROGRESS_BARS=0) is left as it is. Without an NVIDIA
    driver DeepSpeed is told it runs on the CPU (as the Makefile and the accelerate workers do), or its
    import probes for an accelerator and logs a warning between our lines."""
    if not shutil.which("nvidia-smi"):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if is_terminal():
        return
    for key, value in PROGRESS_ENV.items():
        os.environ.setdefault(key, value)
    _set_bars(False)


def _bars_enabled() -> bool | None:
    if "transformers" not in sys.modules:
        return None
    from transformers.utils import logging as hf_logging
    return hf_logging.is_progress_bar_enabled()


def _set_bars(enabled: bool) -> None:
    """Switch the bars of the libraries already imported (later imports read PROGRESS_ENV)."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging
        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
        (enable_progress_bars if enabled else disable_progress_bars)()
    if "datasets" in sys.modules:
        import datasets
        (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()


def _file_handler(log_file: Path) -> logging.Handler:
    handler = logging.FileHandler(log_file, delay=True, encoding="utf-8")  # created at the first record
    rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    prefix = f"rank {rank} | " if rank is not None else ""
    handler.setFormatter(logging.Formatter(prefix + "%(name)s | %(levelname)s | %(message)s"))
    return handler


def _warning_to_log(message, category, filename, lineno, file=None, line=None) -> None:
    import warnings
    text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
    logging.getLogger("py.warnings").warning("%s", text)


@contextmanager
def third_party_output(log_file: str | Path, enabled: bool | None = None) -> Iterator[None]:
    """While a stage runs off a terminal (or with enabled=True): library bars off, library log records
    and Python warnings appended to log_file. Loggers, warnings and environment are put back afterwards
    (bars stay off in a library first imported during the stage: it read PROGRESS_ENV)."""
    if enabled is None:
        enabled = not is_terminal()
    if not enabled:
        yield
        return
    import warnings
    env = {key: os.environ.get(key) for key in PROGRESS_ENV}
    os.environ.update({key: value for key, value in PROGRESS_ENV.items() if env[key] is None})
    _configure_transformers_logging()
    handler = _file_handler(Path(log_file))
    saved = []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers, logger.propagate = [handler], False
    bars, showwarning = _bars_enabled(), warnings.showwarning
    warnings.showwarning = _warning_to_log
    _set_bars(False)
    try:
        yield
    finally:
        warnings.showwarning = showwarning
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
        if bars:
            _set_bars(True)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
        handler.close()


def _configure_transformers_logging() -> None:
    """transformers adds its own console handler on first use; make that happen now, so the handler
    swapped out for the stage is that one (every stage imports transformers anyway)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    hf_logging.get_logger()
