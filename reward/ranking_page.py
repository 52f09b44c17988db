"""A local web page for people to rank K completions of a prompt, best to worst.

    lifecycle rank recipes/tiny.yaml [--port 8765] [--rollouts runs/tiny/rollouts.jsonl] [--out rankings.jsonl]
    then open http://127.0.0.1:8765/

Standard library only (http.server): the page (reward/static/ranking.html) orders completions by drag and
drop or keyboard, with skip, undo and a progress count. Every action is one JSON line appended to the log
and fsynced before the server answers, so an acknowledged ranking survives a killed server. The log is
append-only; skip and undo are events too, replayed on start:
    {"event": "rank", "id": <uuid>, "prompt_id", "order": [completion indices best..worst],
     "ranks": [per completion, 0 = best, equal = tie], "completions", "prompt_messages", "family", "policy", "time"}
    {"event": "skip", "id", "prompt_id", "time"}      {"event": "undo", "id", "target": <id undone>, "time"}
No loss or duplicates: a submission id makes retries idempotent, a prompt already ranked (another tab)
is refused with 409, a partial last line (killed mid-write, never acknowledged) is cut on start, and an
exclusive file lock keeps a second server off the same log. The queue is the rollouts' order (or any
order the caller gives, e.g. reward/rank_queue.py's least-sure-first); skipped prompts come back after
every unskipped one; a restart opens at the first unranked prompt.

Identical completions (a small policy often samples the same text twice) are shown once: the person
orders the distinct texts and each duplicate gets its twin's rank (a tie, so no pair is trained between
them). A prompt whose completions are all identical has nothing to rank: it is left out of the queue and
counted (`identical` in the state).
"""
from __future__ import annotations

import fcntl
import json
import os
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pipeline.errors import UserError
from pipeline.files import read_jsonl

STATIC = Path(__file__).parent / "static" / "ranking.html"


def read_log(path: str | Path) -> list[dict]:
    """Replay a rankings log: the active actions (rank or skip) in order, undone ones removed."""
    active: dict[str, dict] = {}
    path = Path(path)
    if not path.is_file():
        return []
    for line_no, rec in read_jsonl(path, "rankings log"):  # a partial last line was never acknowledged
        _check_event(rec, f"{path}:{line_no}")
        if rec.get("event") in ("rank", "skip"):
            active.setdefault(rec["id"], rec)
        elif rec.get("event") == "undo":
            active.pop(rec.get("target"), None)
    return list(active.values())


def _check_event(rec: dict, where: str) -> None:
    """A rank, skip or undo event must carry what replaying it reads (other events are ignored)."""
    event = rec.get("event")
    needs = {"rank": ("id", "prompt_id"), "skip": ("id", "prompt_id"), "undo": ("id", "target")}.get(event, ())
    if any(not isinstance(rec.get(key), str) for key in needs):
        raise UserError(f"{where}: expected a {event} event with {' and '.join(repr(k) for k in needs)} strings")
    if event == "rank":
        order, completions = rec.get("order"), rec.get("completions")
        if (not isinstance(completions, list) or not all(isinstance(c, str) for c in completions)
                or not isinstance(order, list) or not all(type(i) is int for i in order)
                or sorted(order) != list(range(len(completions)))):
            raise UserError(f"{where}: expected a rank event with 'completions' (texts) and 'order', "
                            "a permutation of their indices")


def read_rankings(path: str | Path) -> list[dict]:
    """The active ranking records of a log (skips and undone rankings left out)."""
    return [r for r in read_log(path) if r["event"] == "rank"]


def distinct_indices(texts: list[str]) -> list[int]:
    """The index of the first completion of each distinct text, in order."""
    first: dict[str, int] = {}
    for i, text in enumerate(texts):
        first.setdefault(text, i)
    return list(first.values())


