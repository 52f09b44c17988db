"""The runner: order, make-style skipping, downstream invalidation, atomic artifacts, the launch seam."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import StageFailed, UserError
from pipeline.recipe import load_recipe
from pipeline.runner import STAGE_NAMES, Runner, StageSpec, status_rows

ROOT = Path(__file__).resolve().parent.parent
FAKE = (
    StageSpec("tokenizer", "tests.fake_stages:first", ("seed", "tokenizer"), lambda r: {}),
    StageSpec("pretrain", "tests.fake_stages:second", ("pretrain",), lambda r: {"tokenizer": "tokenizer"}),
    StageSpec("sft", "tests.fake_stages:third", ("sft",), lambda r: {"model": "pretrain"}),
)


def make_runner(tmp_path, *overrides, stages=FAKE):
    path = tmp_path / "r.yaml"
    if not path.exists():
        path.write_text(f"name: t\noutput_dir: {tmp_path / 'runs'}\ntracking: {{wandb: false}}\n")
    return Runner(load_recipe(path, list(overrides)), path, stages=stages)


def actions(runner, *requested, force=()):
    return {i.spec.name: i.action for i in runner.plan(list(requested) or None, force)}


def test_real_pipeline_order_and_plan():
    assert STAGE_NAMES == ("tokenizer", "pretrain", "sft", "rm", "rl")
    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml")
    items = Runner(recipe, ROOT / "recipes/tiny.yaml").plan()
    assert [i.spec.name for i in items] == list(STAGE_NAMES)


def test_ppo_needs_the_reward_model_grpo_does_not(tmp_path):
    grpo = make_runner(tmp_path, "rl.algorithm=grpo", stages=__import__("pipeline.runner").runner.STAGES)
    ppo = make_runner(tmp_path, "rl.algorithm=ppo", stages=__import__("pipeline.runner").runner.STAGES)
    assert "rm" not in grpo.closure(["rl"])
    assert ppo.closure(["rl"]) == ["tokenizer", "pretrain", "sft", "rm", "rl"]


def test_run_then_skip_then_downstream_invalidation(tmp_path):
    runner = make_runner(tmp_path)
    runner.run()
    run_dir = tmp_path / "runs" / "t"
    for name in ("tokenizer", "pretrain", "sft"):
        manifest = json.loads((run_dir / name / "manifest.json").read_text())
        assert manifest["stage"] == name and manifest["metrics"]["eval/value"] == 1.0
        assert (run_dir / name / "config.yaml").is_file() and (run_dir / name / "metrics.jsonl").is_file()
        assert not (run_dir / f"{name}.tmp").exists()
    sft = json.loads((run_dir / "sft" / "manifest.json").read_text())
    pre = json.loads((run_dir / "pretrain" / "manifest.json").read_text())
    assert sft["inputs"]["model"]["fingerprint"] == pre["fingerprint"]
    assert sft["inputs"]["model"]["run_id"] == pre["run_id"]
    assert {"versions", "git_commit", "wall_time_s", "config", "wandb", "code_version"} <= set(sft)

    assert set(actions(make_runner(tmp_path)).values()) == {"skip"}
    # a changed pretrain config reruns pretrain and everything downstream, not upstream
    changed = make_runner(tmp_path, "pretrain.max_steps=7")
    assert actions(changed) == {"tokenizer": "skip", "pretrain": "run", "sft": "run"}
    changed.run()
    assert set(actions(make_runner(tmp_path, "pretrain.max_steps=7")).values()) == {"skip"}
    # a changed sft config reruns only sft
    assert actions(make_runner(tmp_path, "pretrain.max_steps=7", "sft.max_steps=3")) == {
        "tokenizer": "skip", "pretrain": "skip", "sft": "run"}


def test_force_reruns_the_stage_and_makes_downstream_stale(tmp_path):
    runner = make_runner(tmp_path)
    runner.run()
    runner.run(["pretrain"], force=("pretrain",))
    # sft consumed the old pretrain artifact: it is stale now even though no config changed
    assert actions(make_runner(tmp_path)) == {"tokenizer": "skip", "pretrain": "skip", "sft": "run"}


def test_requesting_a_stage_runs_what_it_needs_first(tmp_path):
    runner = make_runner(tmp_path)
    runner.run(["sft"])
    assert all((tmp_path / "runs/t" / n / "manifest.json").is_file() for n in ("tokenizer", "pretrain", "sft"))


def test_crash_leaves_no_finished_artifact_and_rerun_succeeds(tmp_path, monkeypatch):
    runner = make_runner(tmp_path)
    monkeypatch.setenv("FAKE_CRASH", "second")
    with pytest.raises(StageFailed) as info:
        runner.run()
    assert info.value.stage == "pretrain" and info.value.log_path.endswith("pretrain.tmp/log.txt")
    assert "boom in the middle" in Path(info.value.log_path).read_text()
    run_dir = tmp_path / "runs/t"
    assert not (run_dir / "pretrain").exists()
    assert (run_dir / "pretrain.tmp" / "partial.bin").exists()
    assert not (run_dir / "pretrain.tmp" / "manifest.json").exists()
    assert [r["state"] for r in status_rows(make_runner(tmp_path))] == ["done", "partial", "pending"]
    monkeypatch.delenv("FAKE_CRASH")
    make_runner(tmp_path).run()
    assert (run_dir / "pretrain" / "manifest.json").is_file() and (run_dir / "sft" / "manifest.json").is_file()


def test_finished_tmp_dir_is_promoted_not_lost(tmp_path):
    runner = make_runner(tmp_path)
    runner.run()
    run_dir = tmp_path / "runs/t"
    (run_dir / "sft").rename(run_dir / "sft.tmp")  # as if killed between manifest and rename
    make_runner(tmp_path).run()
    assert (run_dir / "sft" / "manifest.json").is_file() and not (run_dir / "sft.tmp").exists()


def test_missing_external_model_is_a_user_error(tmp_path):
    runner = make_runner(tmp_path, "sft.from=./no/such/model", stages=__import__("pipeline.runner").runner.STAGES)
    with pytest.raises(UserError, match=r"sft.from: './no/such/model' does not exist"):
        runner.run(["sft"])


def test_unwritable_output_dir_is_a_user_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    runner = make_runner(tmp_path, f"output_dir={tmp_path / 'afile' / 'runs'}")
    with pytest.raises(UserError, match="output_dir"):
        runner.run()


def test_cli_crash_exits_1_naming_stage_and_log(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\noutput_dir: {tmp_path / 'runs'}\ntracking: {{wandb: false}}\n"
                      "tokenizer: {from: ./not/there/at/all}\n")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(recipe), "--stages", "tokenizer"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: stage 'tokenizer' failed:") and "tokenizer.tmp/log.txt" in last


def test_two_process_launch_seam(tmp_path):
    stages = (StageSpec("pretrain", "tests.fake_stages:allreduce", ("seed",), lambda r: {}),)
    runner = make_runner(tmp_path, "distributed.num_processes=2", "distributed.engine=ddp", stages=stages)
    assert runner.plan()[0].command.startswith("accelerate launch --multi_gpu --num_processes 2")
    manifest = runner.execute(runner.plan()[0])
    assert manifest["metrics"] == {"world_size": 2.0, "sum": 3.0}
    assert (tmp_path / "runs/t/pretrain/manifest.json").is_file()


def test_tokenizer_runs_in_one_process_and_process_count_is_not_fingerprinted(tmp_path):
    real = __import__("pipeline.runner").runner.STAGES
    one = {i.spec.name: i for i in make_runner(tmp_path, stages=real).plan()}
    many = {i.spec.name: i for i in make_runner(tmp_path, "distributed.num_processes=8",
                                                 "sft.distributed.num_processes=4", stages=real).plan()}
    assert many["tokenizer"].command.startswith("in-process")
    assert "--num_processes 8" in many["pretrain"].command and "--num_processes 4" in many["sft"].command
    assert all(one[n].fingerprint == many[n].fingerprint for n in one)


def _stage_bf16(recipe, inputs, ctx):
    from accelerate import Accelerator
    return {"mp": Accelerator(mixed_precision="bf16", cpu=True).mixed_precision}


def _stage_fp32(recipe, inputs, ctx):
    from accelerate import Accelerator
    return {"mp": Accelerator(mixed_precision="no", cpu=True).mixed_precision}


def test_in_process_stages_each_get_a_fresh_accelerator_state(tmp_path):
    """On a GPU, SFT builds a bf16 Accelerator and the rm stage an fp32 one in the same process:
    accelerate's per-process state must not carry over (it raised "already initialized", seen on an H200)."""
    from pipeline.launch import run_in_process
    from pipeline.schema import Recipe
    recipe = Recipe(name="t", tracking={"wandb": False})
    first = run_in_process(recipe, "tests.test_runner:_stage_bf16", "sft", {}, tmp_path / "a", tmp_path)
    second = run_in_process(recipe, "tests.test_runner:_stage_fp32", "rm", {}, tmp_path / "b", tmp_path)
    assert first["metrics"]["mp"] == "bf16" and second["metrics"]["mp"] == "no"


