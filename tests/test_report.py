"""The report card on synthetic stage dirs: every number comes from the manifests; the plots are real PNGs."""
from __future__ import annotations

import json
import math
import re
from argparse import Namespace
from pathlib import Path

import pytest

from pipeline.commands.report import main as report_cli
from pipeline.errors import UserError
from pipeline.report import StageRecord, bok_cells, fmt, gpu_hours, ladder, ladder_key, write_report
from pipeline.report_plots import ladder_series, mean_sd

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAMILIES = ("arithmetic", "spelling")


def _stage(run_dir: Path, name: str, metrics: dict, history: list[dict], wall: float, launch: str,
           started: str) -> dict:
    stage_dir = run_dir / name
    stage_dir.mkdir(parents=True)
    manifest = {"stage": name, "run_id": f"id{name}", "fingerprint": "f" * 16, "code_version": "0.1.0",
                "metrics": metrics, "wall_time_s": wall, "started_at": started, "launch": launch,
                "versions": {"python": "3.11.2", "torch": "2.13.0"}, "git_commit": "abc123", "config": {}}
    (stage_dir / "manifest.json").write_text(json.dumps(manifest))
    (stage_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history) + '{"step": 9, "trai')
    return manifest


def make_run(tmp_path: Path) -> tuple[Path, dict]:
    """tokenizer, pretrain, sft, rl finished (rm missing), with metrics a real run would return."""
    run_dir = tmp_path / "runs" / "toy"
    inproc = "in-process: stages.x:run(recipe=r.yaml, out=runs/toy/x.tmp)"
    two = "accelerate launch --multi_gpu --num_processes 2 --num_machines 1 -m pipeline.worker"
    m = {"tokenizer": _stage(run_dir, "tokenizer", {"eval/bytes_per_token": 3.713, "vocab_size": 2048.0}, [],
                             1.25, inproc, "2026-11-28T10:00:00")}
    m["pretrain"] = _stage(run_dir, "pretrain", {"eval/val_bpb": 2.0123456789, "train/tokens": 1228800.0,
                                                 "train/loss": 3.1}, [
        {"step": s, "time": s, "train/loss": 6.0 - s / 10, "train/lr": 1e-3} for s in range(1, 31)] + [
        {"step": s, "time": s, "eval/val_bpb": 3.0 - s / 30} for s in (10, 20, 30)],
        412.5, two, "2026-11-28T10:01:00")
    sft_metrics = {"train/tokens": 300000.0, "train/loss": 0.81}
    rl_metrics = {"train/tokens": 50000.0, "eval/reward": 0.64, "eval/kl": 0.0123}
    for i, fam in enumerate(FAMILIES):
        sft_metrics |= {f"eval/acc/{fam}": 0.3 + 0.1 * i, f"eval/format/{fam}": 0.9,
                        f"eval/base/acc/{fam}": 0.01 * i, f"eval/base/format/{fam}": 0.0}
        rl_metrics |= {f"eval/acc/{fam}": 0.55 + 0.1 * i, f"eval/format/{fam}": 0.97,
                       f"eval/pass@4/{fam}": 0.8, f"control/eval/acc/{fam}": 0.45 + 0.1 * i}
    sft_metrics["eval/acc"] = 0.35
    m["sft"] = _stage(run_dir, "sft", sft_metrics, [{"step": s, "train/loss": 2.0 / s} for s in range(1, 11)],
                      99.0, inproc, "2026-11-28T10:09:00")
    m["rl"] = _stage(run_dir, "rl", rl_metrics, [
        {"step": s, "train/loss": 0.1, "train/reward": s / 10, "train/kl": s / 100} for s in range(1, 11)],
        61.7, inproc, "2026-11-28T10:12:00")
    return run_dir, m