def expand_order(order: list[int], texts: list[str]) -> tuple[list[int], list[int]]:
    """A best-to-worst order of the distinct completions (their first indices, as the page sends; a full
    permutation of all K also works: a text's first appearance counts) -> (full order of all K, ranks).
    Each duplicate takes its twin's rank (dense ranks, 0 = best, equal = tie) and follows it in the order."""
    rank_of: dict[str, int] = {}
    for index in order:
        rank_of.setdefault(texts[index], len(rank_of))
    ranks = [rank_of[text] for text in texts]
    return sorted(range(len(texts)), key=lambda i: (ranks[i], i)), ranks


def valid_order(order, texts: list[str]) -> bool:
    """A permutation of the distinct completions' first indices, or of all K indices."""
    if not isinstance(order, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in order):
        return False
    return sorted(order) in (distinct_indices(texts), list(range(len(texts))))


def texts_of(prompt: dict) -> list[str]:
    return [c["text"] if isinstance(c, dict) else c for c in prompt["completions"]]


def load_prompts(rollouts_path: str | Path) -> list[dict]:
    path = Path(rollouts_path)
    if not path.is_file():
        raise UserError(f"{path}: no rollouts file; run `lifecycle rollouts RECIPE` first")
    prompts, seen = [], set()
    for n, rec in read_jsonl(path, "rollout"):  # a partial last line of an interrupted rollout run is left out
        completions = rec.get("completions")
        if (not isinstance(rec.get("id"), str) or not isinstance(completions, list)
                or not all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in completions)):
            raise UserError(f"{path}:{n}: expected a rollout record with 'id' and 'completions' (objects with a 'text')")
        if rec["id"] not in seen:
            seen.add(rec["id"])
            prompts.append(rec)
    if not prompts:
        raise UserError(f"{path}: holds no rollouts")
    return prompts