def test_console_line_names_are_unique():
    from pipeline.tracking import short_names
    names = short_names(["train/loss", "base/acc/arithmetic", "eval/acc/arithmetic", "eval/format/arithmetic",
                         "train/kl", "monitor/kl"])
    assert names == {"train/loss": "loss", "base/acc/arithmetic": "base/acc/arithmetic",
                     "eval/acc/arithmetic": "eval/acc/arithmetic", "eval/format/arithmetic": "format/arithmetic",
                     "train/kl": "train/kl", "monitor/kl": "monitor/kl"}


def test_a_stage_sees_only_the_sections_its_fingerprint_covers(tmp_path):
    stages = (StageSpec("tokenizer", "tests.fake_stages:peeks_at_rl", ("seed", "tokenizer"), lambda r: {}),)
    with pytest.raises(StageFailed):
        make_runner(tmp_path, stages=stages).run()
    log = (tmp_path / "runs/t/tokenizer.tmp/log.txt").read_text()
    assert "reads recipe.rl, which its fingerprint does not cover" in log


def test_changing_sft_makes_rl_stale_even_when_rl_starts_elsewhere(tmp_path):
    """rl reads the sft section (its equal-compute control trains with it), so with rl.from set, a changed
    sft.* must still change rl's fingerprint, and nothing upstream of rl."""
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "config.json").write_text("{}")
    real = __import__("pipeline.runner").runner.STAGES

    def fingerprints(*overrides):
        runner = make_runner(tmp_path, f"rl.from={policy}", *overrides, stages=real)
        return {i.spec.name: i.fingerprint for i in runner.plan(["rl"])}

    before, after = fingerprints(), fingerprints("sft.max_length=300")
    assert list(before) == ["rl"]
    assert before["rl"] != after["rl"]
    assert fingerprints("rm.k=3")["rl"] == before["rl"]  # what rl does not read leaves it up to date
