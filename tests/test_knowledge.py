"""The knowledge probe, its SFT data, its eval and its place in the report (issue 22)."""
import json
from collections import Counter
from types import SimpleNamespace

import pytest

from pipeline.report import StageRecord
from pipeline.report_knowledge import answers_kept, table
from pipeline.schema import Data, Recipe
from stages.data.facts import RELATIONS, World
from stages.data.knowledge import SEARCH_SYSTEM, knowledge_conversations, refusal_text
from stages.data.sources import iter_split
from stages.data.special_tokens import END_RESULT, END_SEARCH, RESULT, SEARCH
from stages.eval.knowledge import _starts_with, label, outcome


def test_world_is_deterministic_with_unique_names_and_controlled_repeats():
    world = World.generate(people=60, repeats=(1, 5, 20), seed=3)
    assert world == World.generate(people=60, repeats=(1, 5, 20), seed=3)
    assert world != World.generate(people=60, repeats=(1, 5, 20), seed=4)
    names = [p.name for p in world.people]
    assert len(set(names)) == 60 and len({n.split()[1] for n in names}) == 60   # surnames are unique too
    assert Counter(p.repeats for p in world.people) == {1: 20, 5: 20, 20: 20}
    docs = world.documents()
    assert len(docs) == 20 * (1 + 5 + 20)
    person = world.people[0]
    mentions = [d for d in docs if person.name in d]
    assert len(mentions) == person.repeats
    assert all(person.statement(r) in d for d in mentions for r in RELATIONS)


def test_questions_split_by_question_and_their_cloze_starts_the_statement():
    world = World.generate(people=80, repeats=(1, 50), seed=0)
    questions = world.questions(test_share=0.3)
    assert len(questions) == 240
    by_person = {}
    for q in questions:
        by_person.setdefault(q.name, set()).add(q.split)
        assert q.statement.startswith(q.cloze + " ") and q.statement == f"{q.cloze} {q.answer}."
        assert q.name in q.text and q.text.endswith("?")
    assert sum(len(s) == 2 for s in by_person.values()) > 20    # most people have facts on both sides
    held_out = world.questions("test", test_share=0.3)
    assert 0.15 < len(held_out) / len(questions) < 0.45
    assert {q.key for q in held_out}.isdisjoint(q.key for q in world.questions("train", test_share=0.3))
    assert len(world.questions("test", test_share=0.6)) > len(held_out)


def test_facts_join_the_training_split_only(tmp_path):
    (tmp_path / "book.txt").write_text("In the beginning there was text.\n" * 200)
    plain = Data(source="local", paths=[str(tmp_path / "book.txt")])
    mixed = Data(source="local", paths=[str(tmp_path / "book.txt")], facts={"people": 10, "repeats": [2]})
    assert len(list(iter_split(mixed, 0))) == len(list(iter_split(plain, 0))) + 20
    facts = [doc for held_out, doc in iter_split(mixed, 0) if " lives in " in doc]
    assert len(facts) == 20 and all(not held_out for held_out, doc in iter_split(mixed, 0) if doc in facts)


def test_knowledge_questions_without_facts_is_refused_at_load():
    with pytest.raises(Exception, match="knowledge.questions needs facts in the corpus"):
        Recipe.model_validate({"name": "t", "sft": {"knowledge": {"questions": 10}}})
    Recipe.model_validate({"name": "t", "data": {"facts": {"people": 5}}, "sft": {"knowledge": {"questions": 10}}})


def test_probe_labels_and_answer_outcomes():
    assert [label(s, 0.8, 0.0) for s in (1.0, 0.8, 0.6, 0.2, 0.0)] == ["known", "known", "unsure", "unsure", "unknown"]
    assert _starts_with(" Karnholt. Brisa", "Karnholt") and not _starts_with(" Karnholtby", "Karnholt")
    assert _starts_with(" 1843 and", "1843") and not _starts_with(" 18434", "1843")
    q = World.generate(people=1, repeats=(1,), seed=0).questions()[0]
    assert outcome(q, f"{q.statement}\nAnswer: {q.answer}<|end|>") == "right"
    assert outcome(q, f"{q.statement}\nAnswer: {q.answer.lower()}.<|end|>") == "right"
    assert outcome(q, "Answer: Nowhere<|end|>") == "wrong"
    assert outcome(q, refusal_text(q) + "<|end|>") == "refused"
    assert outcome(q, "It is a town") == "no_answer"


