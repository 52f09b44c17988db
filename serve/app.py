"""The HTTP server: OpenAI-compatible API, the browser chat page and battle mode (Starlette + uvicorn).

    server = Server(engines, host="127.0.0.1", port=8000, votes="runs/tiny/battles.jsonl")
    server.run()                       # blocks; or server.start() / server.stop() on a background thread

Routes:
    POST /v1/chat/completions   OpenAI chat completions, JSON or SSE (serve/openai_api.py, serve/completions.py)
    GET  /v1/models             one model per checkpoint, id "<run>/<stage>"
    GET  /                      the chat page (serve/static/chat.html)
    GET  /battle                battle mode (serve/static/battle.html; routes in serve/battle.py)
    GET  /api/info              the models with their default system prompt and context length
Every error, including 404/405 and a crash inside a handler, answers with OpenAI's error body
{"error": {"message", "type", "param", "code"}}; the server keeps serving.
"""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pipeline.errors import UserError
from serve.battle import Battles, VoteLog
from serve.completions import Completion, samplings_for
from serve.engine import Engine
from serve.openai_api import APIError, new_id, parse_chat_request, require_json

STATIC = Path(__file__).parent / "static"


LOOPBACK_NAMES = ["127.0.0.1", "localhost"]   # Host headers accepted on 127.0.0.1 (IPv6 hosts: any)


def create_app(engines: list[Engine], votes: VoteLog, host: str = "127.0.0.1") -> Starlette:
    """The app. On 127.0.0.1 only loopback Host headers are accepted (no DNS rebinding), and POSTs
    must say Content-Type: application/json (a cross-site form cannot, without a CORS preflight we refuse)."""
    by_name = {e.name: e for e in engines}
    battles = Battles(by_name, votes)
    created = int(time.time())

    async def chat_completions(request: Request):
        require_json(request)
        req = parse_chat_request(await request.body(), set(by_name))
        engine = by_name[req.model]
        prompt_ids = engine.render(req.chat_messages())
        run = Completion(engine, prompt_ids, samplings_for(req, engine, len(prompt_ids)))
        rid = new_id()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(run.sse(rid, req.model, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        return JSONResponse(await run.collect(rid, req.model))

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": e.name, "object": "model", "created": created, "owned_by": "llm-lifecycle"} for e in engines]})

    async def info(request: Request):
        return JSONResponse({"battle": len(engines) >= 2, "models": [
            {"id": e.name, "system_prompt": e.system_prompt, "context_length": e.context_length} for e in engines]})

    def page(name: str):
        async def handler(request: Request):
            return FileResponse(STATIC / name, headers={"Cache-Control": "no-store"})
        return handler

    async def api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    async def http_error(request: Request, exc: HTTPException):
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse({"error": {"message": f"{request.method} {request.url.path}: {exc.detail}",
                                       "type": kind, "param": None, "code": None}}, status_code=exc.status_code)

    async def crash(request: Request, exc: Exception):
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error").body(),
                            status_code=500)

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/api/info", info, methods=["GET"]),
        Route("/api/battle", battles.start, methods=["POST"]),
        Route("/api/battle/{id}/vote", battles.vote, methods=["POST"]),
        Route("/api/battle/{id}/{side}", battles.answer, methods=["POST"]),
        Route("/", page("chat.html"), methods=["GET"]),
        Route("/battle", page("battle.html"), methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    hosts = ["*"] if host not in LOOPBACK_NAMES else LOOPBACK_NAMES
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
                     exception_handlers={APIError: api_error, HTTPException: http_error, Exception: crash})


class Server:
    """uvicorn on a socket bound at construction, so `url` is known at once (port 0 = any free port)."""

    def __init__(self, engines: list[Engine], host: str = "127.0.0.1", port: int = 8000,
                 votes: str | Path = "battles.jsonl"):
        names = [e.name for e in engines]
        if len(set(names)) != len(names):
            raise UserError(f"serve: two checkpoints would both be named {max(names, key=names.count)!r}; "
                            "serve checkpoints of different runs/stages")
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise UserError(f"--host/--port: cannot listen on {host}:{port} ({exc.strerror})") from None
        self.engines, self.votes = engines, VoteLog(votes)
        host_shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{host_shown}:{self.sock.getsockname()[1]}/"
        config = uvicorn.Config(create_app(engines, self.votes, host), log_level="warning", access_log=False,
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    def run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.close()

    def start(self) -> Server:
        """Serve on a background thread; returns once the server accepts connections."""
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server thread died while starting")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
        self.close()

    def close(self) -> None:
        for engine in self.engines:
            engine.close()
        self.sock.close()
        self.votes.close()
