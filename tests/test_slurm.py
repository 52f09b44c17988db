"""`lifecycle slurm`: sbatch scripts per stage chained with afterok; the multi-node launch path (srun +
accelerate launch per node with machine rank, main address and port) run for real with a stand-in srun
that starts the per-node command twice on this machine (2 "nodes" x 1 CPU process)."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def slurm(tmp_path: Path, recipe_text: str, *extra: str) -> subprocess.CompletedProcess:
    (tmp_path / "r.yaml").write_text(recipe_text)
    return subprocess.run([sys.executable, "-m", "pipeline", "slurm", "r.yaml", *extra], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


RECIPE = "name: c\ntracking: {wandb: false}\ndistributed: {engine: zero3, mixed_precision: bf16}\n"


def test_one_job_per_stage_with_cluster_overrides(tmp_path):
    proc = slurm(tmp_path, RECIPE, "--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu",
                 "--time", "01:00:00", "--setup", "source .venv/bin/activate")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "runs/c/slurm"
    scripts = sorted(p.name for p in out.glob("*.sbatch"))
    assert scripts == ["1-tokenizer.sbatch", "2-pretrain.sbatch", "3-sft.sbatch", "4-rm.sbatch", "5-rl.sbatch"]
    pretrain = (out / "2-pretrain.sbatch").read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --partition=gpu", "#SBATCH --time=01:00:00", "source .venv/bin/activate",
                 "pretrain.distributed.num_processes=16", "pretrain.distributed.num_machines=2",
                 "pretrain.distributed.engine=zero3", "--stages pretrain", "LIFECYCLE_SRUN=\"srun",
                 "--machine_rank $SLURM_NODEID", "--main_process_ip $MAIN_PROCESS_IP",
                 "--main_process_port $MAIN_PROCESS_PORT", "scontrol show hostnames"):
        assert line in pretrain, line
    tokenizer = (out / "1-tokenizer.sbatch").read_text()
    assert "#SBATCH --nodes=1" in tokenizer and "--gpus-per-node" not in tokenizer
    assert "LIFECYCLE_SRUN" not in tokenizer
    # Every job carries the same overrides, so the jobs agree on every stage's fingerprint.
    commands = {s: (out / s).read_text().split(" -m pipeline run ")[1].replace("\\\n", " ") for s in scripts}
    assert len({c.split("--stages")[0] for c in commands.values()}) == 1
    # The job's command line parses and plans (run -> plan: same arguments, nothing executed).
    plan = subprocess.run([sys.executable, "-m", "pipeline", "plan", *commands["3-sft.sbatch"].split()],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert plan.returncode == 0, plan.stderr
    assert re.search(r"sft .*\n(.*\n)*.*launch: accelerate launch --config_file \S*zero3.yaml .*--num_processes 16 "
                     r"--num_machines 2", plan.stdout)
    assert "tokenizer  run" in plan.stdout and "in-process" in plan.stdout
    for script in [*scripts, "submit.sh"]:
        assert subprocess.run(["bash", "-n", str(out / script)]).returncode == 0, script


def test_submit_chains_jobs_with_afterok(tmp_path):
    assert slurm(tmp_path, RECIPE, "--nodes", "1", "--gpus-per-node", "4", "--stages", "sft").returncode == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    write_exe(bin_dir / "sbatch", f'#!/bin/bash\necho "$*" >> {log}\nwc -l < {log} | tr -d " "\n')
    proc = subprocess.run(["bash", str(tmp_path / "runs/c/slurm/submit.sh")], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert calls == ["--parsable 1-tokenizer.sbatch", "--parsable --dependency=afterok:1 2-pretrain.sbatch",
                     "--parsable --dependency=afterok:2 3-sft.sbatch"]
    sft = (tmp_path / "runs/c/slurm/3-sft.sbatch").read_text()
    assert "LIFECYCLE_SRUN" not in sft  # one node: accelerate launch runs on the batch host itself
    assert "sft.distributed.num_processes=4" in sft


def test_bad_input_is_one_line_error(tmp_path):
    proc = slurm(tmp_path, RECIPE, "--nodes", "0", "--gpus-per-node", "8")
    assert proc.returncode == 2 and "--nodes 0" in proc.stderr
    with pytest.raises(UserError):
        from pipeline.slurm import write_scripts
        write_scripts(tmp_path / "nope.yaml", [], 1, 1, None)


FAKE_SRUN = """#!/bin/bash
# Stand-in for `srun --nodes=2 --ntasks-per-node=1 CMD`: CMD once per "node", here both on this machine.
while [[ "$1" == --* ]]; do shift; done
SLURM_NODEID=0 "$@" & a=$!
SLURM_NODEID=1 "$@" & b=$!
wait $a; ra=$?; wait $b; rb=$?
exit $(( ra | rb ))
"""


def test_two_machines_through_srun_equal_one_process(tmp_path, monkeypatch):
    from tests.test_distributed import assert_same_weights, load_weights, losses, run_stage
    srun = write_exe(tmp_path / "srun", FAKE_SRUN)
    monkeypatch.setenv("LIFECYCLE_SRUN", f"{srun} --nodes=2 --ntasks-per-node=1")
    monkeypatch.setenv("MAIN_PROCESS_IP", "127.0.0.1")
    monkeypatch.setenv("MAIN_PROCESS_PORT", "29621")
    manifest, out = run_stage(tmp_path, "two", "distributed.num_processes=2", "distributed.num_machines=2",
                              "distributed.engine=ddp")
    assert manifest["launch"].startswith(f"{srun} --nodes=2")
    assert re.search(r"--machine_rank \$SLURM_NODEID .*--main_process_ip 127\.0\.0\.1", manifest["launch"])
    assert manifest["metrics"]["world_size"] == 2.0
    monkeypatch.delenv("LIFECYCLE_SRUN")
    ref, ref_dir = run_stage(tmp_path, "one", "pretrain.micro_batch_size=4")
    assert losses(manifest) == pytest.approx(losses(ref), abs=1e-5)
    assert_same_weights(load_weights(out), load_weights(ref_dir))