class RankingLog:
    """The append-only log plus the replayed state, behind one lock."""

    def __init__(self, path: str | Path, prompts: list[dict]):
        self.path = Path(path)
        self.prompts = [p for p in prompts if len(distinct_indices(texts_of(p))) > 1]
        self.identical = len(prompts) - len(self.prompts)  # all completions the same text: nothing to rank
        self.by_id = {p["id"]: p for p in self.prompts}
        self.lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_partial_line()
        self.fh = open(self.path, "a", encoding="utf-8")
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{self.path}: another ranking server is using this log") from None
        self.seen_ids: set[str] = {rec["id"] for _, rec in read_jsonl(self.path, "rankings log") if "id" in rec}
        self.active = read_log(self.path)

    def _cut_partial_line(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)

    def _append(self, record: dict) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())  # durable before the client hears "ok"
        self.seen_ids.add(record["id"])

    def state(self) -> dict:
        ranked = {r["prompt_id"] for r in self.active if r["event"] == "rank"} & self.by_id.keys()
        skipped = ({r["prompt_id"] for r in self.active if r["event"] == "skip"} & self.by_id.keys()) - ranked
        todo = [p for p in self.prompts if p["id"] not in ranked]
        fresh = [p for p in todo if p["id"] not in skipped]
        current = (fresh or todo or [None])[0]
        return {"total": len(self.prompts), "ranked": len(ranked), "skipped": len(skipped),
                "identical": self.identical, "can_undo": bool(self.active), "current": _public(current)}

    def act(self, event: str, body: dict) -> tuple[int, dict]:
        """Apply one action (rank, skip, undo); returns (HTTP status, response)."""
        sub = str(body.get("submission") or "")
        if not sub or len(sub) > 64:
            return 400, {"error": "missing submission id"}
        with self.lock:
            if sub in self.seen_ids:  # a retry of an action already on disk
                return 200, {"ok": True, "duplicate": True, **self.state()}
            record = {"event": event, "id": sub, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            if event == "undo":
                if not self.active:
                    return 409, {"error": "nothing to undo", **self.state()}
                record["target"] = self.active[-1]["id"]
                record["prompt_id"] = self.active[-1]["prompt_id"]
            else:
                error = self._check(event, body)
                if error:
                    return 409 if "already" in error else 400, {"error": error, **self.state()}
                record.update(self._payload(event, body))
            self._append(record)
            if event == "undo":
                self.active.pop()
            else:
                self.active.append(record)
            return 200, {"ok": True, **self.state()}

    def _check(self, event: str, body: dict) -> str:
        prompt = self.by_id.get(body.get("prompt_id"))
        if prompt is None:
            return "unknown prompt_id"
        if any(r["prompt_id"] == prompt["id"] and r["event"] == "rank" for r in self.active):
            return "already ranked (in another tab?)"
        if event == "rank" and not valid_order(body.get("order"), texts_of(prompt)):
            return f"order must be a permutation of the distinct completions {distinct_indices(texts_of(prompt))}"
        return ""

    def _payload(self, event: str, body: dict) -> dict:
        prompt = self.by_id[body["prompt_id"]]
        out = {"prompt_id": prompt["id"]}
        if event == "rank":
            order, ranks = expand_order(body["order"], texts_of(prompt))
            out.update(order=order, ranks=ranks, family=prompt.get("family"),
                       prompt_messages=prompt.get("prompt_messages"), policy=prompt.get("policy"),
                       completions=texts_of(prompt), source="human")
        return out

    def close(self) -> None:
        self.fh.close()


def _public(prompt: dict | None) -> dict | None:
    """What the page shows: the conversation so far and each distinct completion once, in a shuffled (seeded)
    order; `index` is the text's first completion index."""
    if prompt is None:
        return None
    texts = texts_of(prompt)
    items = [{"index": i, "text": texts[i]} for i in distinct_indices(texts)]
    random.Random(prompt["id"]).shuffle(items)  # no position bias, yet stable across reloads
    return {"id": prompt["id"], "family": prompt.get("family"),
            "messages": prompt.get("prompt_messages") or [{"role": "user", "content": prompt.get("prompt", "")}],
            "completions": items}


def make_handler(log: RankingLog):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # quiet: the log file is the record
            pass

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: dict) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def do_GET(self):
            if self.path in ("/", "/index.html"):
                self._send(200, STATIC.read_bytes(), "text/html; charset=utf-8")
            elif self.path == "/api/state":
                with log.lock:
                    self._json(200, log.state())
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self):
            event = {"/api/rank": "rank", "/api/skip": "skip", "/api/undo": "undo"}.get(self.path)
            # JSON only: a cross-site form cannot send application/json without a CORS preflight we refuse.
            if event is None or not self.headers.get("Content-Type", "").startswith("application/json"):
                return self._json(404 if event is None else 415, {"error": "POST JSON to /api/rank|skip|undo"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            except (ValueError, json.JSONDecodeError):
                return self._json(400, {"error": "body is not JSON"})
            self._json(*log.act(event, body if isinstance(body, dict) else {}))

    return Handler


def serve(rollouts: str | Path | list[dict], out: str | Path, host: str = "127.0.0.1", port: int = 8765,
          ready=None) -> None:
    """Serve until interrupted: the prompts of a rollouts file, or prompts already loaded (and ordered).
    `ready(url)` is called once the socket listens."""
    log = RankingLog(out, rollouts if isinstance(rollouts, list) else load_prompts(rollouts))
    try:
        server = ThreadingHTTPServer((host, port), make_handler(log))
    except OSError as exc:
        log.close()
        raise UserError(f"--host/--port: cannot listen on {host}:{port} ({exc.strerror})") from None
    url = f"http://{host}:{server.server_address[1]}/"
    left_out = f"; {log.identical} prompts left out: all completions identical" if log.identical else ""
    (ready or (lambda u: print(f"ranking page: {u}  (log: {out}{left_out}; Ctrl+C to stop)", flush=True)))(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        log.close()
