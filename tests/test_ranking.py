"""Rankers over given completions: verifier tiers and tie rules, pairs, human logs, judge, pair datasets."""
from __future__ import annotations

import json

import pytest

from pipeline.errors import UserError
from reward.ranking import (
    collect_rankings,
    human_ranker,
    judge_ranker,
    load_pairs,
    ranking_pairs,
    ranks_from_order,
    ranks_from_scores,
    verifier_ranker,
)

GOOD = "3 + 4 = 7.\nAnswer: 7<|end|>"           # correct, well formed
CORRECT_RAMBLE = "Answer: 7\nand more<|end|>"   # correct answer, last line is not the answer: malformed
WRONG = "3 + 4 = 8.\nAnswer: 8<|end|>"          # wrong, well formed
JUNK = "three four"                             # no answer, no end


def record(texts, pid="p0"):
    return {"id": pid, "family": "arithmetic", "prompt_messages": [{"role": "user", "content": "What is 3 + 4?"}],
            "answer": "7", "meta": {}, "reference": GOOD, "completions": [{"text": t} for t in texts]}


def test_pairs_and_rank_conversions():
    assert ranking_pairs([0, 2, 1]) == [(0, 1), (0, 2), (2, 1)]
    assert ranking_pairs([0, 0, 1]) == [(0, 2), (1, 2)]           # ties give no pair
    assert len(ranking_pairs([0, 1, 2, 3, 4])) == 10             # C(5,2)
    assert ranks_from_order([2, 0, 1]) == [1, 2, 0]
    assert ranks_from_scores([0.5, 2.0, 0.5, -1.0]) == [1, 0, 1, 2]


def test_verifier_tiers_order_and_tie_rules():
    texts = [JUNK, WRONG, GOOD, CORRECT_RAMBLE, "3 + 4 is seven, so 7.\nAnswer: 7<|end|>"]
    (r,) = verifier_ranker([record(texts)], tie_break="none")
    assert r.gold == [0, 1, 3, 2, 3]
    assert r.ranks == [3, 2, 0, 1, 0]                             # the two correct+well-formed tie
    (s,) = verifier_ranker([record(texts)], tie_break="shorter")
    assert s.ranks[2] < s.ranks[4]                                # same tier: the shorter one wins
    assert [s.ranks[i] for i in (4, 3, 1, 0)] == sorted(s.ranks[i] for i in (4, 3, 1, 0))
    (t,) = verifier_ranker([record([GOOD, GOOD])], tie_break="shorter")
    assert t.ranks == [0, 0]                                      # identical texts always tie
    with pytest.raises(UserError, match="tie_break"):
        verifier_ranker([record(texts)], tie_break="longest")


def test_human_ranker_reads_the_page_log(tmp_path):
    log = tmp_path / "rankings.jsonl"
    rows = [{"event": "rank", "id": "a", "prompt_id": "p0", "order": [1, 0, 2], "completions": [WRONG, GOOD, JUNK],
             "prompt_messages": record([])["prompt_messages"], "family": "arithmetic"},
            {"event": "rank", "id": "b", "prompt_id": "p1", "order": [0, 1], "completions": [GOOD, JUNK]},
            {"event": "undo", "id": "c", "target": "b"}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rollouts = [record([WRONG, GOOD, JUNK])]
    (r,) = human_ranker(log, rollouts)
    assert r.ranks == [1, 0, 2] and r.source == "human" and r.gold == [1, 3, 0]
    with pytest.raises(UserError, match="rankings_file"):
        human_ranker(tmp_path / "missing.jsonl", rollouts)


def test_collect_rankings_mixes_sources(tmp_path):
    from pipeline.schema import RMStage
    log = tmp_path / "r.jsonl"
    log.write_text(json.dumps({"event": "rank", "id": "a", "prompt_id": "p0", "order": [0, 1],
                               "completions": [GOOD, JUNK]}) + "\n")
    cfg = RMStage(rankers=["verifier", "human"], rankings_file=str(log))
    out = collect_rankings(cfg, [record([GOOD, WRONG]), record([JUNK, GOOD], "p1")], log=lambda m: None)
    assert [(r.source, r.prompt_id) for r in out] == [("verifier", "p0"), ("verifier", "p1"), ("human", "p0")]
    with pytest.raises(UserError, match="judge_model"):
        collect_rankings(RMStage(rankers=["judge"]), [], log=lambda m: None)
    with pytest.raises(ValueError, match="unknown ranker 'oracle'"):   # the schema refuses it at load
        RMStage(rankers=["oracle"])
    with pytest.raises(UserError, match="unknown ranker"):              # and the ranker itself, if built around it
        collect_rankings(RMStage.model_construct(rankers=["oracle"]), [], log=lambda m: None)


def test_judge_ranker_with_any_chat_model_dir(tmp_path, tiny_model, tiny_tokenizer):
    from stages.lm.model import save_model
    save_model(tiny_model, tiny_tokenizer, tmp_path / "judge")
    texts = [GOOD, WRONG, JUNK]
    (r,) = judge_ranker([record(texts)], str(tmp_path / "judge"))
    assert sorted(set(r.ranks)) == list(range(len(set(r.ranks))))   # dense ranks from scores
    assert r.source == "judge" and r.gold == [3, 1, 0]
    with pytest.raises(UserError, match="judge_model"):
        judge_ranker([record(texts)], str(tmp_path / "nope"))


def test_pair_datasets_as_k2(tmp_path):
    conv = tmp_path / "uf.jsonl"
    conv.write_text(json.dumps({"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                                "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go."}]})
                    + "\n")
    (r,) = load_pairs(str(conv), 10)
    assert r.prompt_messages == [{"role": "user", "content": "Hi"}]
    assert r.completions == ["Hello!<|end|>", "Go.<|end|>"] and r.ranks == [0, 1]
    hh = tmp_path / "hh.jsonl"
    hh.write_text("".join(json.dumps({"chosen": f"Human: q{i} Assistant: a", "rejected": "Human: q Assistant: b"}) + "\n"
                          for i in range(5)))
    out = load_pairs(str(hh), 3)
    assert len(out) == 3 and out[0].prompt_messages is None and out[0].completions[0] == "Human: q0 Assistant: a"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"good": "x", "bad": "y"}) + "\n")
    with pytest.raises(UserError, match="'chosen' and 'rejected'"):
        load_pairs(str(bad), 10)
