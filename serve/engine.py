"""One generation worker per model: a FIFO queue of jobs, run one at a time with stages.lm.generation.stream.

    engine = Engine.load("runs/tiny/sft")                      # engine.name == "tiny/sft"
    prompt_ids = engine.render([{"role": "user", "content": "What is 7*6?"}])
    job = engine.submit(prompt_ids, Sampling(max_tokens=64, temperature=0.0), emit)
    # emit(event) is called on the worker thread, in order:
    #   ("text", delta) ...  then  ("done", finish_reason, completion_tokens)  or  ("error", message)

Queued, not batched: every request sees exactly the single-row decode of `lifecycle chat` (stages/chat.py's
reply path), so greedy output is identical to the terminal's, and one request's padding or neighbours can
never change another's numbers. Throughput for 16 concurrent clients is measured in docs/serving.md.

The text a client sees is stages/chat.py's shown_text: a calculator call and its (tool-computed) result
appear as "[calc 7*6 = 42]", a search and its passage as "[search QUERY -> PASSAGE]" (the index saved in
the checkpoint dir, if any: stages/tools/search.py). to_raw() maps those forms back to the model's tokens
when a client sends the conversation back, so the next turn's prompt holds exactly what the model generated.
A completion cut (by max_tokens) inside a multi-byte character ends without that half character, as the
terminal chat shows it. A job whose `cancelled` event is set (its client went away) stops at the next token, or is skipped if it
is still queued; the worker then takes the next job.
"""
from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.errors import UserError
from stages.data.chat import render_prompt
from stages.data.special_tokens import CALL, END, END_CALL, END_RESULT, END_SEARCH, RESULT, SEARCH
from stages.lm.bpe import ensure_chat_tokens
from stages.lm.chat import default_system, shown_text
from stages.lm.generation import stream
from stages.lm.model import load_causal_lm
from stages.tools.search import load_search_index

SHOWN_CALL = re.compile(r"\[calc ([^\[\]=]*?) = ([^\[\]]*?)\]")  # what shown_text makes of a tool span
# a passage has no square brackets (the index makes them round), so the first "]" ends the span
SHOWN_SEARCH = re.compile(r"\[search ([^\[\]]*?) -> ([^\[\]]*?)\]")


def to_raw(text: str) -> str:
    """Inverse of shown_text for assistant turns: "[calc E = V]" -> <|calc|>E<|/calc|><|result|>V<|/result|>,
    "[search Q -> P]" -> <|search|>Q<|/search|><|result|>P<|/result|>."""
    text = SHOWN_CALL.sub(lambda m: f"{CALL}{m.group(1)}{END_CALL}{RESULT}{m.group(2)}{END_RESULT}", text)
    return SHOWN_SEARCH.sub(lambda m: f"{SEARCH}{m.group(1)}{END_SEARCH}{RESULT}{m.group(2)}{END_RESULT}", text)


def model_name(checkpoint: str) -> str:
    """The served model id: "<run>/<stage>" for a run's stage dir (runs/tiny/sft -> tiny/sft), else as given."""
    path = Path(checkpoint)
    if not path.is_dir():
        return checkpoint
    path = path.resolve()
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass
class Job:
    prompt_ids: list[int]
    sampling: Sampling
    emit: Callable[[tuple], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


class ShownText:
    """The completion's shown text, released in deltas: never half a UTF-8 character, and never text that
    may be the start of a stop string (held back until it is decided); a stop string ends the text."""

    def __init__(self, decode: Callable[[list[int]], str], stop: list[str]):
        self.decode, self.stop = decode, [s for s in stop if s]
        self.ids: list[int] = []
        self.text, self.sent, self.stopped = "", 0, False

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = shown_text(self.decode(self.ids))
        if text.endswith("\ufffd"):          # the rest of a multi-byte character is still to come
            return ""
        self.text = text
        hits = [i for i in (text.find(s, max(0, self.sent - len(s))) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped = text[:min(hits)], True
            return self._release(len(self.text))
        hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return self._release(len(text) - hold)

    def flush(self) -> str:
        """What was held back, once generation has ended without a stop string."""
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        delta = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return delta


class Engine:
    """A model, its tokenizer and the worker thread that owns them (torch runs on that thread only)."""

    def __init__(self, name: str, checkpoint: str, model, tokenizer):
        self.name, self.checkpoint, self.model, self.tokenizer = name, checkpoint, model, tokenizer
        self.system_prompt = default_system(checkpoint)
        self.search = load_search_index(checkpoint)   # None: a <|search|> call gets "error: no search index"
        config = model.config
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or config.n_positions)
        self.end_id = tokenizer.convert_tokens_to_ids(END)
        self.lock = threading.Lock()          # the tokenizer is shared by the event loop and the worker
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.stats = {"done": 0, "cancelled": 0, "errors": 0}
        self.thread = threading.Thread(target=self._work, name=f"engine {name}", daemon=True)
        self.thread.start()

    @classmethod
    def load(cls, checkpoint: str, name: str | None = None, device: str | None = None) -> Engine:
        path = Path(checkpoint)
        if not path.is_dir() and (checkpoint.startswith((".", "/", "~")) or checkpoint.count("/") != 1):
            raise UserError(f"serve: {checkpoint} is not a model dir (expected an HF model dir such as runs/tiny/sft)")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer = load_causal_lm(checkpoint, device=device)
        ensure_chat_tokens(tokenizer)
        model.eval()
        return cls(name or model_name(checkpoint), checkpoint, model, tokenizer)

    def render(self, messages: list[dict]) -> list[int]:
        """Prompt ids of a conversation (assistant turns mapped back from the shown form to tokens)."""
        raw = [{**m, "content": to_raw(m["content"])} if m["role"] == "assistant" else m for m in messages]
        with self.lock:
            return render_prompt(self.tokenizer, raw)

    def decode(self, ids: list[int]) -> str:
        with self.lock:
            return self.tokenizer.decode(ids, skip_special_tokens=False)

    def submit(self, prompt_ids: list[int], sampling: Sampling, emit: Callable[[tuple], None]) -> Job:
        job = Job(list(prompt_ids), sampling, emit)
        self.jobs.put(job)
        return job

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            if job.cancelled.is_set():
                self.stats["cancelled"] += 1
                continue
            try:
                self._run(job)
            except Exception as exc:  # noqa: BLE001 - a failed job must not kill the worker: report it, go on
                self.stats["errors"] += 1
                job.emit(("error", f"{type(exc).__name__}: {exc}"))

    def _run(self, job: Job) -> None:
        s = job.sampling
        text = ShownText(self.decode, s.stop)
        n, last = 0, None
        for token, from_tool in stream(self.model, self.tokenizer, job.prompt_ids, max_new_tokens=s.max_tokens,
                                       temperature=s.temperature, top_p=s.top_p, seed=s.seed, search=self.search):
            if job.cancelled.is_set():
                self.stats["cancelled"] += 1
                return
            n, last = n + 1, (token, from_tool)
            delta = text.add(token)
            if delta:
                job.emit(("text", delta))
            if text.stopped:
                break
        ended = last is not None and last == (self.end_id, False)
        if not text.stopped:
            rest = text.flush()
            if rest:
                job.emit(("text", rest))
        self.stats["done"] += 1
        job.emit(("done", "stop" if ended or text.stopped else "length", n))
