"""Arena: Bradley-Terry fits against closed-form answers, bootstrap intervals, judges, the human round trip."""
from __future__ import annotations

import json
import math
from argparse import Namespace

import numpy as np
import pytest

from pipeline.commands import arena as arena_cmd
from pipeline.errors import UserError
from stages.eval import arena as A


def _games(a, b, wins_a, losses_a, ties=0, start=0):
    scores = [1.0] * wins_a + [0.0] * losses_a + [0.5] * ties
    return [A.Game(a, b, s, start + k) for k, s in enumerate(scores)]


def test_two_players_three_to_one_is_log3():
    theta = A.fit_bradley_terry(2, _games(0, 1, 75, 25), prior=0.0)
    assert theta[0] - theta[1] == pytest.approx(math.log(3), abs=1e-9)
    assert theta.sum() == pytest.approx(0, abs=1e-12)
    diff = A.elo(theta)[0] - A.elo(theta)[1]
    assert diff == pytest.approx(400 * math.log10(3), abs=1e-6)  # ~190.8 Elo


def test_three_players_recover_exact_strengths():
    # strengths 4:2:1 and win counts exactly p_i / (p_i + p_j): the MLE is the truth
    games = _games(0, 1, 10, 5) + _games(1, 2, 10, 5, start=100) + _games(0, 2, 12, 3, start=200)
    theta = A.fit_bradley_terry(3, games, prior=0.0)
    assert theta[0] - theta[1] == pytest.approx(math.log(2), abs=1e-8)
    assert theta[1] - theta[2] == pytest.approx(math.log(2), abs=1e-8)


def test_ties_are_half_wins_and_prior_keeps_perfect_records_finite():
    tied = A.fit_bradley_terry(2, _games(0, 1, 0, 0, ties=10), prior=0.0)
    assert tied[0] == pytest.approx(tied[1])
    # 6 wins + 2 ties = 7 of 8 points -> odds 7
    assert np.diff(A.fit_bradley_terry(2, _games(0, 1, 6, 0, ties=2), prior=0.0))[0] == pytest.approx(-math.log(7))
    # a perfect 10-0 record with 0.5 virtual ties each way: odds 10.5 / 0.5 = 21
    theta = A.fit_bradley_terry(2, _games(0, 1, 10, 0), prior=0.5)
    assert np.isfinite(theta).all() and theta[0] - theta[1] == pytest.approx(math.log(21), abs=1e-8)


def test_bootstrap_interval_holds_the_estimate_and_shrinks_with_data():
    small = _games(0, 1, 15, 5)
    large = _games(0, 1, 150, 50)
    rows_small = A.standings(["a", "b"], small, rounds=300, seed=1)
    rows_large = A.standings(["a", "b"], large, rounds=300, seed=1)
    for rows in (rows_small, rows_large):
        assert rows[0]["model"] == "a" and rows[0]["low"] <= rows[0]["elo"] <= rows[0]["high"]
    width = lambda rows: rows[0]["high"] - rows[0]["low"]  # noqa: E731
    assert width(rows_large) < width(rows_small)
    assert rows_small == A.standings(["a", "b"], small, rounds=300, seed=1)  # seeded
    assert (rows_small[0]["wins"], rows_small[0]["losses"], rows_small[0]["ties"]) == (15, 5, 0)
    with pytest.raises(UserError, match="no games"):
        A.standings(["a", "b"], [])


def test_games_from_scores_every_pair_every_prompt():
    games = A.games_from_scores([[1, 0, 1], [0, 0, 1], [1, 1, 0]])
    assert len(games) == 3 * 3
    assert [g.score for g in games if (g.a, g.b) == (0, 1)] == [1.0, 0.5, 0.5]
    assert [g.score for g in games if (g.a, g.b) == (1, 2)] == [0.0, 0.0, 1.0]


def test_human_pairs_round_trip_through_the_ranking_log(tmp_path):
    from reward.ranking_page import RankingLog, load_prompts, read_rankings
    from stages.data.tasks import make_tasks
    tasks = make_tasks("arithmetic", 3, 0, "test")
    answers = [[f"A{p}" for p in range(3)], [f"B{p}" for p in range(3)]]
    pairs = tmp_path / "pairs.jsonl"
    assert A.write_pairs(pairs, ["m0", "m1"], tasks, answers) == 3
    prompts = load_prompts(pairs)  # the ranking page accepts the file as rollouts
    assert [c["text"] for c in prompts[1]["completions"]] == ["A1", "B1"]
    log = RankingLog(tmp_path / "rankings.jsonl", prompts)
    for p, order in enumerate(([0, 1], [1, 0], [0, 1])):
        status, _ = log.act("rank", {"submission": f"s{p}", "prompt_id": prompts[p]["id"], "order": order})
        assert status == 200
    log.act("undo", {"submission": "u"})  # the person takes back the last one
    log.close()
    games = A.games_from_rankings(read_rankings(tmp_path / "rankings.jsonl"))
    assert games == [A.Game(0, 1, 1.0, 0), A.Game(0, 1, 0.0, 1)]


