"""recipes/engines/: every engine the schema offers has an accelerate config that accelerate itself
loads, DeepSpeed JSONs agree with their names, and the GPU/cluster recipes validate."""
from __future__ import annotations

import json
import subprocess
import typing
from pathlib import Path

import pytest
import yaml

from pipeline import launch
from pipeline.recipe import load_recipe
from pipeline.schema import Distributed

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ROOT / "recipes" / "engines"
ENGINE_NAMES = [e for e in typing.get_args(Distributed.model_fields["engine"].annotation) if e != "none"]


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_engine_config_loads_in_accelerate(engine):
    from accelerate.commands.config.config_args import load_config_from_file
    path = ENGINES / f"{engine}.yaml"
    config = load_config_from_file(str(path))  # accelerate's own parser: unknown keys raise
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(engine, "DEEPSPEED")
    assert str(config.distributed_type).endswith(expected)
    assert config.mixed_precision == "bf16"


@pytest.mark.parametrize("engine,stage", [("zero2", 2), ("zero3", 3), ("zero3_offload", 3)])
def test_deepspeed_json_matches_its_engine(engine, stage):
    raw = yaml.safe_load((ENGINES / f"{engine}.yaml").read_text())
    assert raw["deepspeed_config"]["deepspeed_config_file"] == f"{engine}.json"
    ds = json.loads((ENGINES / f"{engine}.json").read_text())
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage
    # accelerate fills these from the run (pipeline.distributed.configure_engine, --mixed_precision)
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert ds[key] == "auto"
    assert ds["bf16"]["enabled"] == "auto"
    if stage == 3:  # the final model is gathered to full weights on rank 0
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    offloaded = "offload" in engine
    assert (zero.get("offload_param", {}).get("device") == "cpu") == offloaded
    assert (zero.get("offload_optimizer", {}).get("device") == "cpu") == offloaded


def test_fsdp_is_full_shard_with_activation_checkpointing():
    fsdp = yaml.safe_load((ENGINES / "fsdp.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True
    assert fsdp["fsdp_activation_checkpointing"] is True
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_launch_command_per_engine(engine):
    dist = Distributed(engine=engine, num_processes=16, num_machines=2, main_process_ip="10.0.0.1",
                       mixed_precision="bf16")
    cmd = launch.accelerate_command(dist, "stages.sft:run", Path("runs/x/sft.tmp"), Path("runs/x"), "sft",
                                    machine_rank="1")
    line = " ".join(cmd)
    assert "--num_processes 16 --num_machines 2" in line and "--mixed_precision bf16" in line
    assert "--machine_rank 1 --main_process_ip 10.0.0.1" in line
    assert line.endswith("-m pipeline.worker --entry stages.sft:run --stage sft --stage-dir runs/x/sft.tmp "
                         "--run-dir runs/x")
    if engine == "ddp":
        assert "--multi_gpu" in cmd and "--config_file" not in cmd
    else:
        assert cmd[cmd.index("--config_file") + 1] == str(ENGINES / f"{engine}.yaml")
    if engine.startswith("zero"):  # absolute: accelerate would resolve the YAML's relative name from the cwd
        assert cmd[cmd.index("--deepspeed_config_file") + 1] == str(ENGINES / f"{engine}.json")


def test_gpu_and_cluster_recipes_validate():
    one = load_recipe(ROOT / "recipes" / "gpt2-124m.yaml")
    assert (one.model.arch, one.model.n_layer, one.model.n_embd, one.model.seq_len) == ("gpt2", 12, 768, 1024)
    assert one.data.source == "fineweb" and one.distributed_for("pretrain").num_processes == 1
    cluster = load_recipe(ROOT / "recipes" / "gpt2-124m-2x8.yaml")
    for stage in ("pretrain", "sft", "rm", "rl"):
        dist = cluster.distributed_for(stage)
        assert (dist.num_processes, dist.num_machines, dist.mixed_precision) == (16, 2, "bf16")
    assert cluster.distributed_for("sft").engine == "zero2"
    assert cluster.distributed_for("tokenizer").num_processes == 1  # the tokenizer stays in one process
    # same tokens per optimizer step on 1 GPU (16 micro-steps) and on 16 (one each)
    assert cluster.pretrain.total_batch_tokens == one.pretrain.total_batch_tokens == 16 * 32 * 1024


def test_bench_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_124m.sh")]).returncode == 0
