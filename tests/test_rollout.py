"""Rollouts: the RM's rollouts file (JSONL record, resuming a killed run exactly) and the RL tensor helpers."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.commands import rollouts as rollouts_cmd
from pipeline.errors import UserError
from stages.lm.generation import Completion
from stages.policy_gradient import rollout
from stages.rm import rollouts


def test_collate_masks_and_per_token_logps_match_unpadded(tiny_model):
    comps = [Completion([1, 5, 6], [7, 8, 9, 10], [0, 1, 1, 0], "", True),
             Completion([1, 5], [11, 12], [0, 0], "", False)]
    batch = rollout.collate_completions(comps, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 8, 9, 10], [1, 5, 11, 12, 0, 0, 0]]
    assert batch["completion_mask"].tolist() == [[0, 0, 0, 1, 0, 0, 1], [0, 0, 1, 1, 0, 0, 0]]  # tool tokens out
    assert batch["attention_mask"].tolist()[1] == [1, 1, 1, 1, 0, 0, 0]
    tiny_model.eval()
    with torch.no_grad():
        logps = rollout.per_token_logps(tiny_model, **batch)                                    # (N, L)
        for i, c in enumerate(comps):
            ids = torch.tensor([c.prompt_ids + c.completion_ids])
            ref = torch.log_softmax(tiny_model(input_ids=ids).logits[0].float(), -1)           # (L, V)
            for t in range(len(c.prompt_ids), ids.shape[1]):
                want = ref[t - 1, ids[0, t]].item() if batch["completion_mask"][i, t] else 0.0
                assert logps[i, t].item() == pytest.approx(want, abs=1e-5)
        # left padding gives the same numbers (positions count real tokens only)
        left = torch.tensor([[0, 0, 0, 1, 5, 11, 12]])
        mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
        cmask = torch.tensor([[0, 0, 0, 0, 0, 1, 1]])
        lp = rollout.per_token_logps(tiny_model, left, mask, cmask)
        assert lp[0, 5:].tolist() == pytest.approx(logps[1, 2:4].tolist(), abs=1e-5)


def _run(model, tok, tasks, path, policy="fp1"):
    return rollouts.make_rollouts(model, tok, tasks, path, k=2, temperature=1.0, top_p=1.0, max_new_tokens=3,
                                 seed=7, policy=policy, log=lambda m: None)


def test_rollouts_file_resumes_after_a_kill(tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(rollouts, "CHUNK_PROMPTS", 2)
    tasks = rollouts.rollout_tasks(["arithmetic", "spelling"], 5, seed=0)
    assert [t.family for t in tasks] == ["arithmetic", "spelling", "arithmetic", "spelling", "arithmetic"]
    full = _run(tiny_model, tiny_tokenizer, tasks, tmp_path / "a.jsonl")
    assert len(full) == 5 and all(len(r["completions"]) == 2 for r in full)
    rec = full[0]
    assert rec["sampling"] == {"k": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 3, "seed": 7}
    assert rec["policy"] == "fp1" and rec["tokenizer"] == rollouts.tokenizer_hash(tiny_tokenizer)
    assert rec["reference"].endswith("<|end|>") and rec["answer"] == tasks[0].answer
    # a run killed in the middle of chunk 2: two whole chunks minus a line, plus half a line
    lines = (tmp_path / "a.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "b.jsonl").write_text("".join(lines[:3]) + lines[3][:20])
    resumed = _run(tiny_model, tiny_tokenizer, tasks, tmp_path / "b.jsonl")
    assert (tmp_path / "b.jsonl").read_text() == (tmp_path / "a.jsonl").read_text()   # same file, no duplicates
    assert [r["id"] for r in resumed] == [r["id"] for r in full]
    # finished: a rerun samples nothing new; another policy moves the old file aside
    again = _run(tiny_model, tiny_tokenizer, tasks, tmp_path / "a.jsonl")
    assert again == full
    _run(tiny_model, tiny_tokenizer, tasks[:2], tmp_path / "a.jsonl", policy="fp2")
    assert (tmp_path / "a.fp1.jsonl").is_file()
    assert {json.loads(x)["policy"] for x in (tmp_path / "a.jsonl").read_text().splitlines()} == {"fp2"}


def test_policy_fingerprint_changes_with_the_weights(tmp_path, tiny_model, tiny_tokenizer):
    from stages.lm.model import save_model
    save_model(tiny_model, tiny_tokenizer, tmp_path / "m")
    first = rollouts.policy_fingerprint(tmp_path / "m")
    with torch.no_grad():
        tiny_model.model.embed_tokens.weight.add_(1.0)
    save_model(tiny_model, tiny_tokenizer, tmp_path / "m")
    assert rollouts.policy_fingerprint(tmp_path / "m") != first
    (tmp_path / "m" / "manifest.json").write_text(json.dumps({"fingerprint": "abc", "run_id": "r1"}))
    assert rollouts.policy_fingerprint(tmp_path / "m") != first


def test_unknown_family_is_a_user_error_at_load(tmp_path):
    from pipeline.errors import UserError
    from pipeline.recipe import load_recipe
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\n")
    with pytest.raises(UserError, match="rm.families: unknown family 'poetry'"):
        load_recipe(recipe, ["rm.families=[poetry]"])


def test_rollouts_cli(tmp_path, tiny_model, tiny_tokenizer):
    from argparse import Namespace

    from pipeline.errors import UserError
    from stages.lm.model import save_model
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\noutput_dir: {tmp_path / 'runs'}\n")
    with pytest.raises(UserError, match="no SFT model"):
        rollouts_cmd.main(Namespace(recipe=recipe, overrides=[]))
    save_model(tiny_model, tiny_tokenizer, tmp_path / "sft")
    args = Namespace(recipe=recipe, overrides=[f"rm.from={tmp_path / 'sft'}", "rm.num_prompts=3", "rm.k=2",
                                               "rm.max_new_tokens=3", "rm.families=[arithmetic]"])
    assert rollouts_cmd.main(args) == 0
    records = rollouts.read_rollouts(tmp_path / "runs" / "t" / "rollouts.jsonl")
    assert len(records) == 3 and {r["family"] for r in records} == {"arithmetic"}


@pytest.mark.parametrize("data, message", [
    (b'{"id": "p0", "completions": []}\n{"id": "p1", "compl\n{"id": "p2", "completions": []}\n',
     r"r.jsonl:2: not valid JSON; expected one rollout record"),
    (b'{"id": "p0", "completions": [{"text": 5}]}\n', r"r.jsonl:1: expected a rollout record"),
    (b'["p0"]\n', r"r.jsonl:1: a JSON list; expected a rollout record"),
    (b'{"id": "p0", "completions": [{"text": "caf\xe9"}]}\n', r"r.jsonl:1: not UTF-8"),
])
def test_read_rollouts_names_the_bad_line(tmp_path, data, message):
    (tmp_path / "r.jsonl").write_bytes(data)
    with pytest.raises(UserError, match=message):
        rollouts.read_rollouts(tmp_path / "r.jsonl")


def test_read_rollouts_leaves_out_a_partial_last_line(tmp_path):
    (tmp_path / "r.jsonl").write_bytes(b'{"id": "p0", "completions": [{"text": "a"}]}\n{"id": "p1", "comp')
    assert [r["id"] for r in rollouts.read_rollouts(tmp_path / "r.jsonl")] == ["p0"]
