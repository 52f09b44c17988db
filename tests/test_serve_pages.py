"""The chat page and battle mode in headless Chromium, against a live server; a vote reaches the arena.

Set LIFECYCLE_SCREENSHOTS=DIR to keep a screenshot of each page there.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from pipeline.cli import main as lifecycle
from tests import serve_helpers

checkpoints, server = serve_helpers.checkpoints, serve_helpers.server  # the fixtures


@pytest.fixture(scope="module")
def browser():
    if shutil.which("chromium") is None:
        pytest.skip("Debian chromium not installed (apt-get install -y --no-install-recommends chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                    "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def screenshot(page, name: str) -> None:
    if os.environ.get("LIFECYCLE_SCREENSHOTS"):
        Path(os.environ["LIFECYCLE_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(os.environ["LIFECYCLE_SCREENSHOTS"]) / name), full_page=True)


def test_chat_page_streams_a_reply_and_shows_the_calculator(server, browser):
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    page.goto(server.url)
    page.wait_for_selector("body[data-ready='1']")
    assert page.input_value("#system") == "You are a tiny test model."      # the model's own system prompt
    # a random model, 40 tokens; the worker is held after its 6th token: the first ones must already show
    engine = next(e for e in server.engines if e.name == "tiny/sft")
    gate, calls = threading.Event(), []

    def held_decode(ids, decode=engine.decode):
        calls.append(1)
        if len(calls) == 6:
            gate.wait(60)
        return decode(ids)

    engine.decode = held_decode
    try:
        page.fill("#max_tokens", "40")
        page.fill("#input", "Tell me about the quick brown fox.")
        page.keyboard.press("Enter")
        page.wait_for_function("(() => { const m = document.querySelector('.msg.assistant');"
                               " return m && m.dataset.state === 'streaming' && m.querySelector('.text').textContent; })()")
        partial = page.inner_text(".msg.assistant .text")
    finally:
        gate.set()
        del engine.decode
    page.wait_for_selector(".msg.assistant[data-state='done']")
    final = page.inner_text(".msg.assistant .text")
    assert partial and final.startswith(partial) and len(final) > len(partial)
    assert page.inner_text(".msg.user .text") == "Tell me about the quick brown fox."
    # the calculator model: its call and the tool's result are shown apart from the text
    page.select_option("#model", "tiny/calc")
    page.fill("#input", "What is 7*6?")
    page.click("#send")
    page.wait_for_selector(".msg.assistant[data-state='done'] .calc")
    assert page.inner_text(".calc .calc-expr") == "7*6" and page.inner_text(".calc .calc-result") == "42"
    page.fill("#input", "And again?")                                       # a second turn round-trips the tool span
    page.click("#send")
    page.wait_for_function("document.querySelectorAll(\".msg.assistant[data-state='done'] .calc\").length === 2")
    screenshot(page, "chat.png")


def test_battle_vote_lands_in_the_log_and_the_arena_counts_it(server, checkpoints, browser, tmp_path, capsys):
    votes = Path(checkpoints["sft"]).parent / "battles.jsonl"
    assert votes.read_text() == ""                                          # the server opened it; no votes yet
    page = browser.new_page(viewport={"width": 1100, "height": 640})
    page.goto(server.url + "battle")
    page.wait_for_selector("body[data-ready='1']")
    page.fill("#max_tokens", "24")
    page.fill("#prompt", "What is 7*6?")
    page.click("#go")
    page.wait_for_selector("#vote-a:not([disabled])")
    page.click("#vote-a")
    page.wait_for_selector("#reveal:has-text('Vote saved')")
    assert page.is_disabled("#vote-b") and page.is_disabled("#vote-tie")      # one vote per battle
    screenshot(page, "battle.png")
    records = [json.loads(x) for x in votes.read_text().splitlines()]
    assert len(records) == 1
    vote = records[-1]
    assert vote["winner"] == "a" and {vote["model_a"], vote["model_b"]} == {"tiny/sft", "tiny/calc"}
    assert f"A was {vote['model_a']}, B was {vote['model_b']}" in page.inner_text("#reveal")
    calc_side = "a" if vote["model_a"] == "tiny/calc" else "b"
    assert vote[f"answer_{calc_side}"] == "[calc 7*6 = 42]"                  # what the server generated
    assert page.inner_text(f"#answer-{calc_side} .text") == "calc 7*6 = 42"
    # the arena's human judge counts the vote as one game won by A's checkpoint
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: tiny\noutput_dir: {tmp_path / 'runs'}\ntracking: {{wandb: false}}\n")
    ckpts = [str(Path(checkpoints[k]).resolve()) for k in ("sft", "calc")]
    assert lifecycle(["arena", *ckpts, "--judge", "human", "--votes", str(votes), "--recipe", str(recipe),
                      "--prompts", "1", "--bootstrap", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("arena: 1 games judged by human") and "battle votes" in lines[0]
    winner = next(line for line in lines[2:] if line.startswith(vote["checkpoint_a"]))
    assert winner.split()[-3:] == ["1", "0", "0"]
