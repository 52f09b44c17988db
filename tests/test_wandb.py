"""W&B offline: real stages through the real runner land in one group, one job_type per stage, with the
shared metric names; the report's summary run carries the ladder. Read back from the .wandb files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.wandb_offline import read_runs

SHARED_TRAIN = {"train/loss", "train/lr", "train/tokens_per_s", "train/mfu"}


@pytest.fixture()
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def _recipe(tmp_path: Path) -> Path:
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"Document {i}: and God said {i * 7} times, let there be light "
                                                "upon the earth."}) + "\n" for i in range(200)))
    path = tmp_path / "wb.yaml"
    path.write_text(f"""name: wb
output_dir: {tmp_path / 'runs'}
tracking: {{wandb: true, project: lifecycle-test}}
data: {{source: local, paths: ["{docs}"], val_fraction: 0.2, num_workers: 1}}
model: {{n_layer: 1, n_embd: 32, n_head: 2, seq_len: 32}}
tokenizer: {{vocab_size: 400}}
pretrain: {{max_steps: 3, micro_batch_size: 2, eval_every: 2, eval_tokens: 256, sample_every: 3, checkpoint_every: 3}}
eval: {{samples: 1}}
""")
    return path


def _history_keys(run) -> set[str]:
    return {k for row in run.history for k in row if not k.startswith("_") and "/_" not in k}


def test_two_real_stages_one_group_shared_metric_names(tmp_path, offline):
    from pipeline.launch import call_stage
    from pipeline.recipe import load_recipe
    from pipeline.runner import Runner
    path = _recipe(tmp_path)
    recipe = load_recipe(path)
    Runner(recipe, path).run(["pretrain"])  # tokenizer, then pretrain: two real stages
    run_dir = tmp_path / "runs" / "wb"
    # a third run in the group: `eval` of the pretrained model speaks the same eval/ names as pretrain
    call_stage(recipe, "pipeline.commands.eval:run", "eval", {"model": str(run_dir / "pretrain")}, tmp_path / "ev", run_dir)

    runs = {r.job_type: r for r in read_runs(run_dir / "wandb")}
    assert set(runs) == {"tokenizer", "pretrain", "eval"}
    assert {r.group for r in runs.values()} == {"wb"} and all(r.finished for r in runs.values())
    assert {r.name for r in runs.values()} == {"wb-tokenizer", "wb-pretrain", "wb-eval"}

    pre, tok, ev = runs["pretrain"], runs["tokenizer"], runs["eval"]
    assert SHARED_TRAIN <= _history_keys(pre)
    assert {"eval/val_loss", "eval/val_bpb"} <= _history_keys(pre) & _history_keys(ev)  # one panel compares them
    assert "eval/bytes_per_token" in _history_keys(tok)
    # W&B holds exactly what metrics.jsonl holds, step by step
    jsonl = [json.loads(line) for line in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["train/loss"] for r in jsonl if "train/loss" in r}
    assert {row["_step"]: row["train/loss"] for row in pre.history if "train/loss" in row} == losses
    # the final eval (logged after the samples table at the same step) is not dropped
    final_bpb = [r["eval/val_bpb"] for r in jsonl if "eval/val_bpb" in r][-1]
    assert [row["eval/val_bpb"] for row in pre.history if "eval/val_bpb" in row][-1] == pytest.approx(final_bpb)
    # summaries are the manifests' metrics
    for stage, run in (("tokenizer", tok), ("pretrain", pre)):
        metrics = json.loads((run_dir / stage / "manifest.json").read_text())["metrics"]
        for key, value in metrics.items():
            assert run.summary[key] == pytest.approx(value), (stage, key)


def test_report_summary_run_carries_the_ladder(tmp_path, offline):
    from pipeline.recipe import load_recipe
    from pipeline.report import log_summary_to_wandb, write_report
    from tests.test_report import make_run
    run_dir, manifests = make_run(tmp_path)
    path = tmp_path / "toy.yaml"
    path.write_text(f"name: toy\noutput_dir: {tmp_path / 'runs'}\ntracking: {{wandb: true, project: t}}\n")
    report = write_report(run_dir)
    assert log_summary_to_wandb(report, load_recipe(path))
    (run,) = read_runs(run_dir / "wandb")
    assert (run.group, run.job_type) == ("toy", "summary")
    assert run.summary["ladder/sft/acc/arithmetic"] == manifests["sft"]["metrics"]["eval/acc/arithmetic"]
    assert run.summary["ladder/rl/acc/spelling"] == manifests["rl"]["metrics"]["eval/acc/spelling"]
    assert run.summary["ladder/base/acc/spelling"] == manifests["sft"]["metrics"]["eval/base/acc/spelling"]
    assert run.summary["pretrain/eval/val_bpb"] == manifests["pretrain"]["metrics"]["eval/val_bpb"]
    media = {k.split("/_")[0] for row in run.history for k in row if "/_" in k}  # tables and images
    assert {"summary/ladder", "report/loss", "report/ladder", "report/rl"} <= media


def test_media_after_the_last_step_all_reach_wandb(tmp_path, offline):
    """The rm stage logs its histogram, then its samples table, after the last training step. An unstepped
    image used to advance W&B's step, and W&B then dropped the table logged at the last step."""
    from types import SimpleNamespace

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.tracking import Tracker
    plot = tmp_path / "hist.png"
    plt.plot([0, 1], [1, 0])
    plt.savefig(plot)
    plt.close()
    tracker = Tracker("rm", tmp_path / "rm", tmp_path, "media", {},
                      SimpleNamespace(wandb=True, project="t", entity=None), echo=False)
    for step in (1, 2, 3):
        tracker.log({"train/loss": 1.0 / step}, step=step, total=3)
    tracker.images({"eval/reward_hist": plot})
    tracker.table("eval/rm_samples", ["completion", "reward"], [["4", 0.5], ["5", -0.5]])
    tracker.finish()
    (run,) = read_runs(tmp_path / "wandb")
    media = {k.split("/_")[0]: row["_step"] for row in run.history for k in row if "/_" in k}
    assert media == {"eval/reward_hist": 3, "eval/rm_samples": 3}
    assert [row["train/loss"] for row in run.history if "train/loss" in row] == pytest.approx([1.0, 0.5, 1 / 3])


