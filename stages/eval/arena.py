"""Arena: pairwise comparisons of checkpoints on held-out prompts, Bradley-Terry/Elo scores with CIs.

Every checkpoint answers the same held-out prompts (test split of rl's task sources, else sft's; round-robin);
every pair of checkpoints meets on every prompt. A judge scores each answer (verifier: right/wrong;
rm: the reward model's score; any `module:function` reward, see reward/combine.py); the higher score wins
and equal scores tie. People judge through the ranking page: each pair is a rollout record with K=2
completions (shown in a seeded random order), and the ranked order decides the game.
Scores: the Bradley-Terry model P(i beats j) = p_i / (p_i + p_j), fitted by the MM algorithm (Hunter
2004) with ties as half a win each, and shown on the Elo scale (1000 + 400 log10 p, mean log p = 0).
Departure from a plain MLE: every pair gets `prior` virtual ties (default 0.5), so a model that wins
every game gets a finite score. 95% intervals come from a bootstrap over prompts (all games on a prompt
are resampled together, since they share the prompt's difficulty).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import UserError
from reward.combine import RewardMix
from stages.data.chat import render_prompt
from stages.data.tasks.sources import interleave, load_tasks
from stages.lm.generation import generate
from stages.lm.model import load_causal_lm

ELO_SCALE = 400.0 / math.log(10.0)


@dataclass(frozen=True)
class Game:
    a: int            # index of one player
    b: int            # index of the other
    score: float      # 1.0 a wins, 0.0 b wins, 0.5 tie
    prompt: int       # the prompt both answered (the bootstrap resamples prompts)


# ------------------------------------------------------------------ Bradley-Terry
def fit_bradley_terry(n_players: int, games: list[Game], prior: float = 0.5, iters: int = 10_000,
                      tol: float = 1e-12) -> np.ndarray:
    """Log-strengths theta (mean 0) maximising sum log sigmoid(theta_winner - theta_loser)."""
    wins = np.zeros((n_players, n_players))  # wins[i, j]: (fractional) wins of i over j
    for g in games:
        wins[g.a, g.b] += g.score
        wins[g.b, g.a] += 1.0 - g.score
    wins += prior * (1.0 - np.eye(n_players))  # virtual ties keep perfect records finite
    played = wins + wins.T                     # games between i and j (incl. virtual)
    total_wins = wins.sum(axis=1)
    p = np.ones(n_players)
    for _ in range(iters):
        denom = (played / (p[:, None] + p[None, :])).sum(axis=1)
        new = np.where(denom > 0, total_wins / np.maximum(denom, 1e-300), p)
        new = np.maximum(new, 1e-300)
        new /= np.exp(np.log(new).mean())      # fix the scale: geometric mean 1
        if np.max(np.abs(np.log(new) - np.log(p))) < tol:
            p = new
            break
        p = new
    return np.log(p)


def elo(theta: np.ndarray) -> np.ndarray:
    return 1000.0 + ELO_SCALE * theta


def bootstrap_elo(n_players: int, games: list[Game], rounds: int = 200, seed: int = 0,
                  prior: float = 0.5, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of each player's Elo, resampling prompts with replacement."""
    by_prompt: dict[int, list[Game]] = {}
    for g in games:
        by_prompt.setdefault(g.prompt, []).append(g)
    prompts = list(by_prompt)
    rng = np.random.default_rng(seed)
    draws = np.empty((rounds, n_players))
    for r in range(rounds):
        picked = rng.integers(0, len(prompts), len(prompts))
        sample = [g for i in picked for g in by_prompt[prompts[i]]]
        draws[r] = elo(fit_bradley_terry(n_players, sample, prior, iters=2000, tol=1e-9))
    tail = (1.0 - level) / 2 * 100
    return np.percentile(draws, tail, axis=0), np.percentile(draws, 100 - tail, axis=0)


def standings(names: list[str], games: list[Game], rounds: int = 200, seed: int = 0,
              prior: float = 0.5) -> list[dict]:
    """One row per player, best first: elo, 95% interval, wins, losses, ties."""
    if not games:
        raise UserError("arena: no games were played (no prompts, or every pair was skipped)")
    n = len(names)
    scores = elo(fit_bradley_terry(n, games, prior))
    low, high = bootstrap_elo(n, games, rounds, seed, prior)
    rows = []
    for i, name in enumerate(names):
        mine = [(g.score if g.a == i else 1.0 - g.score) for g in games if i in (g.a, g.b)]
        rows.append({"model": name, "elo": float(scores[i]), "low": float(low[i]), "high": float(high[i]),
                     "wins": sum(s == 1.0 for s in mine), "losses": sum(s == 0.0 for s in mine),
                     "ties": sum(s == 0.5 for s in mine)})
    return sorted(rows, key=lambda r: -r["elo"])


