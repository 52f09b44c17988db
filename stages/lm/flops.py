"""Model FLOPs per token and the peak FLOP/s of the device: the two halves of MFU.

MFU counts 6N + 12*L*d*T training flops per token (PaLM, Chowdhery et al. 2022, appendix B).
"""
from __future__ import annotations

from pathlib import Path

import torch

# Dense bf16 peak FLOP/s by GPU name (fp32/tf32 runs use half). CPU: a stated nominal, not a measured peak:
# per core 2 FMA units x fp32 lanes (16 with AVX-512, else 8) x 2 flops x 3 GHz.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L40S": 362e12, "L4": 121e12,
              "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}


def cpu_flops_per_core() -> float:
    try:
        avx512 = "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        avx512 = False
    return 2 * (16 if avx512 else 8) * 2 * 3e9


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token: 6N (forward + backward matmuls) + 12*L*d*T (attention scores)."""
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    if not getattr(cfg, "tie_word_embeddings", False):
        n -= model.get_input_embeddings().weight.numel()  # a lookup, not a matmul
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    width = getattr(cfg, "hidden_size", None) or cfg.n_embd
    return 6 * n + 12 * layers * width * seq_len


def peak_flops(device: str, bf16: bool) -> tuple[float, str]:
    """Peak FLOP/s of this process's device, and what it is (MFU's denominator)."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
        if peak is not None:
            return (peak if bf16 else peak / 2), name
        return float("nan"), name
    cores, per_core = torch.get_num_threads(), cpu_flops_per_core()
    return cores * per_core, f"CPU nominal {cores} thread(s) x {per_core / 1e9:.0f} GFLOP/s"
