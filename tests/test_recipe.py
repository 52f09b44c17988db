"""Recipe schema, loader, overrides, extends, and the one-line errors users see (exit code 2)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=120)


# (recipe text, exact expected message with {path} standing for the file)
MALFORMED = [
    ("name: t\nsft:\n  optim:\n    lrr: 1e-4\n", "{path}:4: sft.optim.lrr: unknown key — did you mean 'lr'?"),
    ("name: t\npretrain:\n  max_step: 5\n", "{path}:3: pretrain.max_step: unknown key — did you mean 'max_steps'?"),
    ("name: t\npretrian:\n  max_steps: 5\n", "{path}:2: pretrian: unknown key — did you mean 'pretrain'?"),
    ("name: t\npretrain:\n  max_steps: lots\n", "{path}:3: pretrain.max_steps: expected an integer, got 'lots'"),
    ("name: t\nsft:\n  optim:\n    lr: fast\n", "{path}:4: sft.optim.lr: expected a number, got 'fast'"),
    ("name: t\nsft:\n  optim:\n    lr: -1\n", "{path}:4: sft.optim.lr: expected a value > 0, got -1"),
    ("name: t\nrl:\n  algorithm: dpo\n", "{path}:3: rl.algorithm: expected 'grpo' or 'ppo', got 'dpo'"),
    ("seed: 3\n", "{path}: name: required key is missing"),
    ("name: t\nmodel:\n  arch: llama\n  n_layer: [1, 2]\n", "{path}:4: model.n_layer: expected an integer, got [1, 2]"),
    ("name: t\ntracking:\n  wandb: maybe\n", "{path}:3: tracking.wandb: expected true or false, got 'maybe'"),
    ("name: 'bad name'\n", "{path}:1: name: expected a string matching ^[A-Za-z0-9._-]+$, got 'bad name'"),
    ("name: t\ndata: [1, 2]\n", "{path}:2: data: expected a mapping, got [1, 2]"),
    ("- just\n- a list\n", "{path}: expected a mapping of recipe keys, got list"),
    ("", "{path}: recipe is empty; expected a mapping with at least `name:`"),
    ("name: t\nsft:\n  max_steps: 3\n   bad: indent\n", "{path}:4:7: invalid YAML: mapping values are not allowed here"),
    ("name: t\nextends: nope.yaml\n", "{dir}/nope.yaml: recipe file not found"),
    ("name: " + "x" * 100_000 + "\n",
     "{path}:1: name: expected a string of at most 100 characters, got 'xxxxxxxxxxxxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxxxxxxxxxxxx'"),
    ("name: '..'\n", "{path}:1: name: expected a run name, not a path such as '.' or '..', got '..'"),
    ("name: t\neval: {max_prompts_per_family: 1000000000000}\n",
     "{path}:2: eval.max_prompts_per_family: expected a value <= 10000, got 1000000000000"),
    ("name: t\nsft: {optim: {lr: .nan}}\n", "{path}:2: sft.optim.lr: expected a finite number, got nan"),
    ("name: t\noutput_dir: \"runs\\0x\"\n",
     "{path}:2: output_dir: expected text without control characters (found 0x00), got 'runs\\x00x'"),
    ("name: t\nseed: 2024-13-45\n", "{path}: invalid YAML value: month must be in 1..12"),
    ("name: t\ndata: {paths: " + "[" * 5000 + "]" * 5000 + "}\n", "{path}: invalid YAML: nested too deeply"),
]


@pytest.mark.parametrize("text,expected", MALFORMED)
def test_malformed_recipe_message(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as info:
        load_recipe(path)
    assert str(info.value) == expected.format(path=path, dir=tmp_path)


def test_cli_prints_one_line_and_exits_2(tmp_path):
    path = write(tmp_path, "name: t\nsft:\n  optim:\n    lrr: 1e-4\n")
    proc = cli("plan", str(path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {path}:4: sft.optim.lrr: unknown key — did you mean 'lr'?"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("data, expected", [
    (b"name: t\nseed: \x00\x01\x02\n", "{path}:2: control character 0x00 at column 7; expected plain text"),
    ("name: t\n# café\n".encode("latin-1"), "{path}:2: not UTF-8 (byte 0xe9 at column 6); expected UTF-8 text"),
    (b"name: t\n" + b"#" * (1 << 20) + b"\n", "{path}: 1.0 MiB is too large for a recipe (limit 1.0 MiB)"),
])
def test_bad_bytes_and_sizes_are_one_line_errors(tmp_path, data, expected):
    path = tmp_path / "r.yaml"
    path.write_bytes(data)
    with pytest.raises(UserError) as info:
        load_recipe(path)
    assert str(info.value).startswith(expected.format(path=path))


def test_overrides_are_bounded_and_checked_too(tmp_path):
    path = write(tmp_path, "name: t\n")
    with pytest.raises(UserError, match=r"rm.k: expected a value <= 256, got 100000"):
        load_recipe(path, ["rm.k=100000"])
    with pytest.raises(UserError, match=r"seed: expected a value <= 4294967295"):
        load_recipe(path, ["seed=99999999999999999999999"])
    with pytest.raises(UserError, match=r"seed: expected an integer, got '2024-13-45'"):  # not YAML: a string
        load_recipe(path, ["seed=2024-13-45"])


def test_cli_missing_recipe_file(tmp_path):
    proc = cli("run", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'missing.yaml'}: recipe file not found"


def test_numbers_in_scientific_notation_are_floats(tmp_path):
    recipe = load_recipe(write(tmp_path, "name: t\nsft:\n  optim:\n    lr: 1e-4\n"))
    assert recipe.sft.optim.lr == pytest.approx(1e-4)
    assert isinstance(recipe.sft.optim.lr, float)


def test_dotted_overrides(tmp_path):
    path = write(tmp_path, "name: t\npretrain:\n  max_steps: 5\n")
    recipe = load_recipe(path, ["pretrain.max_steps=50", "sft.optim.lr=2e-4", "rl.algorithm=ppo",
                                "sft.from=some/model", "tracking.wandb=false"])
    assert recipe.pretrain.max_steps == 50
    assert recipe.sft.optim.lr == pytest.approx(2e-4)
    assert recipe.rl.algorithm == "ppo"
    assert recipe.sft.from_ == "some/model"
    assert recipe.tracking.wandb is False


def test_bad_override_is_a_user_error(tmp_path):
    path = write(tmp_path, "name: t\n")
    with pytest.raises(UserError, match=r"sft.optim.lrr: unknown key — did you mean 'lr'\?"):
        load_recipe(path, ["sft.optim.lrr=1"])
    with pytest.raises(UserError, match="expected KEY.PATH=VALUE"):
        load_recipe(path, ["pretrain.max_steps"])


def test_extends_merges_and_overrides(tmp_path):
    write(tmp_path, "name: base\nseed: 7\npretrain:\n  max_steps: 5\n  micro_batch_size: 3\n", "base.yaml")
    (tmp_path / "sub").mkdir()
    child = write(tmp_path, "extends: ../base.yaml\nname: child\npretrain:\n  max_steps: 9\n", "sub/child.yaml")
    recipe = load_recipe(child)
    assert (recipe.name, recipe.seed) == ("child", 7)
    assert (recipe.pretrain.max_steps, recipe.pretrain.micro_batch_size) == (9, 3)


def test_extends_cycle_is_reported(tmp_path):
    write(tmp_path, "extends: b.yaml\nname: a\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\nname: b\n", "b.yaml")
    with pytest.raises(UserError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_stage_from_and_per_stage_distributed(tmp_path):
    path = write(tmp_path, "name: t\nsft:\n  from: gpt2\n  distributed: {num_processes: 4, engine: zero2}\n")
    recipe = load_recipe(path)
    assert recipe.sft.from_ == "gpt2"
    assert recipe.distributed_for("sft").num_processes == 4
    assert recipe.distributed_for("pretrain").num_processes == 1


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "engines" not in p.parts),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.name


def test_partial_optim_keeps_the_stage_defaults(tmp_path):
    from pipeline.schema import SFTStage
    recipe = load_recipe(write(tmp_path, "name: t\nsft:\n  optim: {lr: 5e-4}\n"))
    default = SFTStage().optim
    assert recipe.sft.optim.lr == pytest.approx(5e-4)
    assert recipe.sft.optim.warmup_steps == default.warmup_steps
    assert recipe.sft.optim.weight_decay == default.weight_decay


def test_overrides_may_follow_options():
    from pipeline.cli import parse_args
    args = parse_args(["run", "r.yaml", "a.b=1", "--stages", "pretrain", "--force", "pretrain", "c.d=2"])
    assert args.overrides == ["a.b=1", "c.d=2"] and args.force == ["pretrain"]
    with pytest.raises(SystemExit):
        parse_args(["run", "r.yaml", "--force", "pretrain", "not-an-override"])
    with pytest.raises(SystemExit):
        parse_args(["chat", "dir", "a.b=1"])  # chat takes no overrides
