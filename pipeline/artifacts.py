"""Stage artifacts: the manifest (written last), fingerprints, atomic writes, environment facts.

A stage dir is finished iff it holds manifest.json. Everything is written into `<stage>.tmp/` and the
runner renames it into place, so a crash never leaves a finished-looking artifact.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
CODE_VERSION = "0.2.0"  # bump when a stage's computation changes: finished stages then rerun
TRACKED_PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "deepspeed",
                    "wandb", "tokenizers", "pydantic", "llm-lifecycle")


def fingerprint(config: Any, input_fingerprints: dict[str, str]) -> str:
    """Hash of the stage's resolved config, its inputs' fingerprints and the code version."""
    blob = json.dumps({"config": config, "inputs": input_fingerprints, "code": CODE_VERSION},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temp file + fsync + rename: readers see the old file or the new, never half."""
    part = path.with_name(path.name + ".part")
    with open(part, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(part, path)


def read_manifest(stage_dir: Path) -> dict | None:
    path = Path(stage_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit() -> str | None:
    """The commit of the code that ran (with '+dirty' when the tree had changes), or None."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("+dirty" if dirty else "")) if sha else None


def external_fingerprint(ref: str) -> str:
    """Fingerprint of a model given by path or hub id (`sft.from: ...`)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        manifest = read_manifest(path)
        if manifest and "fingerprint" in manifest:
            return manifest["fingerprint"]
        files = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in path.iterdir() if p.is_file())
        return hashlib.sha256(json.dumps([str(path.resolve()), files]).encode()).hexdigest()[:16]
    return hashlib.sha256(f"hub:{ref}".encode()).hexdigest()[:16]


# The metrics that say most about each stage (what `lifecycle status` and model cards show first).
KEY_METRICS = {
    "tokenizer": ["eval/bytes_per_token"],
    "pretrain": ["eval/val_bpb", "baseline/bigram_bpb"],
    "sft": ["eval/acc", "eval/format", "eval/acc/arithmetic"],
    "rm": ["eval/pairwise_acc", "eval/top1_acc", "eval/n_pairs"],
    "rl": ["eval/acc", "eval/acc/arithmetic", "before/eval/acc/arithmetic"],
}
