"""What a training stage calls so that one loop runs under any engine (none, DDP, FSDP, DeepSpeed ZeRO).

The stage builds a plain `accelerate.Accelerator()`: under `accelerate launch` (pipeline/launch.py)
the launcher's environment already selects the engine from recipes/engines/<engine>.yaml, so the
stage never names it. Three things differ between engines and live here:

    accelerator = Accelerator(gradient_accumulation_steps=accum)
    configure_engine(accelerator, micro_batch_size=b, grad_clip=cfg.optim.grad_clip)  # before prepare()
    model, optimizer = accelerator.prepare(model, optimizer)
    rows = global_batch[rank_slice(len(global_batch), accelerator)]   # this rank's share of the step
    ...
    save_model_gathered(accelerator, model, tokenizer, ctx.out_dir)   # every rank calls it

- DeepSpeed takes the micro-batch size and gradient clipping from its JSON ("auto" there); loops that
  feed tensors without a DataLoader must say them before `prepare` (configure_engine).
- Under ZeRO-3 and FSDP no rank holds the whole model: the final HF dir is written from a state dict
  gathered on rank 0 (accelerator.get_state_dict, a collective), so it loads at any process count.
  DeepSpeed's module holds its compute copy (bf16 when mixed_precision is bf16, fp32 on CPU), so that
  is what ZeRO-2/3 save; DDP and FSDP save the fp32 master weights.
- Resumable state (optimizer shards included) goes through accelerator.save_state/load_state, which
  every rank must call; `save_state`/`load_state` below add the loop's own counters beside it.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from transformers.integrations import set_hf_deepspeed_config, unset_hf_deepspeed_config

from pipeline.errors import UserError


def is_deepspeed(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def configure_engine(accelerator, micro_batch_size: int, grad_clip: float) -> None:
    """Fill DeepSpeed's "auto" batch/clip settings (no-op for other engines). Call before prepare().

    Under DeepSpeed the engine clips inside `accelerator.backward` at the step boundary, so the
    stage's own `accelerator.clip_grad_norm_` only reports the norm; grad_clip 0 turns clipping off.
    """
    if not is_deepspeed(accelerator):
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    accum = accelerator.gradient_accumulation_steps
    ds["train_micro_batch_size_per_gpu"] = micro_batch_size
    ds["gradient_accumulation_steps"] = accum
    ds["train_batch_size"] = micro_batch_size * accum * accelerator.num_processes
    ds["gradient_clipping"] = float(grad_clip)


def rank_slice(global_size: int, accelerator, what: str = "global batch") -> slice:
    """This rank's contiguous share of `global_size` rows, so N ranks x b rows == 1 rank x N*b rows."""
    world, rank = accelerator.num_processes, accelerator.process_index
    if global_size % world:
        raise UserError(f"distributed.num_processes: {what} of {global_size} rows does not split evenly "
                        f"over {world} processes; expected a multiple of {world}")
    per = global_size // world
    return slice(rank * per, (rank + 1) * per)


def mean_over_ranks(accelerator, metrics: dict[str, float]) -> dict[str, float]:
    """The per-rank scalars averaged over all ranks (one all-reduce), so rank 0 logs the global step.

    Every rank must call it with the same keys; one process returns the dict unchanged."""
    if accelerator.num_processes == 1 or not metrics:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    return dict(zip(keys, accelerator.reduce(values, "mean").tolist()))


def holds_shards(accelerator) -> bool:
    """True when no rank holds whole parameters (FSDP, ZeRO-3): saving must gather them first."""
    return accelerator.distributed_type == DistributedType.FSDP or partitions_at_load(accelerator)


def partitions_at_load(accelerator) -> bool:
    """True under ZeRO-3: from_pretrained then gives every rank only its shard of each weight."""
    return is_deepspeed(accelerator) and accelerator.state.deepspeed_plugin.zero_stage == 3


@contextmanager
def whole_model_loading(accelerator):
    """Load a whole model in this process alone, e.g. rank 0 evaluating the saved dir.

    Under ZeRO-3, from_pretrained partitions the weights over the ranks as it loads (zero.Init, a
    collective): one rank doing it alone would hang, and the others hold nothing to forward with."""
    if not partitions_at_load(accelerator):
        yield
        return
    # transformers decides from its global DeepSpeed config (accelerate's plugin keeps it alive);
    # the plugin's zero3_init_context_manager re-creates that config, so it does not turn this off.
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(accelerator.state.deepspeed_plugin.dschf)


def save_model_gathered(accelerator, model, tokenizer, out_dir: str | Path) -> None:
    """Write a full HF dir (safetensors + tokenizer) on rank 0 from whatever the engine sharded.

    Every rank must call this: gathering the ZeRO-3/FSDP state dict is a collective. Other engines
    save the unwrapped model itself, so tied embeddings stay one tensor in the file.
    """
    out_dir = Path(out_dir)
    state_dict = accelerator.get_state_dict(model) if holds_shards(accelerator) else None
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
        unwrapped.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
    accelerator.wait_for_everyone()


def save_state(accelerator, ckpt_dir: str | Path, counters: dict) -> None:
    """Model + optimizer (+ registered objects and RNG) per rank, sharded as the engine keeps them,
    plus the loop's counters (step, tokens seen, ...) in counters.json written last by rank 0."""
    ckpt_dir = Path(ckpt_dir)
    accelerator.save_state(str(ckpt_dir))
    if accelerator.is_main_process:
        tmp = ckpt_dir / "counters.json.tmp"
        tmp.write_text(json.dumps(counters))
        tmp.replace(ckpt_dir / "counters.json")
    accelerator.wait_for_everyone()


def load_state(accelerator, ckpt_dir: str | Path) -> dict | None:
    """Restore a checkpoint written by save_state (same engine and process count); None if absent/partial."""
    ckpt_dir = Path(ckpt_dir)
    counters = ckpt_dir / "counters.json"
    if not counters.is_file():
        return None
    accelerator.load_state(str(ckpt_dir))
    return json.loads(counters.read_text())