def test_identical_answers_are_ties_for_the_human_judge():
    answers = [["x", "y", "z"], ["x", "q", "z"], ["w", "y", "z"]]
    assert A.identical_ties(answers) == [A.Game(0, 1, 0.5, 0), A.Game(0, 1, 0.5, 2), A.Game(0, 2, 0.5, 1),
                                         A.Game(0, 2, 0.5, 2), A.Game(1, 2, 0.5, 2)]


def test_held_out_tasks_round_robin():
    tasks = A.held_out_tasks(["arithmetic", "spelling"], 5, seed=3)
    assert [t.family for t in tasks] == ["arithmetic", "spelling"] * 2 + ["arithmetic"]


@pytest.fixture()
def two_checkpoints(tmp_path, tiny_model_cfg, tiny_tokenizer):
    import torch

    from stages.lm.model import build_model, save_model
    dirs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = tmp_path / f"ckpt{seed}"
        save_model(build_model(tiny_model_cfg, tiny_tokenizer), tiny_tokenizer, path)
        dirs.append(str(path))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: ar\noutput_dir: {tmp_path / 'runs'}\ntracking: {{wandb: false}}\n"
                      "sft: {families: [arithmetic, identity]}\n")
    return dirs, recipe


def _args(dirs, recipe, judge):
    return Namespace(checkpoints=dirs, judge=judge, recipe=recipe, prompts=4, temperature=1.0,
                     max_new_tokens=6, bootstrap=50, votes=None)


def test_arena_cli_with_verifier_and_human_judges(two_checkpoints, capsys):
    from reward.ranking_page import RankingLog, load_prompts
    dirs, recipe = two_checkpoints
    assert arena_cmd.main(_args(dirs, recipe, "format")) == 0
    out = capsys.readouterr().out
    assert "4 games judged by format on 4 held-out prompts" in out and "elo" in out  # 1 pair x 4 prompts
    assert arena_cmd.main(_args(dirs, recipe, "verifier")) == 0  # answers come from the arena dir's cache
    assert "4 games judged by verifier" in capsys.readouterr().out
    # untrained models sample the same text under the same seed; make three of ckpt1's four answers differ,
    # so people rank three pairs and the fourth (identical texts, left out of the page) is a tie
    cache = next((recipe.parent / "runs" / "ar" / "arena").glob("*/answers.json"))
    data = json.loads(cache.read_text())
    data["answers"][1] = [a + " (b)" for a in data["answers"][1][:3]] + data["answers"][0][3:]
    cache.write_text(json.dumps(data))
    # human: the first call writes pairs, the second (after people ranked) scores them from cached answers
    assert arena_cmd.main(_args(dirs, recipe, "human")) == 0
    out = capsys.readouterr().out
    pairs = next((recipe.parent / "runs" / "ar" / "arena").glob("*/pairs.jsonl"))
    assert "4 pairs for people to judge" in out and "lifecycle rank" in out
    prompts = load_prompts(pairs)
    log = RankingLog(pairs.parent / "rankings.jsonl", prompts)
    for i, p in enumerate(prompts):
        log.act("rank", {"submission": f"s{i}", "prompt_id": p["id"], "order": [0, 1]})  # ckpt0 always wins
    log.close()
    assert arena_cmd.main(_args(dirs, recipe, "human")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "4 games judged by human" in lines[0]
    assert lines[2].startswith(dirs[0]) and lines[2].split()[-3:] == ["3", "0", "1"]


def test_arena_cli_rejects_bad_input(two_checkpoints):
    dirs, recipe = two_checkpoints
    with pytest.raises(UserError, match="two different"):
        arena_cmd.main(_args([dirs[0], dirs[0]], recipe, "verifier"))
    with pytest.raises(UserError, match="not a model dir"):
        arena_cmd.main(_args([dirs[0], str(recipe.parent / "nope")], recipe, "verifier"))
    with pytest.raises(UserError, match="unknown reward"):
        arena_cmd.main(_args(dirs, recipe, "bogus"))
