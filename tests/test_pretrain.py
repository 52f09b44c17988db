"""Pretrain stage: exact resume after SIGKILL (through the real runner), overfitting, bits-per-byte maths,
schedules and parameter groups, and the saved dir loading in transformers."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.schema import Optim

RECIPE = """\
name: resume
seed: 7
output_dir: {out}
tracking: {{wandb: false}}
data: {{source: embedded, max_documents: 120, val_fraction: 0.1, shard_tokens: 20000, num_workers: 1}}
model: {{arch: llama, n_layer: 2, n_embd: 32, n_head: 2, seq_len: 32}}
tokenizer: {{vocab_size: 320}}
pretrain:
  max_steps: 40
  micro_batch_size: 4
  total_batch_tokens: 256
  optim: {{lr: 3e-3, warmup_steps: 5, schedule: cosine}}
  eval_every: 15
  eval_tokens: 2048
  sample_every: 20
  checkpoint_every: 10
eval: {{samples: 1}}
"""


def _lifecycle(recipe: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(recipe), "--stages", "pretrain"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _losses(metrics_path: Path) -> dict[int, float]:
    out = {}
    for line in metrics_path.read_text().splitlines():
        rec = json.loads(line)
        if "train/loss" in rec:
            out[rec["step"]] = rec["train/loss"]  # a rerun's later record of a step wins
    return out


def test_sigkill_then_rerun_resumes_exactly(tmp_path):
    full_yaml, killed_yaml = tmp_path / "full.yaml", tmp_path / "killed.yaml"
    full_yaml.write_text(RECIPE.format(out=tmp_path / "full"))
    killed_yaml.write_text(RECIPE.format(out=tmp_path / "killed"))

    proc = _lifecycle(killed_yaml)  # start the run to be killed
    ckpts = tmp_path / "killed" / "resume" / "pretrain.tmp" / "checkpoints"
    deadline = time.time() + 300
    while not any(p.name.startswith("step_") and not p.name.endswith(".tmp") for p in
                  (ckpts.iterdir() if ckpts.is_dir() else [])):
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "resume" / "pretrain").exists()  # never finished

    rerun = _lifecycle(killed_yaml)
    out_rerun = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, out_rerun
    full = _lifecycle(full_yaml)
    out_full = full.communicate(timeout=300)[0]
    assert full.returncode == 0, out_full

    final = tmp_path / "killed" / "resume" / "pretrain"
    assert "resumed from" in (final / "log.txt").read_text()
    resumed, reference = _losses(final / "metrics.jsonl"), _losses(tmp_path / "full" / "resume" / "pretrain" / "metrics.jsonl")
    assert sorted(reference) == list(range(1, 41)) and sorted(resumed) == sorted(reference)
    assert resumed == reference  # every logged loss, before and after the resume, bit for bit
    assert not (final / "checkpoints").exists()  # deleted at the end (keep_checkpoints false)

    manifest = json.loads((final / "manifest.json").read_text())["metrics"]
    assert manifest["eval/val_bpb"] > 0 and manifest["baseline/bigram_bpb"] > 0
    assert manifest["eval/bpb_ratio_vs_bigram"] == pytest.approx(manifest["eval/val_bpb"] / manifest["baseline/bigram_bpb"])

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    ids = tok("And God said", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (1, ids.shape[1] + 5)


class _Batches:
    """Always the same batch: overfitting."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def micro_batch(self, step, micro, rank, world, micro_bs, accum):
        return self.x, self.y


def test_loss_falls_when_overfitting_one_batch(tiny_model, tiny_tokenizer):
    from accelerate import Accelerator

    from pipeline.schema import PretrainStage
    from stages.lm.optim import make_optimizer, make_scheduler
    from stages.pretrain import _train_step
    cfg = PretrainStage(micro_batch_size=4, optim=Optim(lr=1e-2, warmup_steps=0, schedule="constant"))
    ids = tiny_tokenizer("In the beginning God created the heaven and the earth. " * 4)["input_ids"][:33]
    win = np.array([ids] * 4)  # (4, 33)
    acc = Accelerator(cpu=True)
    opt = make_optimizer(tiny_model, cfg.optim)
    sched = make_scheduler(opt, cfg.optim, 30)
    model, opt = acc.prepare(tiny_model, opt)
    losses = [_train_step(model, opt, sched, acc, _Batches(win[:, :-1], win[:, 1:]), s, 1, cfg)[0] for s in range(30)]
    assert losses[-1] < 0.3 * losses[0]


