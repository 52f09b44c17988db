"""Load test for `lifecycle serve`: C concurrent streaming clients (the official openai client), N requests.

    python bench/serve_load.py runs/tiny/sft                       # starts the server in-process, 127.0.0.1
    python bench/serve_load.py --url http://127.0.0.1:8000/ tiny/sft   # or a running server, by model id
    options: --concurrency 16 --requests 64 --max-tokens 64

Prints requests/s, completion tokens/s, median time to first token and latency. Every request asks for
max_tokens tokens at temperature 1 with a fixed seed; a model may end a reply early (<|end|>), so tokens/s
is the honest throughput number and requests/s depends on reply lengths.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

import openai


def one(api, model: str, i: int, max_tokens: int, out: list) -> None:
    start, first, tokens = time.perf_counter(), None, 0
    chunks = api.chat.completions.create(model=model, messages=[{"role": "user", "content": f"Tell me a story, {i}."}],
                                         max_tokens=max_tokens, temperature=1.0, seed=i, stream=True,
                                         stream_options={"include_usage": True})
    for chunk in chunks:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    out.append((first or 0.0, time.perf_counter() - start, tokens))


def load(url: str, model: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    api = openai.OpenAI(base_url=url + "v1", api_key="unused", max_retries=0, timeout=600)
    results: list = []
    todo = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            one(api, model, i, max_tokens, results)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"requests_per_s": requests / wall, "tokens_per_s": sum(r[2] for r in results) / wall,
            "ttft_p50_s": statistics.median(r[0] for r in results), "latency_p50_s": statistics.median(r[1] for r in results),
            "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="model dir (served in-process) or, with --url, the served model id")
    p.add_argument("--url", default=None)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args()
    server = None
    if args.url is None:
        from serve.app import Server
        from serve.engine import Engine
        engine = Engine.load(args.checkpoint)
        server = Server([engine], "127.0.0.1", 0, votes="/dev/null").start()
        url, model = server.url, engine.name
    else:
        url, model = args.url.rstrip("/") + "/", args.checkpoint
    try:
        one(openai.OpenAI(base_url=url + "v1", api_key="unused"), model, -1, 4, [])   # warm-up
        r = load(url, model, args.concurrency, args.requests, args.max_tokens)
    finally:
        if server is not None:
            server.stop()
    print(f"serve | {args.concurrency} concurrent, {args.requests} requests, max_tokens {args.max_tokens} | "
          f"{r['requests_per_s']:.2f} req/s | {r['tokens_per_s']:.0f} tok/s | ttft p50 {r['ttft_p50_s']:.2f}s | "
          f"latency p50 {r['latency_p50_s']:.2f}s | {r['wall_s']:.1f}s")


if __name__ == "__main__":
    main()
