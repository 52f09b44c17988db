"""Recipes as a chain of named stages: declarations, `from:` between stages, staleness, bad graphs."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.recipe import RecipeView, load_recipe
from pipeline.runner import Runner, specs_for

ROOT = Path(__file__).resolve().parent.parent
CHAIN = """
stages:
  - tokenizer
  - pretrain
  - {name: mid, kind: sft, from: pretrain, max_steps: 7}
  - sft
  - rm
  - rl
sft: {from: mid}
"""


def write(tmp_path, body: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(f"name: g\noutput_dir: {tmp_path / 'runs'}\ntracking: {{wandb: false}}\n{body}")
    return path


def fake_runner(path: Path, *overrides: str) -> Runner:
    recipe = load_recipe(path, list(overrides))
    specs = tuple(dataclasses.replace(s, entry="tests.fake_stages:any_stage") for s in specs_for(recipe))
    return Runner(recipe, path, stages=specs)


def actions(runner: Runner) -> dict[str, str]:
    return {i.spec.name: i.action for i in runner.plan()}


def test_declared_stage_gets_its_own_section_and_feeds_the_next(tmp_path):
    recipe = load_recipe(write(tmp_path, CHAIN))
    assert [s["name"] for s in recipe.chain()] == ["tokenizer", "pretrain", "mid", "sft", "rm", "rl"]
    items = {i.spec.name: i for i in Runner(recipe, tmp_path / "r.yaml").plan()}
    assert items["mid"].spec.entry == "stages.sft:run"
    assert items["mid"].inputs["model"]["stage"] == "pretrain"
    assert items["sft"].inputs["model"]["stage"] == "mid"
    view = RecipeView(recipe, ("seed", "sft", "eval"), "mid")
    assert view.sft.max_steps == 7 and recipe.sft.max_steps != 7  # mid reads its own section as .sft
    assert RecipeView(recipe, ("seed", "sft", "eval"), "sft").sft.max_steps == recipe.sft.max_steps


def test_changing_a_section_makes_exactly_the_downstream_stages_stale(tmp_path):
    path = write(tmp_path, CHAIN)
    fake_runner(path).run()
    assert set(actions(fake_runner(path)).values()) == {"skip"}
    changed = write(tmp_path, CHAIN.replace("max_steps: 7", "max_steps: 8"))
    assert actions(fake_runner(changed)) == {"tokenizer": "skip", "pretrain": "skip", "mid": "run", "sft": "run",
                                             "rm": "run", "rl": "run"}
    fake_runner(changed).run()
    assert actions(fake_runner(changed, "rm.k=3")) == {"tokenizer": "skip", "pretrain": "skip", "mid": "skip",
                                                       "sft": "skip", "rm": "run", "rl": "skip"}


def test_default_recipe_keeps_its_five_stages():
    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml")
    assert [s.name for s in specs_for(recipe)] == ["tokenizer", "pretrain", "sft", "rm", "rl"]


@pytest.mark.parametrize("body, message", [
    (CHAIN.replace("from: mid", "from: midd"), "from 'midd' is no stage of this recipe and no model dir — did you mean 'mid'?"),
    (CHAIN.replace("{name: mid, kind: sft, from: pretrain", "{name: mid, kind: sft, from: sft"),
     "stage 'mid' takes from 'sft', which does not come before it"),
    (CHAIN.replace("  - rl\n", "  - rl\n  - {name: mid, kind: rm}\n"), "two stages named 'mid'"),
    (CHAIN.replace("kind: sft", "kind: sfft"), "unknown kind for stage 'mid' 'sfft' — did you mean 'sft'?"),
    (CHAIN.replace("max_steps: 7", "max_stepz: 7"), "stage 'mid' (sft): unknown key 'max_stepz' — did you mean 'max_steps'?"),
    (CHAIN.replace("  - rm\n", "  - rmm\n"), "unknown stage"),
])
def test_bad_graphs_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, body, message):
    path = write(tmp_path, body)
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(UserError):
        load_recipe(path)


def test_rl_after_rl_takes_the_earlier_policy_and_the_reward_model(tmp_path):
    body = "stages: [tokenizer, pretrain, sft, rm, rl, {name: ppo, kind: rl, from: rl, algorithm: ppo}]\n"
    recipe = load_recipe(write(tmp_path, body))
    items = {i.spec.name: i for i in Runner(recipe, tmp_path / "r.yaml").plan()}
    assert {k: v["stage"] for k, v in items["ppo"].inputs.items()} == {"policy": "rl", "reward_model": "rm"}
    assert items["ppo"].spec.config_keys == ("seed", "rl", "eval", "sft")


def test_shipped_chain_recipe_plans(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "tiny-mid-dpo.yaml")
    items = {i.spec.name: i for i in Runner(recipe, ROOT / "recipes/tiny-mid-dpo.yaml").plan()}
    assert list(items) == ["tokenizer", "pretrain", "mid", "sft", "dpo"]
    assert items["dpo"].spec.entry == "stages.dpo:run" and items["dpo"].inputs["model"]["stage"] == "sft"