def test_bits_per_byte_hand_computed():
    from stages.lm.losses import bigram_bits_per_byte, bits_per_byte
    assert bits_per_byte(10 * math.log(2), 5) == pytest.approx(2.0)
    # two contexts, two next bytes (the rest of the 256 columns unseen); alpha 0 = plain frequencies
    train = torch.zeros(2, 256)
    train[0, 0], train[0, 1], train[1, 1] = 3, 1, 4
    val = torch.zeros(2, 256)
    val[0, 0], val[0, 1], val[1, 1] = 1, 1, 2
    # -(log2 3/4 + log2 1/4 + 2 log2 1) / 4 bytes
    expected = -(math.log2(0.75) + math.log2(0.25)) / 4
    assert bigram_bits_per_byte(train, val, alpha=0.0) == pytest.approx(expected)


class _Uniform(torch.nn.Module):
    """A 'model' with uniform next-token distributions: loss is ln(V) on every target."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = type("C", (), {"max_position_embeddings": 8})()

    def forward(self, input_ids):
        return type("O", (), {"logits": torch.zeros(*input_ids.shape, self.vocab) + self.w})()


def test_val_bits_per_byte_on_a_uniform_model(tiny_tokenizer):
    from stages.eval.bpb import val_bits_per_byte
    from stages.lm.bpe import encode_plain
    V = len(tiny_tokenizer)
    texts = ["ab", "héllo wörld, 12"]  # two documents: BOS before each
    n_targets = sum(len(ids) + 1 for ids in encode_plain(tiny_tokenizer, texts)) - 1  # all but the first BOS
    n_bytes = sum(len(t.encode()) for t in texts)
    out = val_bits_per_byte(_Uniform(V), tiny_tokenizer, texts=texts, seq_len=4, batch_size=2)
    assert out["val_loss"] == pytest.approx(math.log(V))
    # the second BOS is a target too but carries no bytes: only (n_targets - 1) targets are in bits-per-byte
    assert out["val_bpb"] == pytest.approx((n_targets - 1) * math.log2(V) / n_bytes)


def test_schedules():
    from stages.lm.optim import lr_multiplier
    cos = Optim(warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_multiplier(0, cos, 100) == pytest.approx(0.1) and lr_multiplier(9, cos, 100) == pytest.approx(1.0)
    assert lr_multiplier(55, cos, 100) == pytest.approx(0.55) and lr_multiplier(100, cos, 100) == pytest.approx(0.1)
    wsd = Optim(warmup_steps=0, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert [lr_multiplier(s, wsd, 100) for s in (0, 79)] == [1.0, 1.0]
    assert lr_multiplier(89, wsd, 100) == pytest.approx(0.5) and lr_multiplier(99, wsd, 100) == pytest.approx(0.0)
    assert lr_multiplier(50, Optim(warmup_steps=0, schedule="constant"), 100) == 1.0


def test_param_groups_decay_matrices_only(tiny_model):
    from stages.lm.optim import param_groups
    decay, no_decay = param_groups(tiny_model, 0.1)
    emb = tiny_model.get_input_embeddings().weight
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p is not emb for p in decay["params"])
    assert any(p is emb for p in no_decay["params"]) and any(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(tiny_model.parameters()))


def test_total_batch_tokens_must_divide():
    from pipeline.errors import UserError
    from pipeline.schema import PretrainStage
    from stages.pretrain import accum_steps
    assert accum_steps(PretrainStage(micro_batch_size=4, total_batch_tokens=1024), 64, 2) == 2
    with pytest.raises(UserError, match="total_batch_tokens"):
        accum_steps(PretrainStage(micro_batch_size=4, total_batch_tokens=1000), 64, 1)
