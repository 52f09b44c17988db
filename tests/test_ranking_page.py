"""The ranking page: log replay, idempotency, two tabs, and end to end in headless Chromium."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import UserError
from reward.rank_queue import margins, order_by_uncertainty
from reward.ranking import human_ranker
from reward.ranking_page import RankingLog, expand_order, load_prompts, read_rankings

ROOT = Path(__file__).resolve().parent.parent


def write_rollouts(path: Path, n_prompts: int = 4, k: int = 3) -> Path:
    with open(path, "w") as fh:
        for p in range(n_prompts):
            fh.write(json.dumps({
                "id": f"p{p}", "family": "arithmetic",
                "prompt_messages": [{"role": "user", "content": f"What is {p}+{p}?"}],
                "completions": [{"text": f"prompt {p} completion {c}\nAnswer: {p + c}"} for c in range(k)],
                "policy": "fp", "sampling": {"temperature": 1.0}}) + "\n")
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_log_actions_replay_and_idempotency(tmp_path):
    prompts = load_prompts(write_rollouts(tmp_path / "r.jsonl"))
    log = RankingLog(tmp_path / "rank.jsonl", prompts)
    assert log.state()["current"]["id"] == "p0"
    assert log.act("rank", {"submission": "a", "prompt_id": "p0", "order": [2, 0, 1]})[0] == 200
    assert log.act("rank", {"submission": "a", "prompt_id": "p0", "order": [2, 0, 1]})[1]["duplicate"]
    status, body = log.act("rank", {"submission": "b", "prompt_id": "p0", "order": [0, 1, 2]})
    assert status == 409 and body["current"]["id"] == "p1"          # a second tab's late submit
    assert log.act("rank", {"submission": "c", "prompt_id": "p1", "order": [0, 0, 1]})[0] == 400
    assert log.act("skip", {"submission": "d", "prompt_id": "p1"})[1]["current"]["id"] == "p2"
    assert log.act("undo", {"submission": "e"})[1]["current"]["id"] == "p1"   # the skip is undone
    log.act("skip", {"submission": "f", "prompt_id": "p1"})
    for sub, pid in (("g", "p2"), ("h", "p3")):
        log.act("rank", {"submission": sub, "prompt_id": pid, "order": [0, 1, 2]})
    assert log.state()["current"]["id"] == "p1"                       # skipped prompts come back last
    log.act("undo", {"submission": "i"})                             # undoes the ranking of p3
    log.close()
    ranked = read_rankings(tmp_path / "rank.jsonl")
    assert [(r["prompt_id"], r["order"]) for r in ranked] == [("p0", [2, 0, 1]), ("p2", [0, 1, 2])]
    assert ranked[0]["completions"][2] == "prompt 0 completion 2\nAnswer: 2"
    assert len(lines(tmp_path / "rank.jsonl")) == 7                  # a, d, e, f, g, h, i: no duplicates


def test_partial_line_cut_and_single_writer(tmp_path):
    prompts = load_prompts(write_rollouts(tmp_path / "r.jsonl"))
    out = tmp_path / "rank.jsonl"
    log = RankingLog(out, prompts)
    log.act("rank", {"submission": "a", "prompt_id": "p0", "order": [0, 1, 2]})
    with pytest.raises(UserError, match="another ranking server"):
        RankingLog(out, prompts)
    log.close()
    with open(out, "a") as fh:
        fh.write('{"event": "rank", "id": "half')                     # killed mid-write
    log = RankingLog(out, prompts)
    log.act("rank", {"submission": "b", "prompt_id": "p1", "order": [0, 1, 2]})
    log.close()
    assert [r["id"] for r in lines(out)] == ["a", "b"]


@pytest.mark.parametrize("record, message", [
    ({"event": "rank", "id": "a", "prompt_id": "p0", "order": [0, 2], "completions": ["x", "y"]}, "expected a rank event .* a permutation"),
    ({"event": "undo", "id": "a"}, "expected a undo event with 'id' and 'target' strings"),
])
def test_a_bad_rankings_log_names_the_line(tmp_path, record, message):
    log = tmp_path / "rank.jsonl"
    log.write_text(json.dumps({"event": "skip", "id": "s", "prompt_id": "p1"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(UserError, match=f"rank.jsonl:2: {message}"):
        read_rankings(log)
    log.write_bytes(b'{"event": "skip", "id": "s", "prompt_id": "p\xff"}\n')
    with pytest.raises(UserError, match=r"rank.jsonl:1: not UTF-8"):
        read_rankings(log)


def write_duplicates(path: Path) -> Path:
    """p0: two distinct texts, one sampled twice; p1: all three identical; p2: three distinct."""
    texts = {"p0": ["X\nAnswer: 1", "Y\nAnswer: 2", "X\nAnswer: 1"], "p1": ["Z"] * 3, "p2": ["a", "b", "c"]}
    path.write_text("".join(json.dumps({"id": pid, "family": "arithmetic",
                                        "prompt_messages": [{"role": "user", "content": f"Question {pid}?"}],
                                        "completions": [{"text": t} for t in ts]}) + "\n" for pid, ts in texts.items()))
    return path


def test_rank_expansion_gives_duplicates_their_twins_rank():
    texts = ["A", "B", "A", "C", "B"]
    assert expand_order([3, 0, 1], texts) == ([3, 0, 2, 1, 4], [1, 2, 1, 0, 2])     # C > A (x2) > B (x2)
    assert expand_order([2, 3, 0, 4, 1], texts) == ([0, 2, 3, 1, 4], [0, 2, 0, 1, 2])  # a full permutation: first A counts
    assert expand_order([1, 0], ["u", "v"]) == ([1, 0], [1, 0])                       # no duplicates: as before


def test_duplicates_shown_once_all_identical_prompts_left_out(tmp_path):
    log = RankingLog(tmp_path / "rank.jsonl", load_prompts(write_duplicates(tmp_path / "r.jsonl")))
    state = log.state()
    assert (state["total"], state["identical"]) == (2, 1)                     # p1 is not in the queue
    assert sorted(c["index"] for c in state["current"]["completions"]) == [0, 1]  # X once, Y once
    assert log.act("rank", {"submission": "a", "prompt_id": "p0", "order": [0, 2]})[0] == 400   # 2 is X's twin
    assert log.act("rank", {"submission": "b", "prompt_id": "p1", "order": [0]})[0] == 400      # not in the queue
    status, body = log.act("rank", {"submission": "c", "prompt_id": "p0", "order": [1, 0]})
    assert status == 200 and body["current"]["id"] == "p2"                    # p1 skipped over
    log.close()
    (record,) = read_rankings(tmp_path / "rank.jsonl")
    assert record["ranks"] == [1, 0, 1] and record["order"] == [1, 0, 2]
    (ranked,) = human_ranker(tmp_path / "rank.jsonl", [])
    assert ranked.ranks == [1, 0, 1] and ranked.completions == ["X\nAnswer: 1", "Y\nAnswer: 2", "X\nAnswer: 1"]


def test_uncertain_order_puts_the_smallest_top2_margin_first(tmp_path):
    prompts = load_prompts(write_duplicates(tmp_path / "r.jsonl"))
    reward = {"X\nAnswer: 1": 1.0, "Y\nAnswer: 2": 3.0, "Z": 0.0, "a": 0.5, "b": 0.2, "c": 0.45}
    calls = []

    def score(prompt_texts, completions):
        calls.append(list(completions))
        return [reward[c] for c in completions]

    assert margins(prompts, score, lambda p: p["id"]) == pytest.approx([2.0, float("inf"), 0.05])
    assert calls == [["X\nAnswer: 1", "Y\nAnswer: 2", "Z", "a", "b", "c"]]          # each distinct text once, one call
    assert [p["id"] for p in order_by_uncertainty(prompts, score, lambda p: p["id"])] == ["p2", "p0", "p1"]


def test_uncertain_order_with_a_real_reward_model_dir(tmp_path, tiny_model, tiny_tokenizer):
    from reward.model_scorer import RewardModelScorer
    from reward.rank_queue import rm_order
    from stages.data.chat import render_text
    from stages.lm.model import save_model
    from stages.rm.data import load_reward_model
    save_model(tiny_model, tiny_tokenizer, tmp_path / "sft")
    rm, tok = load_reward_model(str(tmp_path / "sft"), "cpu")
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    prompts = load_prompts(write_duplicates(tmp_path / "r.jsonl"))
    ordered = rm_order(prompts, str(tmp_path / "rm"), device="cpu", log=lambda m: None)
    scorer = RewardModelScorer(tmp_path / "rm", device="cpu")
    prompt = render_text(tok, prompts[2]["prompt_messages"], add_generation_prompt=True)
    a, b, c = sorted(scorer([prompt] * 3, ["a", "b", "c"]), reverse=True)
    p0 = scorer([render_text(tok, prompts[0]["prompt_messages"], add_generation_prompt=True)] * 2,
                ["X\nAnswer: 1", "Y\nAnswer: 2"])
    expected = ["p2", "p0"] if a - b <= abs(p0[0] - p0[1]) else ["p0", "p2"]
    assert [p["id"] for p in ordered] == expected + ["p1"]


def test_rank_command_order_arguments(tmp_path):
    from argparse import Namespace

    from pipeline.commands.rank import main as rank_main
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\noutput_dir: {tmp_path / 'runs'}\ntracking: {{wandb: false}}\n")
    args = dict(recipe=recipe, overrides=[], host="127.0.0.1", port=0, rollouts=str(write_rollouts(tmp_path / "r.jsonl")),
                out=str(tmp_path / "o.jsonl"))
    with pytest.raises(UserError, match="only with --order uncertain"):
        rank_main(Namespace(**args, order="rollouts", reward_model=str(tmp_path)))
    with pytest.raises(UserError, match="no reward model at .*runs/t/rm"):
        rank_main(Namespace(**args, order="uncertain", reward_model=None))


def test_missing_rollouts_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="lifecycle rollouts"):
        load_prompts(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------- headless Chromium, real server process
def start_server(rollouts: Path, out: Path) -> tuple[subprocess.Popen, str]:
    code = ("import sys; from reward.ranking_page import serve; "
            "serve(sys.argv[1], sys.argv[2], port=0)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(rollouts), str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    assert line.startswith("ranking page: http://127.0.0.1:"), line
    return proc, line.split()[2]


def current_order(page) -> list[int]:
    return [int(x) for x in page.eval_on_selector_all("#list li", "els => els.map(e => e.dataset.index)")]


@pytest.fixture()
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


def test_rank_two_kill_restart_resumes_at_third(tmp_path, browser):
    rollouts, out = write_rollouts(tmp_path / "r.jsonl"), tmp_path / "rankings.jsonl"
    proc, url = start_server(rollouts, out)
    try:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#list li")
        assert page.inner_text("#progress").startswith("0 / 4")
        assert page.get_attribute("#prompt", "data-prompt-id") == "p0"
        # prompt 1 by keyboard: focus the first completion, move it down twice, Enter submits
        before = current_order(page)
        page.focus("#list li:first-child")
        page.keyboard.press("Shift+ArrowDown")
        page.keyboard.press("Shift+ArrowDown")
        expected_first = before[1:] + before[:1]
        assert current_order(page) == expected_first
        page.keyboard.press("Enter")
        page.wait_for_function("document.querySelector('#progress').textContent.startsWith('1 / 4')")
        # prompt 2 by drag and drop: the last completion onto the top of the first, then the button
        assert page.get_attribute("#prompt", "data-prompt-id") == "p1"
        before = current_order(page)
        page.drag_and_drop("#list li:last-child", "#list li:first-child", target_position={"x": 20, "y": 2})
        expected_second = before[-1:] + before[:-1]
        assert current_order(page) == expected_second
        page.click("#submit")
        page.wait_for_function("document.querySelector('#progress').textContent.startsWith('2 / 4')")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ranked = read_rankings(out)
    assert [(r["prompt_id"], r["order"]) for r in ranked] == [("p0", expected_first), ("p1", expected_second)]
    assert len(lines(out)) == 2
    proc, url = start_server(rollouts, out)
    try:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#list li")
        assert page.get_attribute("#prompt", "data-prompt-id") == "p2"
        assert page.inner_text("#progress").startswith("2 / 4")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_skip_undo_and_second_tab_in_browser(tmp_path, browser):
    rollouts, out = write_rollouts(tmp_path / "r.jsonl"), tmp_path / "rankings.jsonl"
    proc, url = start_server(rollouts, out)
    try:
        tab1, tab2 = browser.new_page(), browser.new_page()
        for tab in (tab1, tab2):
            tab.goto(url)
            tab.wait_for_selector("#list li")
        tab1.click("#skip")
        tab1.wait_for_function("document.querySelector('#prompt').dataset.promptId === 'p1'")
        assert "1 skipped" in tab1.inner_text("#progress")
        tab1.keyboard.press("u")                                       # undo the skip
        tab1.wait_for_function("document.querySelector('#prompt').dataset.promptId === 'p0'")
        tab1.click("#submit")                                          # tab 1 ranks p0
        tab1.wait_for_function("document.querySelector('#prompt').dataset.promptId === 'p1'")
        tab2.click("#submit")                                          # tab 2 still shows p0: refused
        tab2.wait_for_function("document.querySelector('#prompt').dataset.promptId === 'p1'")
        assert "already ranked" in tab2.inner_text("#status")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [r["prompt_id"] for r in read_rankings(out)] == ["p0"]
    assert [r["event"] for r in lines(out)] == ["skip", "undo", "rank"]


def test_duplicate_completions_in_browser(tmp_path, browser):
    """A prompt with a completion sampled twice shows two items; a prompt of identical completions never
    shows (counted in the progress line); the submitted ranking gives the twin its rank."""
    rollouts, out = write_duplicates(tmp_path / "r.jsonl"), tmp_path / "rankings.jsonl"
    proc, url = start_server(rollouts, out)
    try:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#list li")
        assert page.get_attribute("#prompt", "data-prompt-id") == "p0"
        assert page.inner_text("#progress").startswith("0 / 2 ranked") and "1 left out" in page.inner_text("#progress")
        assert sorted(current_order(page)) == [0, 1]                      # X once, Y once
        if current_order(page)[0] != 1:                                    # put Y (index 1) on top
            page.focus("#list li:first-child")
            page.keyboard.press("Shift+ArrowDown")
        assert current_order(page) == [1, 0]
        page.click("#submit")
        page.wait_for_function("document.querySelector('#prompt').dataset.promptId === 'p2'")   # p1 never shows
        assert page.inner_text("#progress").startswith("1 / 2 ranked")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (record,) = read_rankings(out)
    assert record["prompt_id"] == "p0" and record["ranks"] == [1, 0, 1]
