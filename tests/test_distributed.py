"""Scale-out: N processes under `accelerate launch` compute what one process computes.

Every run goes through the real runner (Runner.execute -> pipeline.launch -> accelerate launch ->
pipeline.worker), CPU gloo processes, OMP_NUM_THREADS=1 each. The stage is tests/dist_stage.py (the
loop shape of pretraining on random tokens, using pipeline.distributed); the real pretrain/SFT stages
are checked the same way in test_distributed_stages.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import StageFailed
from pipeline.recipe import load_recipe
from pipeline.runner import Runner, StageSpec

ROOT = Path(__file__).resolve().parent.parent
STAGE = (StageSpec("pretrain", "tests.dist_stage:train", ("seed", "model", "pretrain"), lambda r: {}),)
RECIPE = """name: t
output_dir: {out}
tracking: {{wandb: false}}
model: {{n_layer: 2, n_embd: 32, n_head: 2, seq_len: 16}}
pretrain: {{max_steps: 6, micro_batch_size: 2, checkpoint_every: 100, optim: {{lr: 0.01, warmup_steps: 0}}}}
"""


def run_stage(tmp_path: Path, name: str, *overrides: str) -> tuple[dict, Path]:
    base = tmp_path / name
    base.mkdir(parents=True, exist_ok=True)
    path = base / "r.yaml"
    path.write_text(RECIPE.format(out=base / "runs"))
    runner = Runner(load_recipe(path, list(overrides)), path, stages=STAGE)
    manifest = runner.execute(runner.plan()[0])
    return manifest, base / "runs" / "t" / "pretrain"


def losses(manifest: dict) -> list[float]:
    metrics = manifest["metrics"]
    return [metrics[f"loss/{i}"] for i in range(1, 7)]


def load_weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(model_dir / "model.safetensors"))


def assert_same_weights(a: dict, b: dict, atol: float = 1e-5) -> None:
    import torch
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol), key


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, micro-batch 4: the reference."""
    return run_stage(tmp_path_factory.mktemp("single"), "one", "pretrain.micro_batch_size=4")


def test_ddp_two_processes_equal_one_process(tmp_path, single):
    ref_manifest, ref_dir = single
    manifest, out = run_stage(tmp_path, "ddp", "distributed.num_processes=2", "distributed.engine=ddp")
    assert manifest["metrics"]["world_size"] == 2.0 and "MULTI_CPU" in manifest["metrics"]["distributed_type"]
    assert manifest["launch"].startswith("accelerate launch --multi_gpu --num_processes 2")
    assert losses(manifest) == pytest.approx(losses(ref_manifest), abs=1e-5)
    assert losses(manifest)[0] != pytest.approx(losses(manifest)[-1], abs=1e-4)  # it did train
    # Rank 0 alone wrote the log and the model; the dir loads in one process like any HF dir.
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len([json.loads(x) for x in lines if '"train/loss"' in x]) == 6
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert_same_weights({k: v for k, v in model.state_dict().items() if k in load_weights(out)}, load_weights(out))
    assert_same_weights(load_weights(out), load_weights(ref_dir))


def test_zero2_two_cpu_processes_equal_ddp_and_one_process(tmp_path, single):
    ref_manifest, ref_dir = single
    manifest, out = run_stage(tmp_path, "z2", "distributed.num_processes=2", "distributed.engine=zero2")
    assert "DEEPSPEED" in manifest["metrics"]["distributed_type"] and manifest["metrics"]["world_size"] == 2.0
    assert "--deepspeed_config_file" in manifest["launch"]
    assert losses(manifest) == pytest.approx(losses(ref_manifest), abs=1e-5)
    assert_same_weights(load_weights(out), load_weights(ref_dir))


@pytest.mark.slow
def test_zero3_gathers_a_full_model_on_save(tmp_path, single):
    ref_manifest, ref_dir = single
    manifest, out = run_stage(tmp_path, "z3", "distributed.num_processes=2", "distributed.engine=zero3")
    assert losses(manifest) == pytest.approx(losses(ref_manifest), abs=1e-5)
    assert_same_weights(load_weights(out), load_weights(ref_dir))  # full shapes, not rank 0's shard


def test_zero2_resumes_from_sharded_optimizer_state(tmp_path, monkeypatch, single):
    ref_manifest, ref_dir = single
    args = ("distributed.num_processes=2", "distributed.engine=zero2", "pretrain.checkpoint_every=2")
    monkeypatch.setenv("FAKE_CRASH_AT", "3")
    with pytest.raises(StageFailed):
        run_stage(tmp_path, "resume", *args)
    ckpt = tmp_path / "resume/runs/t/pretrain.tmp/checkpoints/last"
    assert json.loads((ckpt / "counters.json").read_text())["step"] == 2
    shards = list(ckpt.rglob("*optim_states.pt"))
    assert len(shards) == 2  # one optimizer shard per rank
    monkeypatch.delenv("FAKE_CRASH_AT")
    manifest, out = run_stage(tmp_path, "resume", *args)
    assert "resumed at step 2" in (out / "log.txt").read_text()
    assert losses(manifest) == pytest.approx(losses(ref_manifest), abs=1e-5)
    assert_same_weights(load_weights(out), load_weights(ref_dir))


GRPO_STAGE = (StageSpec("pretrain", "tests.dist_grpo:train", ("seed", "model", "pretrain"), lambda r: {}),)


def test_grpo_update_two_processes_equal_one(tmp_path):
    """Each rank holds its own prompt groups with a different number of sampled tokens; the token-level
    GRPO loss over 2 processes must step like one process over the whole rollout (SGD, so the weights
    show any mis-weighting directly)."""
    out = {}
    for name, extra in (("one", []), ("two", ["distributed.num_processes=2", "distributed.engine=ddp"])):
        base = tmp_path / name
        base.mkdir()
        path = base / "r.yaml"
        path.write_text(RECIPE.format(out=base / "runs"))
        runner = Runner(load_recipe(path, ["pretrain.max_steps=3", "pretrain.optim.lr=0.5", *extra]), path,
                        stages=GRPO_STAGE)
        out[name] = (runner.execute(runner.plan()[0]), base / "runs" / "t" / "pretrain")
    (one, one_dir), (two, two_dir) = out["one"], out["two"]
    assert two["launch"].startswith("accelerate launch --multi_gpu --num_processes 2")
    assert [two["metrics"][f"loss/{i}"] for i in (1, 2, 3)] == pytest.approx(
        [one["metrics"][f"loss/{i}"] for i in (1, 2, 3)], abs=1e-6)
    first, last = load_weights(one_dir), load_weights(two_dir)
    assert_same_weights(first, last, atol=1e-6)
