"""The OpenAI chat-completions wire format: request validation, response and stream-chunk bodies, errors.

    req = parse_chat_request(body_bytes, engines)   # raises APIError(400, ...) on anything malformed
    completion_body(req, texts, reasons, usage)     # {"object": "chat.completion", "choices": [...], "usage"}
    chunk_body(req, index, delta, finish_reason)    # one server-sent event's JSON

Supported: model, messages (string content or text parts; "developer" counts as "system"), temperature
(0-2, 0 = greedy), top_p (0-1], max_tokens / max_completion_tokens (>= 1; default: what the context
leaves), stop (a string or up to 4), n (1-8), seed, stream, stream_options.include_usage. Refused with 400:
tools/functions (the calculator is built in and always on) and logprobs. Other OpenAI fields are ignored.
Errors use OpenAI's body: {"error": {"message", "type", "param", "code"}}.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_N = 8


class APIError(Exception):
    """An error answered as HTTP `status` with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_Part] | None = None


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """A validated request; unknown OpenAI fields are accepted and ignored."""
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[_Message] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=MAX_N)
    seed: int | None = None
    stream: bool | None = False
    stream_options: _StreamOptions | None = None

    def chat_messages(self) -> list[dict]:
        """[{role, content}] with text parts joined and "developer" as "system"."""
        out = []
        for i, m in enumerate(self.messages):
            content = m.content or ""
            if isinstance(content, list):
                if any(p.type != "text" for p in content):
                    raise APIError(400, "only text content parts are supported", f"messages.{i}.content")
                content = "".join(p.text or "" for p in content)
            out.append({"role": "system" if m.role == "developer" else m.role, "content": content})
        return out

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


def _param(loc: tuple) -> str:
    return ".".join(str(x) for x in loc if not str(x).startswith(("list[", "str", "function-")))


def parse_chat_request(raw: bytes, models: set[str]) -> ChatRequest:
    """Validate a request body against the served models; APIError(400) says what is wrong, and where."""
    try:
        body = json.loads(raw or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        req = ChatRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = _param(err["loc"])
        raise APIError(400, f"{param}: {err['msg']}", param, code="invalid_value") from None
    for name in ("tools", "functions"):
        if body.get(name):
            raise APIError(400, f"{name} are not supported: the calculator tool is built in", name, "unsupported")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise APIError(400, "logprobs are not supported by this server", "logprobs", "unsupported")
    if req.model not in models:
        raise APIError(400, f"the model '{req.model}' does not exist; served: {', '.join(sorted(models))}",
                       "model", "model_not_found")
    if len(req.stops()) > 4:
        raise APIError(400, "stop: at most 4 stop sequences", "stop", "invalid_value")
    return req


def require_json(request) -> None:
    """POST bodies must be declared JSON (415 otherwise): a cross-site form cannot send that header."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise APIError(415, "send the body as JSON with the header Content-Type: application/json",
                       code="unsupported_media_type")


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(rid: str, model: str, texts: list[str], reasons: list[str], usage: dict) -> dict:
    choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                "logprobs": None} for i, (text, reason) in enumerate(zip(texts, reasons))]
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": None, "choices": choices, "usage": usage}


def chunk_body(rid: str, model: str, index: int | None, delta: dict | None = None,
               finish_reason: str | None = None, usage: dict | None = None) -> dict:
    """One stream chunk; index None makes the final usage-only chunk (choices: [])."""
    choices = [] if index is None else [{"index": index, "delta": delta or {}, "finish_reason": finish_reason,
                                         "logprobs": None}]
    body = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "system_fingerprint": None, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def sse(obj: dict | str) -> str:
    """One server-sent event: `data: <json>` (or the literal [DONE]) and a blank line."""
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"
