"""`lifecycle export CKPT --format hf --out DIR`: a clean Hugging Face model dir with a model card.

    lifecycle export runs/tiny/rl --format hf --out exports/tiny-rl

The dir holds only what a user of the model needs: config.json + model.safetensors (save_pretrained), the
tokenizer with our chat template (chat_template.jinja), generation_config.json (eos = <|end|>) and
README.md, the model card. The card lists the lineage: every stage that led to the checkpoint, found by
following manifest.json "inputs" from the checkpoint back (upstream stages are siblings in runs/<name>/),
with each stage's data, steps, key metrics and wall time, then the chat format and the calculator protocol.
Run artifacts (metrics.jsonl, logs, checkpoints, W&B) stay behind.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.artifacts import KEY_METRICS, read_manifest

DATA_KEYS = ("source", "dataset", "config_name", "paths", "families", "tasks", "datasets")


def lineage(checkpoint: str | Path) -> list[dict]:
    """The manifests of the stages that made `checkpoint`, upstream first (each with its "path" added)."""
    seen: dict[str, dict] = {}

    def visit(path: Path) -> None:
        key = str(path.resolve())
        manifest = read_manifest(path)
        if key in seen or manifest is None:
            return
        for info in (manifest.get("inputs") or {}).values():
            stage = info.get("stage")
            visit(path.parent / stage if stage else Path(info.get("path", "")))
        seen[key] = {**manifest, "path": str(path)}

    visit(Path(checkpoint))
    return list(seen.values())


def _data(config: dict) -> str:
    found = []
    for section in config.values():
        if isinstance(section, dict):
            found += [f"{k}={section[k]}" for k in DATA_KEYS if section.get(k) not in (None, [], "")]
            if section.get("max_steps"):
                found.append(f"max_steps={section['max_steps']}")
    return ", ".join(dict.fromkeys(found)) or "-"


def _inputs(manifest: dict) -> str:
    inputs = manifest.get("inputs") or {}
    return ", ".join(f"{role}: {info.get('stage') or info.get('path')}" for role, info in inputs.items()) or "-"


def _metrics(stage: str, metrics: dict, limit: int = 4) -> str:
    keys = [k for k in KEY_METRICS.get(stage, []) if k in metrics]
    keys += sorted(k for k in metrics if k.startswith("eval/") and k not in keys)
    return ", ".join(f"{k.removeprefix('eval/')}={metrics[k]:.4g}" for k in keys[:limit]
                     if isinstance(metrics[k], (int, float))) or "-"


def model_card(name: str, model, tokenizer, stages: list[dict]) -> str:
    """README.md text: front matter, what the model is, lineage table, chat format, how to load it."""
    c = model.config
    n_params = sum(p.numel() for p in model.parameters())
    rows = [f"| {m['stage']} | {_inputs(m)} | {_data(m.get('config') or {})} "
            f"| {_metrics(m['stage'], m.get('metrics') or {})} | {m.get('wall_time_s', '-')} s |" for m in stages]
    table = "\n".join(["| stage | inputs | data | key metrics | wall time |", "|---|---|---|---|---|", *rows])
    chain = " -> ".join(m["stage"] for m in stages)
    made = f"the output of its `{stages[-1]['stage']}` stage ({chain})" if stages else "stages unknown"
    commit = next((m.get("git_commit") for m in reversed(stages) if m.get("git_commit")), None)
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [llm-lifecycle, chat]
---
# {name}

A {type(model).__name__} with {n_params:,} parameters ({c.num_hidden_layers} layers, width {c.hidden_size},
context {getattr(c, 'max_position_embeddings', None) or getattr(c, 'n_positions', '?')} tokens, vocabulary {len(tokenizer)}),
made by llm-lifecycle (raw text -> tokenizer -> pretrain -> SFT -> reward model -> RL): {made}.

## Lineage

{table if stages else "No run manifests were found beside the checkpoint: lineage unknown."}
{f"{chr(10)}Code: git commit {commit}." if commit else ""}

## Chat format

`tokenizer.apply_chat_template(messages, add_generation_prompt=True)` renders (chat_template.jinja):

    <|bos|><|system|>SYSTEM<|end|><|user|>USER<|end|><|assistant|>ANSWER<|end|>

Generation stops at `<|end|>` (the eos token). The model may call a calculator: it writes
`<|calc|>EXPR<|/calc|>` and the runtime inserts `<|result|>VALUE<|/result|>` before it continues. transformers'
`generate` does not run the tool; `lifecycle chat` and `lifecycle serve` do (shown as `[calc EXPR = VALUE]`).

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("PATH")
model = AutoModelForCausalLM.from_pretrained("PATH")
ids = tok.apply_chat_template([{{"role": "user", "content": "What is 12 + 30?"}}], add_generation_prompt=True,
                              return_tensors="pt", return_dict=True)["input_ids"]
print(tok.decode(model.generate(ids, max_new_tokens=64)[0, ids.shape[1]:]))
```
"""


def export_hf(model, tokenizer, checkpoint: str | Path, out: str | Path, name: str) -> dict:
    """save_pretrained the model and tokenizer into `out` and write the model card; returns a summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    stages = lineage(checkpoint)
    (out / "README.md").write_text(model_card(name, model, tokenizer, stages))
    return {"files": sorted(p.name for p in out.iterdir()), "stages": [m["stage"] for m in stages]}