def test_bad_local_data_fails_before_anything_is_written(tmp_path):
    from pipeline.runner import STAGES
    (tmp_path / "corpus.txt").write_bytes("Caf\xe9 au lait\n".encode("latin-1"))
    runner = make_runner(tmp_path, "data.source=local", f"data.paths=[{tmp_path / 'corpus.txt'}]", stages=STAGES)
    with pytest.raises(UserError, match=r"corpus.txt:1: not UTF-8 \(byte 0xe9 at column 4\)"):
        runner.run(["pretrain"])
    assert not (tmp_path / "runs").exists()


def test_off_a_terminal_a_stage_prints_our_lines_and_no_library_bars(tmp_path, capfd):
    stages = (StageSpec("tokenizer", "tests.fake_stages:noisy", ("seed",), lambda r: {}),)
    make_runner(tmp_path, stages=stages).run()
    out, err = capfd.readouterr()
    assert "tokenizer | step 1/1 | loss 1 | eta" in out
    for mark in ("%|", "it/s", "█", "docs/s", "Loading weights", "Warning"):
        assert mark not in out + err, mark
    log = (tmp_path / "runs" / "t" / "tokenizer" / "log.txt").read_text()
    assert "a library's deprecation notice" in log and "a library's log record" in log
    assert "tokenizer | step 1/1" in log
