"""Read offline W&B runs back (tests only): the .wandb file is a LevelDB-style log of protobuf Records.

wandb 0.31 writes runs from its Go core and ships no Python reader, so this parses the format its
core writes: a 7-byte header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each
with a 7-byte header (crc32c, little-endian uint16 length, type: 1 full, 2 first, 3 middle, 4 last);
the payloads are `wandb.proto.wandb_internal_pb2.Record` messages.
"""
from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def _payloads(data: bytes):
    if data[:4] != b":W&B":
        raise ValueError("not a .wandb file")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer: too small for a chunk header
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


@dataclass
class OfflineRun:
    path: Path
    group: str = ""
    job_type: str = ""
    name: str = ""
    history: list[dict] = field(default_factory=list)   # one dict per logged step
    summary: dict = field(default_factory=dict)
    finished: bool = False                               # the exit record is there


def read_run(path: Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb
    run = OfflineRun(path=path)
    for payload in _payloads(Path(path).read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.group, run.job_type, run.name = record.run.run_group, record.run.job_type, record.run.display_name
        elif kind == "history":
            run.history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                                for i in record.history.item})
        elif kind == "exit":
            run.finished = True
        elif kind == "summary":
            for item in record.summary.update:
                if item.key:
                    run.summary[item.key] = json.loads(item.value_json)
    return run


def read_runs(wandb_dir: Path, wait_s: float = 60.0) -> list[OfflineRun]:
    """Every offline run under wandb_dir. wandb's core process writes the file after run.finish()
    returns, so wait (up to wait_s) until every run has its exit record."""
    deadline = time.time() + wait_s
    while True:
        runs = [read_run(p) for p in sorted(Path(wandb_dir).glob("**/offline-run-*/run-*.wandb"))]
        if all(r.finished for r in runs) or time.time() > deadline:
            return runs
        time.sleep(0.2)
