"""Chat completions on the event loop: a request's jobs, their events, the JSON answer or the SSE stream.

    run = Completion(engine, prompt_ids, samplings)       # submits one job per choice (n)
    body = await run.collect(rid, model)                   # non-stream: chat.completion JSON
    StreamingResponse(run.sse(rid, model, include_usage))  # stream: chat.completion.chunk events, then [DONE]

The engine's worker thread hands events over with loop.call_soon_threadsafe; everything else runs on the
loop. If the client goes away mid-stream, Starlette cancels the response and the finally-clause here sets
the jobs' `cancelled` flags, so the worker drops them at the next token and serves the next request.
Usage: prompt_tokens is the rendered prompt; completion_tokens counts every token added after it, the
calculator's inserted result tokens included (they take context like sampled ones), summed over choices.
"""
from __future__ import annotations

import asyncio
import contextlib

from serve.engine import Engine, Sampling
from serve.openai_api import APIError, ChatRequest, chunk_body, completion_body, sse, usage_body

DEFAULT_MAX_TOKENS = 1024   # when a request names none (and the context leaves that much)


def samplings_for(req: ChatRequest, engine: Engine, prompt_tokens: int) -> list[Sampling]:
    """One Sampling per choice; choice i of a seeded request uses seed + i (so the n choices differ)."""
    room = engine.context_length - prompt_tokens
    if room < 1:
        raise APIError(400, f"the prompt is {prompt_tokens} tokens; this model's context length is "
                            f"{engine.context_length}", "messages", "context_length_exceeded")
    want = req.max_completion_tokens or req.max_tokens
    if want is not None and want > room:
        raise APIError(400, f"max_tokens: {want} plus the prompt's {prompt_tokens} tokens exceeds this model's "
                            f"context length {engine.context_length}", "max_tokens", "context_length_exceeded")
    temperature = 1.0 if req.temperature is None else req.temperature
    top_p = 1.0 if req.top_p is None else req.top_p
    return [Sampling(max_tokens=want or min(room, DEFAULT_MAX_TOKENS), temperature=temperature, top_p=top_p,
                     seed=None if req.seed is None else req.seed + i, stop=req.stops())
            for i in range(req.n or 1)]


class Completion:
    """The jobs of one request and the queue their events arrive on (create it on the event loop)."""

    def __init__(self, engine: Engine, prompt_ids: list[int], samplings: list[Sampling]):
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

        def emitter(index: int):
            def emit(event: tuple) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is gone: the server is shutting down
                    loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))
            return emit

        self.prompt_tokens = len(prompt_ids)
        self.texts = [""] * len(samplings)
        self.reasons: list[str | None] = [None] * len(samplings)
        self.completion_tokens = 0
        self.jobs = [engine.submit(prompt_ids, s, emitter(i)) for i, s in enumerate(samplings)]

    def usage(self) -> dict:
        return usage_body(self.prompt_tokens, self.completion_tokens)

    async def events(self):
        """(index, event) until every job has ended; leaving early cancels the jobs still running."""
        left = len(self.jobs)
        try:
            while left:
                index, event = await self.queue.get()
                if event[0] == "text":
                    self.texts[index] += event[1]
                else:
                    left -= 1
                    if event[0] == "done":
                        self.reasons[index] = event[1]
                        self.completion_tokens += event[2]
                yield index, event
        finally:
            for job in self.jobs:
                job.cancelled.set()   # a no-op for jobs that finished

    async def collect(self, rid: str, model: str) -> dict:
        async with contextlib.aclosing(self.events()) as events:
            async for _, event in events:
                if event[0] == "error":
                    raise APIError(500, f"generation failed: {event[1]}", kind="server_error")
        return completion_body(rid, model, self.texts, self.reasons, self.usage())

    async def sse(self, rid: str, model: str, include_usage: bool = False):
        """The stream: a role chunk per choice, content deltas, a finish chunk per choice, usage, [DONE]."""
        for index in range(len(self.jobs)):
            yield sse(chunk_body(rid, model, index, {"role": "assistant", "content": ""}))
        async with contextlib.aclosing(self.events()) as events:
            async for index, event in events:
                if event[0] == "text":
                    yield sse(chunk_body(rid, model, index, {"content": event[1]}))
                elif event[0] == "done":
                    yield sse(chunk_body(rid, model, index, {}, finish_reason=event[1]))
                else:
                    yield sse(APIError(500, f"generation failed: {event[1]}", kind="server_error").body())
                    return
        if include_usage:
            yield sse(chunk_body(rid, model, None, usage=self.usage()))
        yield sse("[DONE]")
