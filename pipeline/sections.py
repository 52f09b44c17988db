"""Recipe sections shared by several stages, and the base every section derives from.

pipeline/schema.py assembles the recipe from these and the stage sections; the rules (extra="forbid",
bounded numbers, a stage's partial `optim:` keeping that stage's defaults) are the same everywhere.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.recipe_values import STEPS, Name


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=(), allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _partial_groups_keep_stage_defaults(cls, data):
        """`optim: {lr: 1e-4}` inside `sft:` changes lr only; the other fields keep the *stage's*
        defaults (e.g. SFT's warmup), not the Optim class defaults."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, field in cls.model_fields.items():
            key = field.alias or name
            if isinstance(field.default, BaseModel) and isinstance(merged.get(key), dict):
                merged[key] = {**field.default.model_dump(by_alias=True), **merged[key]}
        return merged


class Tracking(Section):
    wandb: bool = True                      # log to W&B; offline (runs/<name>/wandb) when no API key
    project: Name = "llm-lifecycle"         # W&B project
    entity: Optional[Name] = None           # W&B team/user; None = your default entity
    group: Optional[Name] = Field(None, min_length=1, max_length=128)  # W&B group; None = the run name (`lifecycle sweep` sets the sweep's name)


class Distributed(Section):
    engine: Literal["none", "ddp", "fsdp", "zero2", "zero3", "zero3_offload"] = "none"  # recipes/engines/<engine>.yaml
    num_processes: int = Field(1, ge=1, le=100_000)  # processes in total (GPUs across all machines)
    num_machines: int = Field(1, ge=1, le=10_000)    # nodes; > 1 needs main_process_ip (or `lifecycle slurm`)
    main_process_ip: Optional[Name] = None   # rank-0 host for multi-node runs
    main_process_port: int = Field(29500, ge=1, le=65535)  # rendezvous port
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # bf16 on GPUs; "no" on CPU


class Optim(Section):
    lr: float = Field(3e-4, gt=0, le=10)          # peak learning rate
    weight_decay: float = Field(0.1, ge=0, le=10)  # AdamW decay on matrices (not norms/biases/embeddings)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.95)  # AdamW betas, each in [0, 1)
    eps: float = Field(1e-8, gt=0, le=1)           # AdamW epsilon
    grad_clip: float = Field(1.0, ge=0, le=1e6)    # max global grad norm; 0 = off
    schedule: Literal["cosine", "wsd", "constant", "linear"] = "cosine"  # lr shape after warmup
    warmup_steps: int = Field(0, ge=0, le=STEPS)   # linear warmup steps
    min_lr_ratio: float = Field(0.1, ge=0, le=1)   # final lr = lr * min_lr_ratio
    decay_fraction: float = Field(0.2, gt=0, le=1) # wsd: fraction of steps spent decaying


class Facts(Section):
    """A generated world of made-up people mixed into the pretraining corpus (stages/data/facts.py)."""
    people: int = Field(0, ge=0, le=100_000)  # people in the world (3 facts each); 0 = no facts
    repeats: list[Annotated[int, Field(ge=1, le=10_000)]] = Field([1, 2, 5, 10, 20, 50], min_length=1, max_length=64)  # mentions per person, spread evenly over people
    seed: int = Field(0, ge=0, le=2**31)      # the world's seed (names, facts), independent of the run seed


class Knowledge(Section):
    """Questions about the corpus's facts in SFT, labelled by a probe of the start model (docs/knowledge.md)."""
    refusals: Literal["probe", "none"] = "probe"  # probe: answer known questions, "I don't know" for unknown ones; none: answer every question
    questions: int = Field(0, ge=0, le=1_000_000)  # SFT conversations about facts (train people); 0 = no knowledge data
    search_share: float = Field(0.3, ge=0, le=1)  # share of them that look the fact up with the search tool
    test_share: float = Field(0.4, gt=0, lt=1)   # share of the questions held out from the SFT data (the eval's)
    replay: int = Field(0, ge=0, le=10_000_000)   # corpus fact entries trained as plain text among the SFT rows, against forgetting
    probe_samples: int = Field(5, ge=1, le=100)   # sampled cloze completions per question (T=1)
    known_at: float = Field(0.8, gt=0, le=1)      # share of samples right at or above which a fact is known
    unknown_at: float = Field(0.0, ge=0, lt=1)    # share right at or below which it is unknown; between: unsure
