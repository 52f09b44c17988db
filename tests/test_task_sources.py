"""Task sources: spec parsing and load-time errors, GSM8K/MATH/Q&A/multiple-choice rows, reasoning-gym, splits,
verifiers, the hub path (datasets.load_dataset serving local files in the hub layouts), and the CLI's one-line
errors for bad sources (exit 2, nothing written)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.recipe import load_recipe
from stages.data.chat import IGNORE, render_training
from stages.data.tasks import Task, score
from stages.data.tasks.qa import calculator_calls, gsm8k_task
from stages.data.tasks.sources import label_of, load_tasks, stage_sources
from stages.data.tasks.spec import parse_source

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
GYM_ADD = "gym:basic_arithmetic?min_terms=2&max_terms=2&max_digits=2&operators=[+,-]&allow_parentheses=false"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def gsm8k_rows(n: int, start: int = 0) -> list[dict]:
    return [{"question": f"Ann has {a} pens and buys {a + 3} more. How many pens?",
             "answer": f"She has {a} + {a + 3} = <<{a}+{a + 3}={2 * a + 3}>>{2 * a + 3} pens.\n#### {2 * a + 3}"}
            for a in range(start, start + n)]


# ---------------------------------------------------------------- specs
def test_specs_parse_with_labels_hub_configs_and_gym_params():
    s = parse_source("gsm8k:openai/gsm8k:main@train")
    assert (s.kind, s.name, s.config, s.split, s.label, s.local) == ("gsm8k", "openai/gsm8k", "main", "train",
                                                                      "gsm8k", False)
    assert parse_source("arc:allenai/ai2_arc:ARC-Challenge").label == "ai2_arc_arc_challenge"
    assert parse_source("qa:data/my-qa.jsonl").label == "my-qa" and parse_source("qa:data/my-qa.jsonl").local
    assert parse_source("gsm8k:x.parquet?label=mine").label == "mine"
    g = parse_source(GYM_ADD)
    assert (g.kind, g.name, g.label) == ("gym", "basic_arithmetic", "basic_arithmetic")
    assert dict(g.params)["operators"] == ["+", "-"] and dict(g.params)["max_terms"] == 2
    bare, full = parse_source("arithmetic"), parse_source("builtin:arithmetic")
    assert (bare.kind, bare.name, bare.label) == (full.kind, full.name, full.label) == ("builtin",) + ("arithmetic",) * 2


@pytest.mark.parametrize("spec, message", [
    ("gmy:basic_arithmetic", "unknown task kind 'gmy' — did you mean 'gym'?"),
    ("builtin:arithmetc", "unknown built-in family 'arithmetc' — did you mean 'arithmetic'?"),
    ("gym:basic_arithmetc", "unknown gym dataset 'basic_arithmetc' — did you mean 'basic_arithmetic'?"),
    ("gym:basic_arithmetic?max_term=2", "has no parameter 'max_term' — did you mean 'max_terms'?"),
    ("gym:basic_arithmetic?seed=3", "seed= needs size= (a fixed pool of items)"),
    ("gym:basic_arithmetic?size=0", "size= expected a whole number >= 1, got 0"),
    ("gym:basic_arithmetic?min_terms=5&max_terms=2", "bad parameters for gym dataset 'basic_arithmetic'"),
    ("gsm8k:data.jsonl?limit=3", "unknown option 'limit'; gsm8k sources take only label="),
    ("gsm8k:notahubid", "neither a local .jsonl/.json/.parquet file nor a hub id"),
    ("gsm8k", "expected KIND:NAME"),
])
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=None) as info:
        parse_source(spec)
    assert message in str(info.value)


def test_recipe_errors_name_file_line_and_list_item(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: t\nrl:\n  tasks:\n    - builtin:arithmetic\n    - gym:basic_arithmetc\n")
    with pytest.raises(UserError) as info:
        load_recipe(path)
    assert str(info.value) == (f"{path}:5: rl.tasks[1]: 'gym:basic_arithmetc': unknown gym dataset "
                               "'basic_arithmetc' — did you mean 'basic_arithmetic'?")
    path.write_text("name: t\nsft:\n  tasks: []\n")
    with pytest.raises(UserError, match=rf"^{path}:3: sft.tasks: empty task set"):
        load_recipe(path)
    path.write_text("name: t\nrm:\n  families: [arithmetic]\n  tasks: [builtin:spelling]\n")
    with pytest.raises(UserError, match="rm: set tasks or families, not both"):
        load_recipe(path)
    path.write_text("name: t\nsft:\n  tasks: [gsm8k:a.jsonl, gsm8k:b/a.jsonl]\n")
    with pytest.raises(UserError, match=r"both labelled 'a'; add \?label=NAME"):
        load_recipe(path)
    path.write_text("name: t\nsft:\n  tasks: [builtin:spelling]\n  family_weights: {spelin: 2}\n")
    with pytest.raises(UserError, match="'spelin' is not the label of one of sft's task sources — did you mean"):
        load_recipe(path)


def test_families_are_the_builtin_shorthand(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: t\nrl:\n  families: [arithmetic]\nsft:\n  tasks: [builtin:spelling, builtin:arithmetic]\n")
    recipe = load_recipe(path)
    assert stage_sources(recipe, "rl") == ["arithmetic"]
    assert [label_of(s) for s in stage_sources(recipe, "rl_eval")][:6] == [
        "arithmetic", "spelling", "decimal_compare", "calculator", "identity", "unknown"]
    assert [label_of(s) for s in stage_sources(recipe, "sft_eval")] == ["spelling", "arithmetic"]
    a, b = load_tasks("arithmetic", 5, 3, "train"), load_tasks("builtin:arithmetic", 5, 3, "train")
    assert [t.messages for t in a] == [t.messages for t in b]


# ---------------------------------------------------------------- GSM8K rows
def test_gsm8k_row_becomes_calculator_calls_exactly_where_the_annotations_were(tiny_tokenizer):
    row = {"question": "Natalia sold clips to 48 friends in April, and half as many in May. How many in all?",
           "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                     "Natalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72"}
    task = gsm8k_task(row, "gsm8k")
    content = task.messages[-1]["content"]
    assert content == ("Natalia sold 48/2 = <|calc|>48/2<|/calc|><|result|>24<|/result|> clips in May.\n"
                       "Natalia sold 48+24 = <|calc|>48+24<|/calc|><|result|>72<|/result|> clips altogether.\n"
                       "Answer: 72")
    assert task.answer == "72" and task.prompt_messages() == [{"role": "user", "content": row["question"]}]
    ids, labels = render_training(tiny_tokenizer, task.messages, 1000)
    start = ids.index(tiny_tokenizer.convert_tokens_to_ids("<|assistant|>")) + 1
    answer = list(zip(ids[start:], labels[start:]))
    masked = tiny_tokenizer.decode([i for i, lab in answer if lab == IGNORE])
    trained = tiny_tokenizer.decode([i for i, lab in answer if lab != IGNORE])
    assert masked == "<|result|>24<|/result|><|result|>72<|/result|>"   # the tool's output: context, not target
    assert trained == ("Natalia sold 48/2 = <|calc|>48/2<|/calc|> clips in May.\n"
                       "Natalia sold 48+24 = <|calc|>48+24<|/calc|> clips altogether.\nAnswer: 72<|end|>")
    assert score(task, content + "<|end|>") == 1.0


def test_annotations_our_calculator_refuses_are_dropped_and_their_text_kept():
    assert calculator_calls("It costs 3 x 4 = <<3x4=12>>12 dollars.") == "It costs 3 x 4 = 12 dollars."
    assert calculator_calls("$<<2*3=6>>6 each") == "$<|calc|>2*3<|/calc|><|result|>6<|/result|> each"
    assert calculator_calls("<<7/2=3.5>>3.5") == "<|calc|>7/2<|/calc|><|result|>3.5<|/result|>"


@pytest.mark.parametrize("final, right", [("1,234", ["1,234", "1234", "1234.0", "$1,234", "1234 apples"]),
                                          ("-5", ["-5", "-5.00"]), ("3.50", ["3.50", "3.5", "$3.50"])])
def test_gsm8k_answers_are_verified_by_value(final, right):
    task = gsm8k_task({"question": "q?", "answer": f"work\n#### {final}"}, "gsm8k")
    for got in right:
        assert score(task, f"some working\nAnswer: {got}<|end|>") == 1.0, got
    assert score(task, f"#### {right[0]}") == 1.0           # GSM8K's own final line counts too
    assert score(task, "Answer: 1235<|end|>") == 0.0         # wrong
    assert score(task, "I think it is 1234 or -5 or 3.5") == 0.0   # no answer line: missing
    assert score(task, "Answer: <|end|>") == 0.0 and score(task, "") == 0.0


# ---------------------------------------------------------------- other layouts and verifiers
def test_math_rows_take_the_boxed_answer_and_compare_latex_loosely(tmp_path):
    path = write_jsonl(tmp_path / "math.jsonl", [
        {"problem": "Simplify $\\frac{6}{8}$.", "solution": "Divide by 2: $\\boxed{\\frac{3}{4}}$."},
        {"problem": "What is $2^{10}$?", "solution": "It is $\\boxed{1024}$.", "answer": "1024"},
        {"problem": "Set?", "solution": "So $\\boxed{\\{1, 2\\}}$."}])
    tasks = [t for split in ("train", "test") for t in load_tasks(f"math:{path}", 10, 0, split)]
    by_q = {t.prompt_messages()[0]["content"]: t for t in tasks}
    frac = by_q["Simplify $\\frac{6}{8}$."]
    assert frac.answer == "\\frac{3}{4}" and frac.messages[-1]["content"].endswith("Answer: \\frac{3}{4}")
    assert score(frac, "Answer: $\\dfrac{3}{4}$") == 1.0 and score(frac, "Answer: \\boxed{\\frac 34}") == 0.0
    assert score(by_q["What is $2^{10}$?"], "Answer: 1,024") == 1.0
    assert by_q["Set?"].answer == "\\{1, 2\\}"


@pytest.mark.parametrize("kind, file", [("arc", "arc.jsonl"), ("mmlu", "mmlu.parquet"), ("hellaswag", "hellaswag.jsonl")])
def test_multiple_choice_rows_list_lettered_choices_and_accept_letter_or_text(kind, file):
    from stages.data.tasks.rows import pool
    tasks = [t for split in ("train", "test") for t in pool(parse_source(f"{kind}:{DATA / file}"), split)]
    import pyarrow.parquet as pq
    rows = pq.read_table(DATA / file).num_rows if file.endswith(".parquet") else len((DATA / file).read_text().splitlines())
    assert len(tasks) == rows  # every row of the sample file, on one side or the other
    for task in tasks:
        question, choices = task.prompt_messages()[0]["content"], task.meta["choices"]
        assert "A. " in question and "B. " in question and question.endswith("letter of the right choice.")
        assert "Answer:" not in question
        gold = choices["ABCDEFGH".index(task.answer)]
        assert score(task, f"Answer: {task.answer}") == score(task, f"Answer: ({task.answer.lower()})") == 1.0
        assert score(task, f"Answer: {gold}") == 1.0
        wrong = next(c for c in "ABCD" if c != task.answer)
        assert score(task, f"Answer: {wrong}") == 0.0 and score(task, "no answer") == 0.0


def test_plain_qa_rows_verify_numbers_by_value_and_text_loosely(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"Q{i}?", "answer": a, "solution": "Think."}
                                              for i, a in enumerate(["1,000", "Paris", "0.5"] * 20)])
    tasks = load_tasks(f"qa:{path}", 100, 0, "train") + load_tasks(f"qa:{path}", 100, 0, "test")
    assert len(tasks) == 60
    for task in tasks:
        assert task.messages[-1]["content"] == f"Think.\nAnswer: {task.answer}"
        assert score(task, task.messages[-1]["content"]) == 1.0
    paris = next(t for t in tasks if t.answer == "Paris")
    assert score(paris, "Answer: paris.") == 1.0 and score(paris, "Answer: Lyon") == 0.0
    assert score(next(t for t in tasks if t.answer == "1,000"), "Answer: 1000") == 1.0


# ---------------------------------------------------------------- splits
def test_file_splits_are_disjoint_deterministic_and_seeded_picks(tmp_path):
    path = write_jsonl(tmp_path / "gsm.jsonl", gsm8k_rows(300))
    train = load_tasks(f"gsm8k:{path}", 1000, 0, "train")
    test = load_tasks(f"gsm8k:{path}", 1000, 0, "test")
    q = lambda ts: {t.prompt_messages()[0]["content"] for t in ts}  # noqa: E731
    assert len(train) + len(test) == 300 and not q(train) & q(test)
    assert 30 <= len(test) <= 90   # ~20% held out by hash
    assert [t.messages for t in load_tasks(f"gsm8k:{path}", 10, 1, "train")] == \
        [t.messages for t in load_tasks(f"gsm8k:{path}", 10, 1, "train")]
    assert q(load_tasks(f"gsm8k:{path}", 10, 1, "train")) != q(load_tasks(f"gsm8k:{path}", 10, 2, "train"))
    other = write_jsonl(tmp_path / "copy.jsonl", gsm8k_rows(300)[::-1])  # same questions, other file: same sides
    assert q(load_tasks(f"gsm8k:{other}", 1000, 0, "test")) == q(test)


def test_gym_tasks_split_score_and_rescore_from_a_rollout_record():
    from reward.ranking import _task, verifier_tier
    train = load_tasks(GYM_ADD, 60, 5, "train")
    test = load_tasks(GYM_ADD, 200, 5, "test")
    questions = lambda ts: [t.prompt_messages()[0]["content"] for t in ts]  # noqa: E731
    assert len(test) == 200 and len(set(questions(test))) == 200 and not set(questions(train)) & set(questions(test))
    assert [t.messages for t in load_tasks(GYM_ADD, 60, 5, "train")] == [t.messages for t in train]
    for task in test[:20]:
        assert task.family == "basic_arithmetic" and task.messages[-1]["content"] == f"Answer: {task.answer}"
        assert score(task, f"Answer: {task.answer}<|end|>") == 1.0
        assert score(task, f"Answer: {int(task.answer) + 1}<|end|>") == 0.0   # gym's partial credit is not right
        record = json.loads(json.dumps({"family": task.family, "prompt_messages": task.prompt_messages(),
                                        "answer": task.answer, "meta": task.meta}))
        assert verifier_tier(_task(record), f"Answer: {task.answer}<|end|>") == 3


def test_gym_size_makes_a_fixed_pool_split_80_20():
    spec = "gym:basic_arithmetic?max_terms=2&max_digits=2&size=150&seed=4"
    train, test = load_tasks(spec, 1000, 0, "train"), load_tasks(spec, 1000, 0, "test")
    assert len(train) + len(test) == 150 and 10 <= len(test) <= 50
    assert not {t.prompt_messages()[0]["content"] for t in train} & {t.prompt_messages()[0]["content"] for t in test}
    assert {t.answer for t in load_tasks(spec, 1000, 9, "test")} == {t.answer for t in test}   # the pool, reshuffled
    assert test[0].meta["gym_params"] == {"max_terms": 2, "max_digits": 2}


def test_gym_worked_solution_comes_from_answer_cot():
    (task,) = load_tasks("gym:gsm_symbolic", 1, 0, "train")
    content = task.messages[-1]["content"]
    assert "####" not in content and content.endswith(f"\nAnswer: {task.answer}") and len(content.split("\n")) > 2
    assert score(task, content + "<|end|>") == 1.0


# ---------------------------------------------------------------- the hub path, offline
def serve_hub(monkeypatch, tables: dict):
    """datasets.load_dataset answering (id, config, split) from rows written in the hub's column layout."""
    import datasets
    calls = []

    def fake(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        if (path, name, split) not in tables:
            raise FileNotFoundError(f"no fixture for {path} {name} {split}")
        return datasets.Dataset.from_list(tables[(path, name, split)])
    monkeypatch.setattr(datasets, "load_dataset", fake)
    return calls


def test_hub_gsm8k_reads_the_hub_train_and_test_splits(monkeypatch):
    calls = serve_hub(monkeypatch, {("openai/gsm8k", "main", "train"): gsm8k_rows(20),
                                    ("openai/gsm8k", "main", "test"): gsm8k_rows(5, start=100)})
    spec = "gsm8k:openai/gsm8k?label=hubgsm"
    train, test = load_tasks(spec, 100, 0, "train"), load_tasks(spec, 100, 0, "test")
    assert (len(train), len(test)) == (20, 5) and {t.family for t in train} == {"hubgsm"}
    assert ("openai/gsm8k", "main", "train") in calls and ("openai/gsm8k", "main", "test") in calls
    assert "<|calc|>" in train[0].messages[-1]["content"] and test[0].meta["where"].startswith("hub:openai/gsm8k[test]")
    both = load_tasks("gsm8k:openai/gsm8k@train?label=hubtrain", 100, 0, "train") + \
        load_tasks("gsm8k:openai/gsm8k@train?label=hubtrain", 100, 0, "test")
    assert len(both) == 20   # @split: one hub split, hash-split 80/20


def test_hub_id_offline_is_one_line():
    with pytest.raises(UserError) as info:
        load_tasks("gsm8k:openai/gsm8k?label=offline", 3, 0, "train")
    message = str(info.value)
    assert "\n" not in message and "cannot load hub dataset 'openai/gsm8k' (config main, split train)" in message


# ---------------------------------------------------------------- bad files and the CLI
@pytest.mark.parametrize("lines, expected", [
    ([{"question": "q?", "answer": "a\n#### 3"}, {"question": "q2?"}],
     ":2: expected a non-empty text column 'answer' (GSM8K layout: question, answer)"),
    ([{"question": "q?", "answer": "a\n#### 3"}, {"question": "q2?", "answer": "no final line"}],
     ":2: expected the 'answer' to end with '#### <number>'"),
    ([{"question": "q?", "answer": "a\n#### 3"}, "{not json"], ":2: bad JSON"),
])
def test_bad_rows_are_one_line_with_file_and_line(tmp_path, lines, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(UserError) as info:
        load_tasks(f"gsm8k:{path}", 5, 0, "train")
    assert str(info.value).startswith(f"{path}{expected}")


def _recipe(tmp_path: Path, rl_tasks: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\noutput_dir: {tmp_path / 'runs'}\ntracking: {{wandb: false}}\n"
                    f"rl:\n  tasks: {rl_tasks}\n")
    return path


@pytest.mark.parametrize("rl_tasks, expected", [
    ("[gsm8k:{dir}/bad.jsonl]", "error: {dir}/bad.jsonl:2: expected a non-empty text column 'answer'"),
    ("[gsm8k:{dir}/empty.jsonl]", "error: gsm8k:{dir}/empty.jsonl: no rows; expected gsm8k rows (an empty task set)"),
    ("[gsm8k:{dir}/missing.jsonl]", "error: {dir}/missing.jsonl: no such file"),
    ("['gsm8k:openai/gsm8k?label=x']", "error: gsm8k:openai/gsm8k?label=x: cannot load hub dataset 'openai/gsm8k'"),
    ("[gym:no_such_set]", "error: {recipe}:5: rl.tasks[0]: 'gym:no_such_set': unknown gym dataset 'no_such_set'"),
    ("[]", "error: {recipe}:5: rl.tasks: empty task set"),
])
def test_cli_bad_sources_exit_2_with_one_line_and_write_nothing(tmp_path, rl_tasks, expected):
    write_jsonl(tmp_path / "bad.jsonl", [{"question": "q?", "answer": "a\n#### 3"}, {"question": "q2?"}])
    (tmp_path / "empty.jsonl").write_text("")
    recipe = _recipe(tmp_path, rl_tasks.format(dir=tmp_path))
    proc = cli("run", str(recipe), "--stages", "rl", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith(expected.format(dir=tmp_path, recipe=recipe)), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_plan_lists_each_stages_sources_and_prompt_counts(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", gsm8k_rows(100))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\noutput_dir: {tmp_path / 'runs'}\ntracking: {{wandb: false}}\n"
                      f"sft:\n  tasks: [gsm8k:{path}, builtin:identity]\n  builtin_train_per_family: 50\n"
                      f"rm:\n  tasks: ['{GYM_ADD}']\n  num_prompts: 40\n"
                      f"rl:\n  tasks: [gsm8k:{path}]\n  control: false\neval:\n  max_prompts_per_family: 7\n")
    proc = cli("plan", str(recipe), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    train = len(load_tasks(f"gsm8k:{path}", 1000, 0, "train"))
    test = 100 - train
    lines = [" ".join(line.split()) for line in proc.stdout.splitlines()]
    assert f"tasks train train {min(50, train)} of {train} qa gsm8k:{path}" in lines
    assert "tasks train train 50 generated identity builtin:identity" in lines
    assert f"tasks eval test {min(50, test)} of {test} qa gsm8k:{path}" in lines   # sft.builtin_test_per_family
    assert f"tasks rollouts train 40 generated basic_arithmetic {GYM_ADD}" in lines
    assert f"tasks train train {train} of {train} qa gsm8k:{path}" in lines   # rl: max(100*8, 64) asked
    assert f"tasks eval test 7 of {test} qa gsm8k:{path}" in lines
    assert "tasks eval test 7 generated arithmetic arithmetic" in lines


def test_alpaca_rows_are_conversations():
    from stages.data.conversations import normalise_row
    messages, problem = normalise_row({"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"})
    assert problem is None and messages == [{"role": "user", "content": "Add the numbers.\n\n2 and 3"},
                                            {"role": "assistant", "content": "5"}]
    assert normalise_row({"instruction": "Say hi.", "input": "", "output": "Hi!"})[0][0]["content"] == "Say hi."
    assert normalise_row({"instruction": "Say hi.", "output": ""})[1].startswith("empty content")


def test_task_meta_survives_a_rollouts_file(tmp_path):
    task = gsm8k_task({"question": "q?", "answer": "x\n#### 1,234"}, "gsm8k")
    record = json.loads(json.dumps({"meta": task.meta}))
    assert score(Task("gsm8k", [], "1234", record["meta"]), "Answer: 1234") == 1.0


def test_editing_a_local_task_file_makes_its_stages_stale(tmp_path):
    from pipeline.runner import STAGES, Runner
    path = write_jsonl(tmp_path / "qa.jsonl", gsm8k_rows(10))
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(f"name: t\noutput_dir: {tmp_path / 'runs'}\nrl:\n  tasks: [gsm8k:{path}]\n  control: false\n")
    spec = {s.name: s for s in STAGES}
    before = {n: Runner(load_recipe(recipe_path), recipe_path).stage_config(spec[n]) for n in ("sft", "rl")}
    write_jsonl(path, gsm8k_rows(11))
    after = {n: Runner(load_recipe(recipe_path), recipe_path).stage_config(spec[n]) for n in ("sft", "rl")}
    assert before["sft"] == after["sft"] and "task_files" not in before["sft"]   # sft does not read it
    assert before["rl"]["task_files"] != after["rl"]["task_files"]