class _Index:
    """A stand-in search index: the passage holding the query's name, or a miss."""
    def __init__(self, docs):
        self.docs = docs

    def tool_result(self, query):
        name = " ".join(query.split()[:2])
        return next((d for d in self.docs if name in d), "error: no passage matches")


def test_conversations_answer_known_refuse_unknown_and_drop_unsure():
    world = World.generate(people=30, repeats=(1,), seed=1)
    questions = world.questions("train")
    labels = {q.key: ("known", "unknown", "unsure")[i % 3] for i, q in enumerate(questions)}
    cfg = SimpleNamespace(refusals="probe", questions=400, search_share=0.0)
    convs = knowledge_conversations(questions, labels, cfg, None, seed=0)
    assert len(convs) == 400
    by_key = {q.key: q for q in questions}
    for where, messages in convs:
        q = by_key[where.split(":")[1] + ":" + where.split(":")[2]]
        reply = messages[-1]["content"]
        assert labels[q.key] != "unsure"
        assert reply.endswith("Answer: I don't know" if labels[q.key] == "unknown" else f"Answer: {q.answer}")
    control = knowledge_conversations(questions, labels, SimpleNamespace(refusals="none", questions=400,
                                                                         search_share=0.0), None, seed=0)
    assert not any("I don't know" in m[-1]["content"] for _, m in control)


def test_lookups_show_the_real_passage_and_answer_from_it():
    world = World.generate(people=12, repeats=(1,), seed=2)
    index = _Index(world.documents()[:6])            # half the people cannot be found
    questions = world.questions("train") + world.questions("test")
    labels = {q.key: "unknown" for q in questions}
    convs = knowledge_conversations(questions, labels, SimpleNamespace(refusals="probe", questions=300,
                                                                       search_share=0.5), index, seed=0)
    lookups = [m for _, m in convs if m[0]["content"] == SEARCH_SYSTEM]
    assert 100 < len(lookups) < 200
    found = {q.name for q in questions if any(q.name in d for d in world.documents()[:6])}
    for messages in lookups:
        reply = messages[-1]["content"]
        assert reply.startswith(SEARCH) and END_SEARCH + RESULT in reply and END_RESULT in reply
        name = messages[1]["content"]
        assert any(n in name for n in found)                 # only lookups that found the fact are kept
        assert not reply.endswith("I don't know")


def _rows(outcomes, mode="memory", label_="known"):
    return [{"key": f"k{i}", "mode": mode, "label": label_, "outcome": o} for i, o in enumerate(outcomes)]


def test_answers_kept_counts_known_questions_answered_before_and_after():
    before = _rows(["right", "right", "right", "wrong"]) + _rows(["right"], mode="search")
    after = _rows(["right", "refused", "right", "right"])
    assert answers_kept(after, before) == pytest.approx(2 / 3)
    assert answers_kept(after, _rows(["wrong"])) != answers_kept(after, _rows(["wrong"]))   # nan: nothing to keep