def format_standings(rows: list[dict]) -> str:
    width = max(len(r["model"]) for r in rows)
    lines = [f"{'model':<{width}}  {'elo':>6}  {'95% CI':>15}  {'W':>4} {'L':>4} {'T':>4}"]
    lines += [f"{r['model']:<{width}}  {r['elo']:>6.0f}  [{r['low']:>6.0f}, {r['high']:>6.0f}]  "
              f"{r['wins']:>4} {r['losses']:>4} {r['ties']:>4}" for r in rows]
    return "\n".join(lines)


def games_from_scores(scores: list[list[float]]) -> list[Game]:
    """scores[player][prompt] -> every pair on every prompt; the higher score wins, equal ties."""
    games = []
    for a in range(len(scores)):
        for b in range(a + 1, len(scores)):
            for p, (sa, sb) in enumerate(zip(scores[a], scores[b])):
                games.append(Game(a, b, 1.0 if sa > sb else 0.0 if sa < sb else 0.5, p))
    return games


# ------------------------------------------------------------------ people on the ranking page
def write_pairs(path: Path, names: list[str], tasks, answers: list[list[str]]) -> int:
    """The pairs as rollout records for reward/ranking_page.py (K=2: one answer from each player)."""
    records = []
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            for p, task in enumerate(tasks):
                records.append({"id": f"arena-{a}-{b}-{p}", "prompt_messages": task.prompt_messages(),
                                "family": task.family, "policy": "arena",
                                "completions": [{"text": answers[a][p], "player": names[a]},
                                                {"text": answers[b][p], "player": names[b]}],
                                "arena": {"a": a, "b": b, "prompt": p}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return len(records)


def games_from_rankings(rankings: list[dict]) -> list[Game]:
    """Ranked pair records (order = completion indices best first) -> games; other records ignored."""
    games = []
    for rec in rankings:
        pid = str(rec.get("prompt_id", ""))
        if not pid.startswith("arena-") or len(rec.get("order", [])) != 2:
            continue
        a, b, p = (int(x) for x in pid.split("-")[1:4])
        games.append(Game(a, b, 1.0 if rec["order"][0] == 0 else 0.0, p))
    return games


def identical_ties(answers: list[list[str]]) -> list[Game]:
    """Ties for the pairs whose two answers are the same text: the ranking page leaves such prompts out
    (nothing to rank), and the verifier's judging would tie them too."""
    return [Game(a, b, 0.5, p) for a in range(len(answers)) for b in range(a + 1, len(answers))
            for p, (x, y) in enumerate(zip(answers[a], answers[b])) if x == y]


# ------------------------------------------------------------------ playing
def held_out_tasks(families: list[str], n: int, seed: int):
    """n held-out tasks, sources (specs or built-in family names) taken in turn."""
    per = -(-n // len(families))
    return interleave([load_tasks(f, per, seed, "test") for f in families], n)


def answer_all(checkpoint: str, tasks, max_new_tokens: int, temperature: float, seed: int) -> tuple[list[str], list[str]]:
    """(rendered prompt texts, completion texts) of one checkpoint on the tasks."""
    if not Path(checkpoint).is_dir():
        raise UserError(f"arena: checkpoint '{checkpoint}' is not a model dir")
    model, tokenizer = load_causal_lm(checkpoint, "cuda" if torch.cuda.is_available() else "cpu")
    prompts = [render_prompt(tokenizer, t.prompt_messages()) for t in tasks]
    outs = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    return [tokenizer.decode(p, skip_special_tokens=False) for p in prompts], [o[0].text for o in outs]


def judge_scores(judge: str, prompts: list[str], answers: list[list[str]], tasks) -> list[list[float]]:
    """Each player's score on each prompt from a reward function (verifier, rm:<dir>, module:function)."""
    if judge.startswith("rm:"):
        mix = RewardMix({"rm": 1.0}, reward_model=judge[3:], key="--judge")
    else:
        mix = RewardMix({judge: 1.0}, key="--judge")
    fields = {"tasks": tasks, "answers": [t.answer for t in tasks], "families": [t.family for t in tasks],
              "messages": [t.prompt_messages() for t in tasks]}
    return [list(mix(prompts, player, **fields)[0]) for player in answers]


def arena_dir(run_dir: Path, names: list[str], settings: dict) -> Path:
    key = hashlib.sha256(json.dumps([names, settings], sort_keys=True).encode()).hexdigest()[:10]
    return run_dir / "arena" / key


def load_or_answer(out: Path, checkpoints: list[str], tasks, max_new_tokens: int, temperature: float,
                    seed: int) -> tuple[list[str], list[list[str]]]:
    """Answers are cached in the arena dir, so a second call (after people ranked) reuses them."""
    cache = out / "answers.json"
    if cache.is_file():
        data = json.loads(cache.read_text())
        return data["prompts"], data["answers"]
    answers, prompts = [], []
    for ckpt in checkpoints:
        prompts, texts = answer_all(ckpt, tasks, max_new_tokens, temperature, seed)
        answers.append(texts)
        print(f"arena | {ckpt}: answered {len(texts)} prompts", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"checkpoints": checkpoints, "prompts": prompts, "answers": answers}))
    return prompts, answers
