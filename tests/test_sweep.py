"""`lifecycle sweep`: points expanded and named right, each run through the Runner (finished points skipped),
one W&B group, a crashed point does not stop the others, the combined report's mean/sd, bad args exit 2."""
from __future__ import annotations

import json
import statistics
from argparse import Namespace
from pathlib import Path

import pytest

from pipeline.cli import main as cli_main
from pipeline.commands import sweep as sweep_cmd
from pipeline.errors import StageFailed
from pipeline.runner import StageSpec
from pipeline.sweep import Axis, Point, expand, parse_axes, safe_name, split_values
from pipeline.sweep_report import write_sweep_report

FAKE = (
    StageSpec("tokenizer", "tests.fake_stages:first", ("seed", "tokenizer"), lambda r: {}),
    StageSpec("sft", "tests.fake_stages:seeded", ("seed", "sft"), lambda r: {"model": "tokenizer"}),
)


def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\noutput_dir: {tmp_path / 'runs'}\ntracking: {{wandb: false}}\n")
    return path


def sweep(tmp_path: Path, *items: str, name=None, stages=None) -> int:
    args = Namespace(recipe=recipe(tmp_path), overrides=list(items), stages=stages, name=name, debug=False, plan=False)
    return sweep_cmd.main(args, stages=FAKE)


def test_points_are_the_cartesian_product_named_after_their_values():
    axes = parse_axes(["seed=1,2", "sft.optim.lr=1e-4,3e-4", "rm.rankers=[verifier,judge]"])
    assert axes[2] == Axis("rm.rankers", ("[verifier,judge]",))     # a YAML list is one value
    points = expand("tiny", axes)
    assert [p.name for p in points] == [
        f"tiny-seed_{s}-sft.optim.lr_{lr}-rm.rankers__verifier_judge_" for s in (1, 2) for lr in ("1e-4", "3e-4")]
    assert points[1].overrides == ["seed=1", "sft.optim.lr=3e-4", "rm.rankers=[verifier,judge]"]
    assert split_values("1,[a,b],{x: 1, y: 2},'c,d'") == ["1", "[a,b]", "{x: 1, y: 2}", "'c,d'"]
    long = safe_name("t-" + "x" * 200)
    assert len(long) == 100 and long != safe_name("t-" + "x" * 199) and long.startswith("t-xxx")
    assert safe_name("a/b=c d") == "a_b_c_d"


def test_sweep_runs_each_point_then_skips_finished_ones(tmp_path, capsys):
    assert sweep(tmp_path, "seed=1,2", "sft.max_steps=3") == 0
    runs = tmp_path / "runs"
    for seed in (1, 2):
        point = runs / f"t-seed_{seed}-sft.max_steps_3"
        manifest = json.loads((point / "sft" / "manifest.json").read_text())
        assert manifest["metrics"]["eval/acc/arithmetic"] == seed / 100
        config = (point / "sft" / "config.yaml").read_text()
        assert f"seed: {seed}\n" in config and "group: t-sweep-seed-sft.max_steps\n" in config  # one W&B group
    assert (runs / "t-sweep-seed-sft.max_steps" / "sweep.md").is_file()
    capsys.readouterr()
    args = Namespace(recipe=recipe(tmp_path), overrides=["seed=1,2,3", "sft.max_steps=3"], stages=None, name=None,
                     debug=False, plan=True)
    assert sweep_cmd.main(args, stages=FAKE) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["  t-seed_1-sft.max_steps_3: up to date",
                                                        "  t-seed_2-sft.max_steps_3: up to date",
                                                        "  t-seed_3-sft.max_steps_3: run tokenizer, sft"]
    assert sweep(tmp_path, "seed=1,2,3", "sft.max_steps=3") == 0                  # one more seed
    out = capsys.readouterr().out
    assert out.count(": up to date") == 4 and out.count(": running") == 2       # only seed 3's two stages ran
    data = json.loads((runs / "t-sweep-seed-sft.max_steps" / "sweep.json").read_text())
    acc = data["metrics"]["sft"]["eval/acc/arithmetic"]
    assert acc["mean"] == pytest.approx(0.02) and acc["sd"] == pytest.approx(0.01) and acc["n"] == 3
    assert data["plots"] == {"ladder": str(runs / "t-sweep-seed-sft.max_steps" / "sweep" / "ladder.png")}


