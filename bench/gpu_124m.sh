#!/usr/bin/env bash
# Throughput of the GPT-2 124M recipe on one GPU: 50 pretraining steps on accelerate (bf16 autocast,
# torch.compile, 524,288 tokens per step = 32 x 1024 x 16 micro-steps), then tokens/s and MFU (median
# of steps 11-50, so compilation and warm-up are left out) as one line, plus the per-step log.
#
#   bash bench/gpu_124m.sh                    # needs a CUDA GPU; ~5-10 min including tokenizer + compile
#   STEPS=100 MICRO=64 bash bench/gpu_124m.sh
#   EXTRA="pretrain.compile=false" bash bench/gpu_124m.sh   # more dotted overrides
#
# Offline on purpose: the text is the embedded corpus (data.source=embedded), not FineWeb-Edu, so the
# number does not depend on the network; throughput does not depend on what the tokens say. The model
# is the recipe's (12 x 768, 1024 context, 50,304 embedding rows): BPE reaches only ~15k tokens on the
# embedded corpus, so model.vocab_size pads the embedding to the size a FineWeb tokenizer gives.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-50}
MICRO=${MICRO:-32}
NAME=bench-124m
RUNS=${RUNS:-runs}  # not $OUT: some job runners set that
export DS_ACCELERATOR=${DS_ACCELERATOR:-cuda} WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PY" -m pipeline run recipes/gpt2-124m.yaml --stages pretrain --force pretrain \
    name=$NAME output_dir="$RUNS" tracking.wandb=false data.source=embedded data.max_documents=null \
    data.val_fraction=0.02 tokenizer.max_train_chars=20000000 \
    pretrain.max_steps="$STEPS" pretrain.micro_batch_size="$MICRO" pretrain.optim.warmup_steps=10 \
    pretrain.eval_every=100000 pretrain.eval_tokens=65536 pretrain.sample_every=100000 \
    pretrain.checkpoint_every=100000 model.vocab_size=50304 ${EXTRA:-}

"$PY" - "$RUNS/$NAME/pretrain" <<'PY'
import json, statistics, sys
from pathlib import Path
run = Path(sys.argv[1])
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
steps = [r for r in rows if "train/tokens_per_s" in r and r.get("step", 0) > 10]
if not steps:
    sys.exit("no step metrics after step 10 in metrics.jsonl")
tok = statistics.median(r["train/tokens_per_s"] for r in steps)
mfu = statistics.median(r.get("train/mfu", float("nan")) for r in steps)
config = json.loads((run / "config.json").read_text())
manifest = json.loads((run / "manifest.json").read_text())
print(f"gpt2-124m | embedding rows {config.get('vocab_size')} | {manifest['metrics'].get('params', float('nan')):,.0f} params | {len(steps)} steps after warm-up | "
      f"{tok:,.0f} tokens/s | MFU {100 * mfu:.1f}% | wall {manifest['wall_time_s']:.0f}s")
PY