def test_report_logs_one_summary_run_per_state_of_the_run(tmp_path, offline, capsys):
    """`make all` on a finished run reports again: the same stages make no second summary run, a stage
    that ran again does."""
    from argparse import Namespace

    from pipeline.commands.report import main as report_cli
    from tests.test_report import make_run
    run_dir, _ = make_run(tmp_path)
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(f"name: toy\noutput_dir: {tmp_path / 'runs'}\ntracking: {{wandb: true, project: t}}\n")
    assert report_cli(Namespace(recipe=recipe, overrides=[])) == 0
    assert report_cli(Namespace(recipe=recipe, overrides=[])) == 0
    assert len(read_runs(run_dir / "wandb")) == 1
    assert "W&B summary run up to date" in capsys.readouterr().out.splitlines()[-1]
    manifest = json.loads((run_dir / "rl" / "manifest.json").read_text())
    manifest["metrics"]["eval/acc/arithmetic"] = 0.99  # rl ran again
    (run_dir / "rl" / "manifest.json").write_text(json.dumps(manifest))
    assert report_cli(Namespace(recipe=recipe, overrides=[])) == 0
    runs = read_runs(run_dir / "wandb")
    assert len(runs) == 2 and sorted(r.summary["rl/eval/acc/arithmetic"] for r in runs) == [0.55, 0.99]


def test_tracking_group_overrides_the_run_name_as_group(tmp_path, offline):
    """A sweep's points are separate runs (names) in one W&B group (tracking.group = the sweep's name)."""
    from pipeline.schema import Tracking
    from pipeline.tracking import Tracker
    for run_name in ("t-seed_1", "t-seed_2"):
        tracker = Tracker("sft", tmp_path / run_name, tmp_path, run_name, {},
                          Tracking(project="t", group="t-sweep-seed"), echo=False)
        tracker.log({"train/loss": 1.0}, step=1)
        tracker.finish()
    runs = read_runs(tmp_path / "wandb")
    assert {r.group for r in runs} == {"t-sweep-seed"} and {r.name for r in runs} == {"t-seed_1-sft", "t-seed_2-sft"}
