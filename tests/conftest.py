"""Shared fixtures: a tokenizer trained in the test session and a tiny model config (no network)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

TRAIN_TEXT = [
    "In the beginning God created the heaven and the earth. 123 + 456 = 579.",
    "The quick brown fox jumps over the lazy dog; strawberry has three r letters.",
    "Is 9.11 bigger than 9.9? No: 9.90 > 9.11. Numbers 0 1 2 3 4 5 6 7 8 9.",
    "And God said, Let there be light: and there was light.",
] * 50


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from stages.lm.bpe import train_bpe
    return train_bpe(TRAIN_TEXT, vocab_size=400)


@pytest.fixture()
def tiny_model_cfg():
    from pipeline.schema import Model
    return Model(arch="llama", n_layer=2, n_embd=32, n_head=2, seq_len=64)


@pytest.fixture()
def tiny_model(tiny_model_cfg, tiny_tokenizer):
    import torch

    from stages.lm.model import build_model
    torch.manual_seed(0)
    return build_model(tiny_model_cfg, tiny_tokenizer)