def tables(markdown: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table as (header, rows of cells)."""
    out, lines = [], markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows, j = [], i + 2
            while j < len(lines) and lines[j].startswith("|"):
                rows.append([c.strip() for c in lines[j].strip("|").split("|")])
                j += 1
            out.append((header, rows))
    return out


def _num(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def check_report_against_manifests(run_dir: Path) -> dict[str, list[list[str]]]:
    """Every table cell of report.md against the manifests on disk; returns the tables by header."""
    manifests = {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("*/manifest.json")}
    text = (run_dir / "report.md").read_text()
    by_header = {tuple(h): rows for h, rows in tables(text)}

    stage_rows = by_header[("stage", "run id", "wall time (s)", "tokens", "processes", "est. GPU-hours", "started")]
    assert {r[0] for r in stage_rows} == set(manifests)
    for name, run_id, wall, tokens, procs, hours, started in stage_rows:
        m = manifests[name]
        assert run_id == m["run_id"] and started == m["started_at"]
        assert float(wall) == pytest.approx(m["wall_time_s"], rel=1e-6)
        assert tokens == "-" if "train/tokens" not in m["metrics"] else float(tokens) == m["metrics"]["train/tokens"]
        assert int(procs) == (int(m["launch"].split("--num_processes ")[1].split()[0]) if "--num_processes" in
                              m["launch"] else 1)
        assert float(hours) == pytest.approx(m["wall_time_s"] * int(procs) / 3600, rel=1e-5)

    # the ladder: each manifest metric it covers sits in its (kind, family) row and model column
    expected = {}
    for stage, m in manifests.items():
        for key, value in m["metrics"].items():
            parsed = ladder_key(stage, key)
            if parsed:
                expected[(parsed[1], parsed[2], parsed[0])] = value
    ladder = [(h, rows) for h, rows in by_header.items() if h[:2] == ("metric", "family")]
    assert len(ladder) == (1 if expected else 0)
    if ladder:
        header, rows = ladder[0]
        cells = {(r[0], r[1], col): cell for r in rows for col, cell in zip(header[2:], r[2:]) if cell != "-"}
        assert cells.keys() == expected.keys()
        for where, cell in cells.items():
            assert float(cell) == pytest.approx(expected[where], rel=1e-5), where

    # each stage's final-metrics table holds exactly its manifest's metrics (tables in pipeline order)
    order = [n for n in ("tokenizer", "pretrain", "sft", "rm", "rl") if n in manifests]
    metric_tables = [rows for h, rows in tables(text) if h == ["metric", "value"]]
    assert len(metric_tables) == len(order)
    for name, rows in zip(order, metric_tables):
        got = dict(rows)
        assert got.keys() == manifests[name]["metrics"].keys()
        for key, cell in got.items():
            want = manifests[name]["metrics"][key]
            assert float(cell) == pytest.approx(want, rel=1e-5) if _num(cell) is not None else cell == str(want)

    # and no other number sneaks into any table: each is a manifest value or a GPU-hour estimate
    known = [v for m in manifests.values() for v in list(m["metrics"].values()) + [m["wall_time_s"]]
             if isinstance(v, (int, float))]
    known += [gpu_hours(m) for m in manifests.values()] + [1, 2]  # process counts
    for header, rows in tables(text):
        if "git commit" in header:
            continue
        for row in rows:
            for cell in row:
                number = _num(cell)
                if number is not None:
                    assert any(math.isclose(number, k, rel_tol=1e-5) for k in known), (header, cell)
    return by_header


def test_every_number_in_the_report_equals_the_manifests(tmp_path):
    run_dir, manifests = make_run(tmp_path)
    report = write_report(run_dir)
    text = (run_dir / "report.md").read_text()
    assert report.path == run_dir / "report.md" and report.missing == ["rm"]
    assert "not run yet: rm" in text
    by_header = check_report_against_manifests(run_dir)
    stage_rows = by_header[("stage", "run id", "wall time (s)", "tokens", "processes", "est. GPU-hours", "started")]
    assert [r[0] for r in stage_rows] == ["tokenizer", "pretrain", "sft", "rl"]
    assert [r[4] for r in stage_rows] == ["1", "2", "1", "1"] and stage_rows[0][3] == "-"
    columns = ("base", "sft", "rl", "rl:control")
    ladder = by_header[("metric", "family") + columns]
    assert [(r[0], r[1]) for r in ladder] == [(k, f) for k in ("acc", "pass@4", "format") for f in FAMILIES]
    assert ladder[0][2:] == ["0", "0.3", "0.55", "0.45"]  # acc on arithmetic: base, sft, rl, control
    assert manifests["pretrain"]["metrics"]["eval/val_bpb"] == 2.0123456789
    assert "| eval/val_bpb | 2.01235 |" in text


def test_plots_are_pngs_with_the_expected_curves(tmp_path):
    import matplotlib.image as mpimg
    run_dir, _ = make_run(tmp_path)
    report = write_report(run_dir)
    assert set(report.plots) == {"loss", "ladder", "rl"}  # no rm stage: no rm plot
    assert report.plots["loss"]["curves"] == ["pretrain: train/loss", "pretrain: eval/val_bpb", "sft: train/loss",
                                              "rl: train/loss"]
    assert report.plots["ladder"]["curves"] == [c for f in FAMILIES for c in (f"acc: {f}", f"rl:control acc: {f}")]
    assert report.plots["rl"]["curves"] == ["rl reward: train/reward", "rl KL: train/kl"]
    text = report.path.read_text()
    for name, plot in report.plots.items():
        path = Path(plot["path"])
        assert path.read_bytes()[:8] == PNG_MAGIC
        image = mpimg.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0.01  # something was drawn
        assert f"report/{name}.png" in text


def test_rm_accuracy_plot_from_history_or_final_metrics(tmp_path):
    run_dir, _ = make_run(tmp_path)
    _stage(run_dir, "rm", {"eval/pairwise_acc": 0.7, "eval/top1_acc": 0.5, "eval/pairwise_acc/arithmetic": 0.8,
                           "eval/gold_pairwise_acc": 0.75}, [
        {"step": s, "train/loss": 0.7 - s / 100, "eval/pairwise_acc": 0.5 + s / 100} for s in (5, 10)],
        30.0, "in-process: x", "2026-11-28T10:10:00")
    report = write_report(run_dir)
    assert report.plots["rm"]["curves"] == ["rm: eval/pairwise_acc"]
    (run_dir / "rm" / "metrics.jsonl").unlink()
    report = write_report(run_dir)
    assert report.plots["rm"]["curves"] == ["rm (final): eval/pairwise_acc", "rm (final): eval/top1_acc",
                                            "rm (final): eval/gold_pairwise_acc"]
    assert report.missing == []


def test_ladder_puts_a_stage_input_before_it_and_controls_off_the_line():
    """rl evaluates its input (before/...) and an equal-compute control: the input's column comes just before
    rl, the control's just after; a chained second rl stage gets its own before column. The plot draws the
    line through the pipeline's models and the controls as separate markers."""
    metrics = {
        "sft": {"eval/acc/arithmetic": 0.4, "eval/base/acc/arithmetic": 0.0},
        "rl": {"control/eval/acc/arithmetic": 0.5, "eval/acc/arithmetic": 0.6, "before/eval/acc/arithmetic": 0.41},
        "rl2": {"before/eval/acc/arithmetic": 0.59, "eval/acc/arithmetic": 0.7},
    }
    columns, rows = ladder({n: StageRecord(n, {"metrics": m}, []) for n, m in metrics.items()})
    assert columns == ["base", "sft", "rl:before", "rl", "rl:control", "rl2:before", "rl2"]
    line, controls = ladder_series(columns, rows[("acc", "arithmetic")])
    assert [columns[i] for i in line] == ["base", "sft", "rl:before", "rl", "rl2:before", "rl2"]
    assert [columns[i] for i in controls] == ["rl:control"]
    assert mean_sd(0.5) == (0.5, 0.0) and mean_sd([0.4, 0.6]) == pytest.approx((0.5, 0.1414214))


def test_overoptimisation_picture_when_rl_logged_the_monitor(tmp_path):
    run_dir, _ = make_run(tmp_path)
    rows = [{"step": s, "train/loss": 0.1, "monitor/proxy": s / 10, "monitor/gold": min(s, 12 - s) / 10,
             "monitor/kl": s / 50, "monitor/hacking": float(s > 8)} for s in range(1, 12)]
    (run_dir / "rl" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = write_report(run_dir)
    assert report.plots["overopt"]["curves"] == ["proxy: monitor/proxy", "gold: monitor/gold", "KL: monitor/kl"]
    assert Path(report.plots["overopt"]["path"]).read_bytes()[:8] == PNG_MAGIC
    assert "![reward over-optimisation](report/overopt.png)" in report.path.read_text()


def test_best_of_k_line_and_plot_from_the_rm_manifest(tmp_path):
    run_dir, _ = make_run(tmp_path)
    bok = {"eval/bok/random": 0.46875, "eval/bok/rm": 0.6875, "eval/bok/oracle": 0.875, "eval/bok/share": 7 / 13,
           "eval/bok/share_ci95_low": 0.2, "eval/bok/share_ci95_high": 0.8, "eval/bok/n_prompts": 6.0,
           "eval/bok/k": 4.0, "eval/bok/random/spelling": 0.625, "eval/bok/rm/spelling": 1.0,
           "eval/bok/oracle/spelling": 1.0, "eval/bok/share/spelling": 1.0}
    _stage(run_dir, "rm", {"eval/pairwise_acc": 0.7} | bok, [], 30.0, "in-process: x", "2026-11-28T10:10:00")
    report = write_report(run_dir)
    assert report.plots["bok"]["curves"] == ["bok: spelling", "bok: mean"]
    text = report.path.read_text()
    assert ("on 6 held-out prompts with K = 4 completions (mean over families): gold accuracy of one random sample "
            "0.46875, of the best of K picked by the RM 0.6875, picked by an oracle (the verifier) 0.875; the RM "
            "keeps 0.538462 of the oracle's gain (95% CI 0.2 to 0.8, prompts resampled).") in text
    check_report_against_manifests(run_dir)
    assert bok_cells([bok, bok])["spelling"] == {"random": [0.625] * 2, "rm": [1.0] * 2, "oracle": [1.0] * 2}


def test_empty_run_reports_nothing_without_crashing(tmp_path):
    report = write_report(tmp_path / "runs" / "none")
    assert report.stages == {} and report.plots == {} and len(report.missing) == 5
    assert "Stages present: none" in report.path.read_text()


def test_ladder_keys():
    assert ladder_key("sft", "eval/acc/arithmetic") == ("sft", "acc", "arithmetic")
    assert ladder_key("sft", "eval/base/format/spelling") == ("base", "format", "spelling")
    assert ladder_key("sft", "base/eval/acc/spelling") == ("base", "acc", "spelling")
    assert ladder_key("rl", "control/eval/pass@8/calculator") == ("rl:control", "pass@8", "calculator")
    assert ladder_key("sft", "base/acc/spelling") == ("base", "acc", "spelling")  # the SFT stage's naming
    assert ladder_key("sft", "eval/acc_no_tool/calculator") == ("sft", "acc_no_tool", "calculator")
    assert ladder_key("rl", "before/eval/acc/spelling") == ("rl:before", "acc", "spelling")
    for key in ("eval/acc", "train/acc/x", "eval/pairwise_acc/x", "eval/val_bpb", "a/b/eval/acc/x", "base/acc",
                "x/acc/y", "eval/accuracy/x"):
        assert ladder_key("rm", key) is None


def test_fmt_round_trips_six_digits():
    assert fmt(3.0) == "3" and fmt(2.0123456789) == "2.01235" and fmt(None) == "-" and fmt(7) == "7"
    assert float(fmt(1.234567e-5)) == pytest.approx(1.234567e-5, rel=1e-5)


def test_report_cli(tmp_path, capsys):
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(f"name: toy\noutput_dir: {tmp_path / 'runs'}\ntracking: {{wandb: false}}\n")
    with pytest.raises(UserError, match="no run at"):
        report_cli(Namespace(recipe=recipe, overrides=[]))
    make_run(tmp_path)
    assert report_cli(Namespace(recipe=recipe, overrides=[])) == 0
    assert re.search(r"report: .*report\.md \(4 stages; plots: loss, ladder, rl\)", capsys.readouterr().out)


@pytest.mark.slow
def test_make_all_on_the_tiny_recipe_reports_the_manifests(tmp_path):
    """The real thing: `make all` = lifecycle run + lifecycle report on recipes/tiny.yaml (minutes)."""
    import os
    import subprocess
    import sys
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "WANDB_MODE": "offline"}
    for command in ("run", "report"):
        subprocess.run([sys.executable, "-m", "pipeline", command, str(root / "recipes" / "tiny.yaml"),
                        f"output_dir={tmp_path}"], check=True, cwd=root, env=env)
    run_dir = tmp_path / "tiny"
    check_report_against_manifests(run_dir)
    for name in ("loss", "ladder", "rm", "rl"):
        assert (run_dir / "report" / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    # a second `make all` runs nothing
    again = subprocess.run([sys.executable, "-m", "pipeline", "run", str(root / "recipes" / "tiny.yaml"),
                            f"output_dir={tmp_path}"], check=True, cwd=root, env=env, capture_output=True, text=True)
    assert again.stdout.count(": up to date") == 5 and "running" not in again.stdout