def test_report_table_compares_each_stage_with_the_answer_everything_control(tmp_path):
    def record(refusals, rates):
        return StageRecord("x", {"config": {"sft": {"knowledge": {"refusals": refusals}}},
                                 "metrics": {f"eval/knowledge/{k}": v for k, v in rates.items()}}, [])
    rates = {"n_known": 3, "n_unknown": 2, "acc": 0.5, "acc_known": 0.9, "false_refusal_known": 0.1,
             "refusal_unknown": 0.2, "hallucination_unknown": 0.7}
    stages = {"sft": record("probe", {**rates, "acc_search": 0.8, "acc_known_search": 1.0}),
              "sft_plain": record("none", rates), "pretrain": StageRecord("pretrain", {"metrics": {"val/bpb": 1}}, [])}
    for name, rows in (("sft", _rows(["right", "refused", "right"])), ("sft_plain", _rows(["right", "right", "right"]))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "knowledge_eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = table(tmp_path, stages)
    assert [r[:2] for r in out] == [["sft", "memory"], ["sft", "search"], ["sft_plain", "memory"]]
    assert out[0][-1] == pytest.approx(2 / 3) and out[2][-1] is None
    assert out[1][4] == 0.8 and out[1][5] == 1.0


def test_sft_stage_probes_its_start_model_trains_on_knowledge_and_reports_it(tmp_path, tiny_model, tiny_tokenizer):
    from pipeline.context import StageContext
    from pipeline.tracking import Tracker
    from stages import sft as sft_stage
    from stages.lm.model import save_model
    from stages.tools.search import load_search_index
    (tmp_path / "book.txt").write_text("In the beginning was the word.\n\nAnd the word was short.\n" * 40)
    start = tmp_path / "start"
    save_model(tiny_model, tiny_tokenizer, start)
    recipe = Recipe.model_validate({"name": "t", "data": {"source": "local", "paths": [str(tmp_path / "book.txt")],
                                                           "facts": {"people": 12, "repeats": [1, 3]}},
                                    "sft": {"from": str(start), "max_steps": 2, "micro_batch_size": 4,
                                            "families": ["identity"], "builtin_train_per_family": 4,
                                            "builtin_test_per_family": 2, "eval_max_new_tokens": 6, "eval_base": False,
                                            "max_length": 1024, "multi_turn_share": 0.0,
                                            "knowledge": {"questions": 16, "probe_samples": 2, "search_share": 0.5,
                                                          "known_at": 0.5}}})
    out = tmp_path / "sft"
    ctx = StageContext(stage="sft", out_dir=out, run_dir=tmp_path, seed=0,
                       tracker=Tracker("sft", out, tmp_path, "t", {}, None, echo=False))
    metrics = sft_stage.run(recipe, {"model": str(start)}, ctx)
    probe = [json.loads(line) for line in (out / "knowledge_probe.jsonl").read_text().splitlines()]
    assert len(probe) == 36 and {p["label"] for p in probe} <= {"known", "unknown", "unsure"}
    rows = [json.loads(line) for line in (out / "knowledge_eval.jsonl").read_text().splitlines()]
    held_out = sum(p["split"] == "test" for p in probe)
    assert Counter(r["mode"] for r in rows) == {"memory": held_out, "search": held_out}
    assert {"eval/knowledge/acc", "eval/knowledge/hallucination_unknown", "eval/knowledge/acc_search",
            "eval/knowledge/n_known"} <= metrics.keys()
    report = json.loads((out / "data_report.json").read_text())
    assert report["kept"] == 4 + 16 and report["skipped"] == 0
    index = load_search_index(out)
    world = World.generate(12, (1, 3), 0)
    assert world.people[0].statement("home") in index.tool_result(world.people[0].name + " lives")


def test_probe_command_prints_the_split_per_repeat_count_and_refuses_a_recipe_without_facts(
        tmp_path, tiny_model, tiny_tokenizer, capsys):
    from pipeline.cli import main as cli_main
    from stages.lm.model import save_model
    save_model(tiny_model, tiny_tokenizer, tmp_path / "base")
    (tmp_path / "book.txt").write_text("Some text to read.\n" * 50)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\ndata: {{source: local, paths: ['{tmp_path / 'book.txt'}'], "
                      "facts: {people: 6, repeats: [1, 2]}}\nsft: {knowledge: {probe_samples: 2}}\n")
    assert cli_main(["probe", "knowledge", str(tmp_path / "base"), "--recipe", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "18 questions about 6 people, 2 T=1 cloze samples each" in out
    assert "   1x" in out and "   2x" in out and ("[unknown]" in out or "[unsure]" in out or "[known]" in out)
    plain = tmp_path / "plain.yaml"
    plain.write_text(f"name: p\ndata: {{source: local, paths: ['{tmp_path / 'book.txt'}']}}\n")
    assert cli_main(["probe", "knowledge", str(tmp_path / "base"), "--recipe", str(plain)]) == 2
    assert "data.facts.people is 0" in capsys.readouterr().err


def test_replay_rows_are_corpus_entries_with_the_loss_on_every_token(tiny_tokenizer):
    from stages.data.knowledge import replay_examples
    world = World.generate(people=5, repeats=(2,), seed=0)
    rows = replay_examples(world, 7, tiny_tokenizer, seed=0)
    assert len(rows) == 7 and rows == replay_examples(world, 7, tiny_tokenizer, seed=0)
    docs = set(world.documents())
    for ids, labels in rows:
        assert ids == labels and ids[0] == tiny_tokenizer.bos_token_id
        assert tiny_tokenizer.decode(ids[1:]) in docs
    assert replay_examples(world, 0, tiny_tokenizer, seed=0) == []
