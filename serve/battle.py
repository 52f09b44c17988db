"""Battle mode: one prompt, two anonymous checkpoints side by side, a person votes A / B / tie.

    POST /api/battle            {"prompt", "system"?, "temperature"?, "top_p"?, "max_tokens"?}  -> {"id"}
    POST /api/battle/{id}/a     the A answer as an SSE stream (OpenAI chunks; model "A")   (and .../b)
    POST /api/battle/{id}/vote  {"winner": "a" | "b" | "tie"}  -> {"model_a", "model_b", "winner"}

The two models are drawn at random (SystemRandom) from the served ones and randomly assigned to A and B;
the page learns their names only in the vote's answer. The server keeps each side's answer as it
generated it, so a vote records what was shown, not what a page claims. A vote is one JSON line appended
to the log and fsynced before the answer (`lifecycle serve --votes PATH`, default runs/<run>/battles.jsonl):
    {"event": "battle_vote", "id", "time", "winner": "a"|"b"|"tie", "model_a", "model_b",
     "checkpoint_a", "checkpoint_b", "messages", "answer_a", "answer_b", "sampling"}
`lifecycle arena --judge human` reads it (games_from_votes): each vote is one game between the two
checkpoints, a tie half a win each. A partial last line (a killed writer, never acknowledged) is cut on
open; lines are written with one O_APPEND write each, so two servers may share a log.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from serve.completions import Completion
from serve.engine import Engine, Sampling
from serve.openai_api import APIError, new_id, require_json
from stages.eval.arena import Game

MAX_BATTLES = 1000          # battles kept in memory (oldest dropped)
WINNERS = {"a": 1.0, "b": 0.0, "tie": 0.5}


class VoteLog:
    """Append-only JSONL; every line is written with one os.write and fsynced before append() returns."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                os.truncate(self.path, data.rfind(b"\n") + 1)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.lock = threading.Lock()

    def append(self, record: dict) -> None:
        with self.lock:
            os.write(self.fd, (json.dumps(record) + "\n").encode())
            os.fsync(self.fd)

    def close(self) -> None:
        """Idempotent."""
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


def read_votes(path: str | Path) -> list[dict]:
    """The battle votes of a log, in order (unreadable lines skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    votes = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("event") == "battle_vote" and rec.get("winner") in WINNERS:
            votes.append(rec)
    return votes


def _resolved(ref: str) -> str:
    return str(Path(ref).resolve()) if Path(ref).is_dir() else ref


def games_from_votes(votes: list[dict], checkpoints: list[str], first_prompt: int = 0) -> list[Game]:
    """Votes between two of `checkpoints` (matched by resolved path) -> games; each vote is its own prompt
    (numbered from first_prompt) for the bootstrap. Votes naming other checkpoints are left out."""
    index = {_resolved(c): i for i, c in enumerate(checkpoints)}
    games = []
    for vote in votes:
        a, b = index.get(_resolved(vote.get("checkpoint_a", ""))), index.get(_resolved(vote.get("checkpoint_b", "")))
        if a is not None and b is not None and a != b:
            games.append(Game(a, b, WINNERS[vote["winner"]], first_prompt + len(games)))
    return games


@dataclass
class Battle:
    id: str
    engines: dict[str, Engine]            # "a" -> engine, "b" -> engine
    messages: list[dict]
    sampling: dict
    answers: dict[str, str] = field(default_factory=dict)   # side -> finished answer
    started: set = field(default_factory=set)
    voted: bool = False


class Battles:
    """The battles in progress, the routes that serve them, and the vote log."""

    def __init__(self, engines: dict[str, Engine], log: VoteLog):
        self.engines, self.log = engines, log
        self.battles: OrderedDict[str, Battle] = OrderedDict()
        self.rng = random.SystemRandom()

    def _get(self, request: Request) -> Battle:
        battle = self.battles.get(request.path_params["id"])
        if battle is None:
            raise APIError(404, "no such battle (the server restarted?); start a new one", "id", "not_found")
        return battle

    async def start(self, request: Request) -> JSONResponse:
        if len(self.engines) < 2:
            raise APIError(400, "battle mode needs at least two checkpoints: lifecycle serve CKPT_A CKPT_B")
        body = await _json_object(request)
        prompt, system = body.get("prompt"), body.get("system") or ""
        if not isinstance(prompt, str) or not prompt.strip() or not isinstance(system, str):
            raise APIError(400, "prompt: expected a non-empty string", "prompt", "invalid_value")
        sampling = {"temperature": _number(body, "temperature", 0.7, 0, 2),
                    "top_p": _number(body, "top_p", 1.0, 1e-6, 1), "max_tokens": int(_number(body, "max_tokens", 256, 1, 1e6))}
        first, second = self.rng.sample(sorted(self.engines), 2)
        messages = ([{"role": "system", "content": system}] if system.strip() else []) + [{"role": "user", "content": prompt}]
        battle = Battle(uuid.uuid4().hex, {"a": self.engines[first], "b": self.engines[second]}, messages, sampling)
        self.battles[battle.id] = battle
        while len(self.battles) > MAX_BATTLES:
            self.battles.popitem(last=False)
        return JSONResponse({"id": battle.id})

    async def answer(self, request: Request) -> StreamingResponse:
        battle, side = self._get(request), request.path_params["side"]
        if side not in ("a", "b"):
            raise APIError(404, "side must be a or b", "side", "not_found")
        if side in battle.started:
            raise APIError(409, f"answer {side.upper()} was already generated", "side", "conflict")
        engine = battle.engines[side]
        prompt_ids = engine.render(battle.messages)
        room = engine.context_length - len(prompt_ids)
        if room < 1:
            raise APIError(400, "the prompt is longer than the model's context", "prompt", "context_length_exceeded")
        s = battle.sampling
        run = Completion(engine, prompt_ids, [Sampling(max_tokens=min(s["max_tokens"], room),
                                                       temperature=s["temperature"], top_p=s["top_p"])])
        battle.started.add(side)

        async def events():
            async for chunk in run.sse(new_id(), side.upper()):
                yield chunk
            if run.reasons[0] is not None:
                battle.answers[side] = run.texts[0]

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def vote(self, request: Request) -> JSONResponse:
        battle = self._get(request)
        winner = (await _json_object(request)).get("winner")
        if winner not in WINNERS:
            raise APIError(400, "winner: expected 'a', 'b' or 'tie'", "winner", "invalid_value")
        if battle.voted:
            raise APIError(409, "this battle already has a vote", "id", "conflict")
        if set(battle.answers) != {"a", "b"}:
            raise APIError(409, "both answers must finish before the vote", "id", "conflict")
        a, b = battle.engines["a"], battle.engines["b"]
        record = {"event": "battle_vote", "id": battle.id, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "winner": winner, "model_a": a.name, "model_b": b.name,
                  "checkpoint_a": _resolved(a.checkpoint), "checkpoint_b": _resolved(b.checkpoint),
                  "messages": battle.messages, "answer_a": battle.answers["a"], "answer_b": battle.answers["b"],
                  "sampling": battle.sampling}
        self.log.append(record)
        battle.voted = True
        return JSONResponse({"ok": True, "winner": winner, "model_a": a.name, "model_b": b.name})


async def _json_object(request: Request) -> dict:
    require_json(request)
    try:
        body = json.loads(await request.body() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise APIError(400, "the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise APIError(400, f"{key}: expected a number in [{low:g}, {high:g}]", key, "invalid_value")
    return float(value)