def test_a_crashed_point_does_not_stop_the_others(tmp_path, capsys):
    with pytest.raises(StageFailed, match="unlucky seed") as info:
        sweep(tmp_path, "seed=13,2", name="lucky")
    assert "t-seed_13/sft.tmp/log.txt" in info.value.log_path
    assert (tmp_path / "runs" / "t-seed_2" / "sft" / "manifest.json").is_file()
    data = json.loads((tmp_path / "runs" / "lucky" / "sweep.json").read_text())
    assert [p["stages"] for p in data["points"]] == [["tokenizer"], ["tokenizer", "sft"]]
    assert "unlucky seed" in data["points"][0]["failed"]
    assert data["metrics"]["sft"]["eval/acc/arithmetic"] == {"mean": 0.02, "sd": None, "n": 1,
                                                            "values": {"t-seed_2": 0.02}}


def _manifest(run_dir: Path, stage: str, metrics: dict) -> None:
    (run_dir / stage).mkdir(parents=True)
    (run_dir / stage / "manifest.json").write_text(json.dumps({"stage": stage, "metrics": metrics}))


def test_combined_report_mean_and_sd_from_hand_made_manifests(tmp_path):
    points = [Point(f"t-seed_{s}-rm.k_{k}", (("seed", str(s)), ("rm.k", str(k)))) for k in (4, 8) for s in (1, 2, 3)]
    acc = {"t-seed_1-rm.k_4": 0.4, "t-seed_2-rm.k_4": 0.5, "t-seed_3-rm.k_4": 0.9,
           "t-seed_1-rm.k_8": 0.6, "t-seed_2-rm.k_8": 0.6, "t-seed_3-rm.k_8": 0.6}
    run_dirs = {p.name: tmp_path / p.name for p in points}
    for p in points:
        _manifest(run_dirs[p.name], "sft", {"eval/acc/arithmetic": acc[p.name], "eval/note": "text", "flag": True})
        if p.name != "t-seed_3-rm.k_8":  # this point has not run rm
            _manifest(run_dirs[p.name], "rm", {"eval/bok/random": 0.25, "eval/bok/rm": 0.5, "eval/bok/oracle": 0.75})
    data = write_sweep_report(tmp_path / "sw", "sw", points, run_dirs, {p.name: ["sft", "rm"] for p in points},
                              "r.yaml")
    sft = data["metrics"]["sft"]
    assert list(sft) == ["eval/acc/arithmetic"]                               # numbers only
    values = list(acc.values())
    assert sft["eval/acc/arithmetic"]["mean"] == pytest.approx(statistics.fmean(values))  # 0.6
    assert sft["eval/acc/arithmetic"]["sd"] == pytest.approx(statistics.stdev(values))
    assert data["metrics"]["rm"]["eval/bok/rm"] == {"mean": 0.5, "sd": 0.0, "n": 5,
                                                   "values": {p.name: 0.5 for p in points[:5]}}
    by_k = data["groups"]["rm.k"]                                              # mean and sd over the seeds
    assert by_k["rm.k=4"]["sft"]["eval/acc/arithmetic"]["mean"] == pytest.approx(0.6)
    assert by_k["rm.k=4"]["sft"]["eval/acc/arithmetic"]["sd"] == pytest.approx(0.07 ** 0.5)   # sqrt(.14 / 2)
    assert by_k["rm.k=8"]["sft"]["eval/acc/arithmetic"]["sd"] == pytest.approx(0.0)
    assert set(data["plots"]) == {"ladder", "bok"}
    text = (tmp_path / "sw" / "sweep.md").read_text()
    assert "| eval/acc/arithmetic | 0.6 | 0.167332 | 6 | 0.4 | 0.5 | 0.9 | 0.6 | 0.6 | 0.6 |" in text
    assert "| eval/acc/arithmetic | 0.6 ± 0.264575 | 0.6 ± 0 |" in text
    assert "| seed=3, rm.k=8 | t-seed_3-rm.k_8 | 3 | 8 | sft |" in text
    assert "![accuracy ladder over points](sweep/ladder.png)" in text


@pytest.mark.parametrize("items, message", [
    ([], "at least one KEY=V1,V2"),
    (["seed"], "expected KEY=V1,V2"),
    (["seed=1,,2"], "an empty value"),
    (["seed=1,1"], "listed twice"),
    (["seed=1", "seed=2"], "given twice"),
    (["name=a,b"], "set per point"),
    (["seed=one,two"], "seed: expected an integer"),
    (["sft.max_stepz=1,2"], "unknown key"),
    (["seed=1,2", "--stages", "nope"], "--stages: unknown stage 'nope'"),
])
def test_bad_sweep_args_exit_2_with_one_line(tmp_path, capsys, items, message):
    assert cli_main(["sweep", str(recipe(tmp_path)), *items]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())    # nothing ran
