"""`lifecycle serve`: the OpenAI client against a live server on tiny checkpoints (no network, 127.0.0.1)."""
from __future__ import annotations

import threading

import httpx
import openai
import pytest

from serve.engine import ShownText, to_raw
from stages.data.chat import render_prompt
from stages.lm.bpe import ensure_chat_tokens
from stages.lm.chat import reply, shown_text
from stages.lm.generation import stream
from stages.lm.model import load_causal_lm
from tests import serve_helpers
from tests.serve_helpers import CALC_ANSWER

checkpoints, server = serve_helpers.checkpoints, serve_helpers.server  # the fixtures

QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 + 30?"}]


def client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "v1", api_key="unused", max_retries=0, timeout=60)


def local(path):
    model, tok = load_causal_lm(path)
    ensure_chat_tokens(tok)
    return model, tok


def test_greedy_matches_terminal_chat_stream_and_non_stream(server, checkpoints):
    api = client(server)
    assert [m.id for m in api.models.list().data] == ["tiny/sft", "tiny/calc"]
    model, tok = local(checkpoints["sft"])
    shown: list[str] = []
    reply(model, tok, QUESTION, shown.append, temperature=0.0, max_new_tokens=24)
    expected = "".join(shown)
    out = api.chat.completions.create(model="tiny/sft", messages=QUESTION, temperature=0, max_tokens=24)
    assert out.choices[0].message.content == expected and expected
    assert out.usage.prompt_tokens == len(render_prompt(tok, QUESTION))
    n_tokens = len(list(stream(model, tok, render_prompt(tok, QUESTION), max_new_tokens=24, temperature=0.0)))
    assert out.usage.completion_tokens == n_tokens
    assert out.choices[0].finish_reason == ("length" if n_tokens == 24 else "stop")
    deltas = [c.choices[0].delta.content for c in api.chat.completions.create(
        model="tiny/sft", messages=QUESTION, temperature=0, max_tokens=24, stream=True) if c.choices]
    assert "".join(d for d in deltas if d) == expected and len([d for d in deltas if d]) > 1


