"""`lifecycle serve CKPT [CKPT...]`: the OpenAI-compatible server, browser chat and battle mode (serve/).

    lifecycle serve runs/tiny/sft runs/tiny/rl [--port 8000] [--host 127.0.0.1] [--votes PATH]

Binds 127.0.0.1 unless --host says otherwise (there is no authentication: opening it is deliberate).
Battle votes go to --votes, default runs/<run>/battles.jsonl beside the first checkpoint, which is
where `lifecycle arena --judge human` looks for them. See docs/serving.md.
"""
from __future__ import annotations

import argparse
import ipaddress
import socket
from pathlib import Path

from transformers.utils import logging as hf_logging

from pipeline.errors import UserError
from serve.app import Server
from serve.engine import Engine, model_name


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", help="HF model dirs, e.g. runs/tiny/sft runs/tiny/rl")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0 = any free port)")
    p.add_argument("--votes", default=None, help="battle votes JSONL (default: runs/<run>/battles.jsonl)")


def default_votes(checkpoint: str) -> Path:
    """runs/<run>/battles.jsonl for a run's stage dir; ./battles.jsonl for a hub id."""
    path = Path(checkpoint)
    return path.parent / "battles.jsonl" if path.is_dir() else Path("battles.jsonl")


def _check_port(host: str, port: int) -> None:
    """Fail in a second, before minutes of model loading, when the address cannot be used."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: expected 0-65535")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UserError(f"--host/--port: cannot listen on {host}:{port} ({exc.strerror})") from None


def main(args) -> int:

    hf_logging.disable_progress_bar()  # one line per event, no loading bars
    names = [model_name(c) for c in args.checkpoints]
    if len(set(names)) != len(names):
        raise UserError(f"serve: checkpoints must differ; got {' '.join(args.checkpoints)}")
    _check_port(args.host, args.port)
    engines = [Engine.load(c) for c in args.checkpoints]
    votes = Path(args.votes) if args.votes else default_votes(args.checkpoints[0])
    server = Server(engines, args.host, args.port, votes)
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        print(f"warning: listening on {args.host}: anyone who can reach it can use the models (no authentication)")
    battle = f"  battle: {server.url}battle (votes: {votes})\n" if len(engines) > 1 else ""
    print(f"serving {', '.join(names)}\n  chat: {server.url}\n{battle}  API: {server.url}v1 (OpenAI-compatible)\n"
          "Ctrl+C to stop", flush=True)
    server.run()
    return 0