def test_calculator_runs_inside_generation_and_round_trips(server, checkpoints):
    api = client(server)
    ask = [{"role": "user", "content": "What is 7*6?"}]
    out = api.chat.completions.create(model="tiny/calc", messages=ask, temperature=0)
    assert out.choices[0].message.content == CALC_ANSWER and out.choices[0].finish_reason == "stop"
    _, tok = local(checkpoints["calc"])
    raw = "<|calc|>7*6<|/calc|><|result|>42<|/result|>"
    assert out.usage.completion_tokens == len(tok(raw + "<|end|>", add_special_tokens=False)["input_ids"])
    chunks = api.chat.completions.create(model="tiny/calc", messages=ask, temperature=0, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == CALC_ANSWER
    assert chunks[-1].usage.total_tokens == out.usage.total_tokens
    # the shown answer sent back is mapped to the model's own tokens for the next turn
    follow = ask + [{"role": "assistant", "content": CALC_ANSWER}, {"role": "user", "content": "Thanks"}]
    assert to_raw(CALC_ANSWER) == raw
    again = api.chat.completions.create(model="tiny/calc", messages=follow, temperature=0, max_tokens=3)
    raw_follow = ask + [{"role": "assistant", "content": raw}, {"role": "user", "content": "Thanks"}]
    assert again.usage.prompt_tokens == len(render_prompt(tok, raw_follow))


def test_seed_n_stop_and_max_tokens(server):
    api = client(server)
    kw = {"model": "tiny/sft", "messages": QUESTION, "max_tokens": 12}
    a = api.chat.completions.create(**kw, temperature=1.0, seed=7, n=3)
    b = api.chat.completions.create(**kw, temperature=1.0, seed=7, n=3)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2] and len({c.message.content for c in a.choices}) > 1
    assert a.usage.completion_tokens == 36                              # 3 choices x 12 (finish: length)
    texts = ["", "", ""]
    for chunk in api.chat.completions.create(**kw, temperature=1.0, seed=7, n=3, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [c.message.content for c in a.choices]              # streamed choices kept apart
    greedy = api.chat.completions.create(**kw, temperature=0).choices[0].message.content
    stop = greedy[3:6]
    cut = api.chat.completions.create(**kw, temperature=0, stop=[stop, "never"])
    assert cut.choices[0].message.content == greedy[:greedy.index(stop)] and cut.choices[0].finish_reason == "stop"
    deltas = [c.choices[0].delta.content or "" for c in api.chat.completions.create(
        **kw, temperature=0, stop=stop, stream=True) if c.choices]
    assert "".join(deltas) == greedy[:greedy.index(stop)]
    short = api.chat.completions.create(**kw | {"max_tokens": 5}, temperature=0)
    assert short.usage.completion_tokens == 5 and short.choices[0].finish_reason == "length"


def test_shown_text_holds_back_possible_stop_strings(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = tok("the cat sat on the mat", add_special_tokens=False)["input_ids"]
    text = ShownText(lambda x: tok.decode(x, skip_special_tokens=False), ["on the m", "zzz"])
    out = "".join(text.add(i) for i in ids)
    assert text.stopped and out == "the cat sat "
    text = ShownText(lambda x: tok.decode(x, skip_special_tokens=False), ["mat!"])
    out = "".join(text.add(i) for i in ids)
    assert not text.stopped and out + text.flush() == "the cat sat on the mat"


def _expected(checkpoint, prompts, n):
    """What prompt i gives with seed i, straight from stages.lm.generation.stream."""
    model, tok = local(checkpoint)
    out = []
    for seed, messages in enumerate(prompts):
        ids = [t for t, _ in stream(model, tok, render_prompt(tok, messages), max_new_tokens=n, temperature=1.0,
                                    seed=seed)]
        out.append(shown_text(tok.decode(ids, skip_special_tokens=False)).rstrip("\ufffd"))  # half a character: left out
    return out


def test_sixteen_concurrent_streams_and_a_client_that_leaves(server, checkpoints):
    engine = next(e for e in server.engines if e.name == "tiny/sft")
    cancelled = engine.stats["cancelled"]
    prompts = [[{"role": "user", "content": f"Question number {i}?"}] for i in range(16)]
    expected = _expected(checkpoints["sft"], prompts, n=16)
    assert len(set(expected)) == 16                         # interleaving would show
    with httpx.Client(timeout=60) as raw:                   # a long stream, left after two events
        leaver = raw.stream("POST", server.url + "v1/chat/completions",
                            json={"model": "tiny/sft", "messages": QUESTION, "max_tokens": 200, "stream": True})
        response = leaver.__enter__()
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        results: list[str | None] = [None] * 16

        def one(i: int) -> None:
            chunks = client(server).chat.completions.create(model="tiny/sft", messages=prompts[i], max_tokens=16,
                                                            temperature=1.0, seed=i, stream=True)
            results[i] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        leaver.__exit__(None, None, None)                   # the client disconnects mid-stream
        for t in threads:
            t.join(timeout=120)
    assert results == expected
    for _ in range(200):
        if engine.stats["cancelled"] > cancelled:
            break
        threading.Event().wait(0.05)
    assert engine.stats["cancelled"] == cancelled + 1


def test_bad_input_is_400_with_an_openai_error_body_and_the_server_keeps_serving(server):
    url = server.url + "v1/chat/completions"
    ok = {"model": "tiny/sft", "messages": QUESTION, "max_tokens": 2}
    cases = [(b'{"model": "tiny/sft", "messages": [', None, "invalid_json"),
             (ok | {"model": "gpt-9"}, "model", "model_not_found"),
             (ok | {"max_tokens": -1}, "max_tokens", "invalid_value"),
             (ok | {"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role", "invalid_value"),
             (ok | {"max_tokens": 10_000}, "max_tokens", "context_length_exceeded")]
    for body, param, code in cases:
        kwargs = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) else {"json": body}
        r = httpx.post(url, **kwargs)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert httpx.post(url, content=b"{}", headers={"Content-Type": "text/plain"}).status_code == 415
    assert httpx.get(server.url + "nope").json()["error"]["type"] == "not_found"
    assert httpx.post(url, json=ok, headers={"Host": "evil.example"}).status_code == 400   # DNS rebinding
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client(server).chat.completions.create(model="tiny/sft", messages=QUESTION, max_tokens=-5)
    assert httpx.post(url, json=ok).json()["usage"]["completion_tokens"] == 2


def test_serve_cli_refuses_bad_input_in_one_line(checkpoints, tmp_path, capsys):
    import socket

    from pipeline.cli import main as lifecycle
    assert lifecycle(["serve", checkpoints["sft"], checkpoints["sft"]]) == 2
    assert "checkpoints must differ" in capsys.readouterr().err
    assert lifecycle(["serve", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert "is not a model dir" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert lifecycle(["serve", checkpoints["sft"], "--port", str(busy.getsockname()[1])]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --host/--port: cannot listen on 127.0.0.1:") and err.count("\n") == 1
