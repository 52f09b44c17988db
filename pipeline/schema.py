"""The recipe schema: one pydantic model per section, every field typed and documented once.

extra="forbid" everywhere, so a mistyped key is an error (pipeline/recipe.py turns it into one line
with the key path and a close-match suggestion). Numbers such as `1e-4` (a string to YAML) are
coerced to float by pydantic's lax mode.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from stages.data.tasks import FAMILIES

REWARD_PARTS = ("verifier", "format", "rm")    # reward/combine.py's built-in parts; others are 'module:function'
RANKERS = ("verifier", "judge", "human")        # reward/ranking.py's ranking sources
BENCHMARK_NAMES = ("gsm8k", "arc_easy", "arc_challenge", "hellaswag", "mmlu")  # stages/eval/benchmarks.py


def known(names, allowed: tuple[str, ...], what: str):
    """names unchanged if every one is in `allowed`; else a ValueError naming the first stranger and the
    closest allowed name. (An empty `names` is returned as it is.)"""
    for name in names:
        if name not in allowed:
            close = difflib.get_close_matches(str(name), allowed, n=1, cutoff=0.5)
            hint = f" — did you mean '{close[0]}'?" if close else f"; expected one of: {', '.join(allowed)}"
            raise ValueError(f"unknown {what} '{name}'{hint}")
    return names


def check_reward_parts(rewards: dict[str, float]) -> dict[str, float]:
    """Reward names are built-in parts or 'module:function' (imported when the stage builds the mix)."""
    known([n for n in rewards if ":" not in n], REWARD_PARTS, "reward (or 'module:function')")
    for name in rewards:
        module, _, func = name.partition(":")
        if ":" in name and not (module and func):
            raise ValueError(f"reward '{name}': expected 'module:function'")
    return rewards


def check_family_weights(weights: dict[str, float]) -> dict[str, float]:
    known(list(weights), FAMILIES, "family")
    for family, w in weights.items():
        if not 0 <= w <= 10:
            raise ValueError(f"weight of '{family}' is {w}; expected 0 to 10")
    return weights


Families = Annotated[list[str], AfterValidator(lambda v: known(v, FAMILIES, "family"))]
Rankers = Annotated[list[str], AfterValidator(lambda v: known(v, RANKERS, "ranker"))]
Benchmarks = Annotated[list[str], AfterValidator(lambda v: known(v, BENCHMARK_NAMES, "benchmark"))]
BenchmarkFiles = Annotated[dict[str, str], AfterValidator(lambda v: (known(list(v), BENCHMARK_NAMES, "benchmark"), v)[1])]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

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


# ---------------------------------------------------------------- run-level groups
class Tracking(Section):
    wandb: bool = True                      # log to W&B; offline (runs/<name>/wandb) when no API key
    project: str = "llm-lifecycle"          # W&B project
    entity: Optional[str] = None            # W&B team/user; None = your default entity
    group: Optional[str] = Field(None, min_length=1, max_length=128)  # W&B group; None = the run name (`lifecycle sweep` sets the sweep's name)


class Distributed(Section):
    engine: Literal["none", "ddp", "fsdp", "zero2", "zero3", "zero3_offload"] = "none"  # recipes/engines/<engine>.yaml
    num_processes: int = Field(1, ge=1)      # processes in total (GPUs across all machines)
    num_machines: int = Field(1, ge=1)       # nodes; > 1 needs main_process_ip (or `lifecycle slurm`)
    main_process_ip: Optional[str] = None    # rank-0 host for multi-node runs
    main_process_port: int = 29500           # rendezvous port
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # bf16 on GPUs; "no" on CPU


class Optim(Section):
    lr: float = Field(3e-4, gt=0)                 # peak learning rate
    weight_decay: float = Field(0.1, ge=0)        # AdamW decay on matrices (not norms/biases/embeddings)
    betas: tuple[float, float] = (0.9, 0.95)      # AdamW betas
    eps: float = 1e-8                              # AdamW epsilon
    grad_clip: float = Field(1.0, ge=0)            # max global grad norm; 0 = off
    schedule: Literal["cosine", "wsd", "constant", "linear"] = "cosine"  # lr shape after warmup
    warmup_steps: int = Field(0, ge=0)             # linear warmup steps
    min_lr_ratio: float = Field(0.1, ge=0, le=1)   # final lr = lr * min_lr_ratio
    decay_fraction: float = Field(0.2, gt=0, le=1) # wsd: fraction of steps spent decaying


# ---------------------------------------------------------------- data + model
class Data(Section):
    """Pretraining text. `source` picks the loader in stages/data/sources.py."""
    source: Literal["embedded", "fineweb", "hub", "local"] = "embedded"
    dataset: Optional[str] = None            # hub: dataset id (fineweb: HuggingFaceFW/fineweb-edu)
    config_name: Optional[str] = None        # hub: dataset config (fineweb: sample-10BT)
    split: str = "train"                     # hub: split name
    text_field: str = "text"                 # hub/local jsonl/parquet: the column holding text
    paths: list[str] = []                    # local: files or globs (.txt, .jsonl, .parquet)
    max_documents: Optional[int] = Field(None, ge=1)  # cap documents read (None = all)
    max_chars: Optional[int] = Field(None, ge=1)      # cap characters read (None = all)
    val_fraction: float = Field(0.02, gt=0, lt=0.5)   # documents held out for validation
    shard_tokens: int = Field(10_000_000, ge=1000)    # tokens per memmap shard
    num_workers: int = Field(0, ge=0)                  # tokenizing processes; 0 = all cores


class Model(Section):
    """Size dial for a model built from scratch (pretrain)."""
    arch: Literal["llama", "gpt2"] = "llama"  # HF architecture
    n_layer: int = Field(4, ge=1)             # transformer blocks
    n_embd: int = Field(128, ge=8)            # hidden width
    n_head: int = Field(4, ge=1)              # attention heads
    n_kv_head: Optional[int] = None           # llama GQA heads; None = n_head
    mlp_ratio: float = Field(4.0, gt=0)       # MLP width / hidden width
    seq_len: int = Field(256, ge=8)           # context length (tokens)
    tie_embeddings: bool = True               # share input/output embeddings
    dropout: float = Field(0.0, ge=0, lt=1)   # gpt2 only
    vocab_size: Optional[int] = Field(None, ge=1)  # embedding rows; None = the tokenizer's size. Larger pads
    # them (nanoGPT's 50,304 for GPT-2's 50,257: multiples of 64 suit tensor cores); padded ids are never
    # targets, so training drives their logits down, and our sampler never emits them.


# ---------------------------------------------------------------- stages
class TokenizerStage(Section):
    from_: Optional[str] = Field(None, alias="from")  # reuse a tokenizer dir / hub id instead of training
    vocab_size: int = Field(2048, ge=300)     # total vocab: 256 bytes + merges + special tokens
    max_train_chars: int = Field(50_000_000, ge=1000)  # text fed to BPE training
    individual_digits: bool = True            # every digit its own token (helps arithmetic)
    eval_chars: int = Field(200_000, ge=1000)  # held-out text for the bytes-per-token report


class PretrainStage(Section):
    distributed: Optional[Distributed] = None  # this stage's processes/engine; None = the run-level `distributed`
    from_: Optional[str] = Field(None, alias="from")  # continue pretraining an HF model dir / hub id
    max_steps: int = Field(200, ge=1)          # optimizer steps
    micro_batch_size: int = Field(8, ge=1)     # sequences per forward/backward per process
    total_batch_tokens: Optional[int] = None   # tokens per optimizer step; None = one micro-batch per process
    optim: Optim = Optim(lr=3e-3, warmup_steps=20)
    eval_every: int = Field(50, ge=1)          # steps between val-loss / bits-per-byte evals
    eval_tokens: int = Field(65_536, ge=1)     # val tokens per eval
    sample_every: int = Field(100, ge=1)       # steps between logged samples
    checkpoint_every: int = Field(100, ge=1)   # steps between resumable checkpoints
    keep_checkpoints: bool = False             # keep checkpoints/ in the final dir (else deleted)
    compile: bool = False                      # torch.compile the model (GPU)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto = bf16 autocast on GPU, fp32 on CPU


class SFTStage(Section):
    distributed: Optional[Distributed] = None  # this stage's processes/engine; None = the run-level `distributed`
    from_: Optional[str] = Field(None, alias="from")  # start from an HF model dir / hub id, not pretrain
    datasets: list[str] = ["builtin"]          # "builtin", a hub id ("id[:config][@split]"), or a local .jsonl/.json/.parquet path
    dataset_max_rows: int = Field(20_000, ge=1)  # rows read per hub/local dataset (hub ones stream)
    builtin_train_per_family: int = Field(2000, ge=1)  # built-in generator: train conversations per family
    builtin_test_per_family: int = Field(50, ge=1)     # built-in generator: held-out prompts per family
    families: Families = []                    # built-in task families; [] = all
    family_weights: Annotated[dict[str, float], AfterValidator(check_family_weights)] = {}  # family -> multiplier on builtin_train_per_family (0-10); missing = 1
    multi_turn_share: float = Field(0.2, ge=0, le=1)  # built-in conversations continued by another task as a 2nd turn
    system_prompt: Optional[str] = None        # system prompt `lifecycle chat` uses with this model (system_prompt.txt); None = the built-in identity prompt
    max_length: int = Field(256, ge=16)        # tokens per conversation; longer ones are skipped (counted)
    max_steps: int = Field(400, ge=1)          # optimizer steps
    micro_batch_size: int = Field(16, ge=1)    # conversations per forward/backward
    grad_accum: int = Field(1, ge=1)           # micro-batches per optimizer step
    packing: bool = False                      # pack conversations into max_length rows
    optim: Optim = Optim(lr=1e-3, warmup_steps=20, weight_decay=0.0)
    lora: bool = False                         # train LoRA adapters (peft), merged at the end
    lora_r: int = Field(16, ge=1)              # LoRA rank
    lora_alpha: int = Field(32, ge=1)          # LoRA scale numerator
    eval_max_new_tokens: int = Field(128, ge=1)  # generation budget for the held-out eval
    eval_base: bool = True                     # also evaluate the starting model (base/... metrics)


class RMStage(Section):
    distributed: Optional[Distributed] = None  # this stage's processes/engine; None = the run-level `distributed`
    from_: Optional[str] = Field(None, alias="from")  # init from an HF model dir / hub id, not sft
    num_prompts: int = Field(200, ge=1)        # prompts to roll out
    k: int = Field(5, ge=2)                    # completions per prompt (ranked best to worst)
    temperature: float = Field(1.0, gt=0)      # rollout sampling temperature
    top_p: float = Field(1.0, gt=0, le=1)      # rollout nucleus sampling
    max_new_tokens: int = Field(96, ge=1)      # rollout length
    families: Families = []                    # built-in task families to roll out; [] = all
    rankers: Rankers = ["verifier"]            # mix of: verifier, judge, human (from rankings.jsonl)
    tie_break: Literal["none", "shorter"] = "none"  # verifier: same-tier completions tie, or the shorter wins
    judge_model: Optional[str] = None          # judge ranker: HF chat model dir / hub id
    rankings_file: Optional[str] = None        # human ranker: JSONL written by `lifecycle rank`
    pairs_datasets: list[str] = []             # extra chosen/rejected datasets (hub id or local), as K=2
    pairs_max_examples: int = Field(10_000, ge=1)  # rows read per pairs dataset
    max_length: int = Field(512, ge=16)        # tokens per prompt+completion; longer keep their last tokens
    epochs: int = Field(2, ge=1)               # passes over the ranked prompts
    prompts_per_batch: int = Field(4, ge=1)    # prompts (each with K completions) per optimizer step, per process
    process_coef: float = Field(0.0, ge=0)     # weight of the per-token "still on the reference path" loss; 0 = off
    optim: Optim = Optim(lr=1e-4, warmup_steps=10, weight_decay=0.0)
    test_fraction: float = Field(0.2, gt=0, lt=1)  # prompts held out for pairwise/top-1 accuracy


class RLStage(Section):
    distributed: Optional[Distributed] = None  # this stage's processes/engine; None = the run-level `distributed`
    from_: Optional[str] = Field(None, alias="from")  # policy: an HF model dir / hub id, not sft
    algorithm: Literal["grpo", "ppo"] = "grpo"  # grpo: verifiable rewards; ppo: against the RM
    rewards: Annotated[dict[str, float], AfterValidator(check_reward_parts)] = {}  # reward parts -> weights: verifier, format, rm, module:function; {} = {verifier: 1} (grpo) / {rm: 1} (ppo)
    families: Families = []                    # built-in task families to train on; [] = all
    max_steps: int = Field(100, ge=1)          # RL steps: one rollout batch each, then ppo_epochs optimizer steps
    prompts_per_step: int = Field(8, ge=1)     # prompts per step, per process (N processes sample N x this)
    micro_batch_size: int = Field(64, ge=1)    # completions per forward/backward (the step's loss spans them all)
    num_generations: int = Field(8, ge=1)      # G: samples per prompt (GRPO group size)
    temperature: float = Field(1.0, gt=0)      # sampling temperature
    top_p: float = Field(1.0, gt=0, le=1)      # nucleus sampling
    max_new_tokens: int = Field(96, ge=1)      # completion budget
    optim: Optim = Optim(lr=1e-4, weight_decay=0.0, grad_clip=1.0, schedule="constant")
    beta: float = Field(0.0, ge=0)             # KL coefficient to the reference policy
    clip_eps: float = Field(0.2, gt=0)         # PPO/GRPO ratio clip
    scale_rewards: bool = True                 # GRPO: divide advantages by group std (False = Dr. GRPO)
    loss_type: Literal["token", "sequence"] = "token"  # normalise loss per token (DAPO) or per sequence
    ppo_epochs: Optional[int] = Field(None, ge=1)  # optimizer steps per rollout batch (1-4); None = 1 for grpo (on-policy), 2 for ppo
    gamma: float = Field(1.0, ge=0, le=1)      # PPO discount
    lam: float = Field(0.95, ge=0, le=1)       # PPO GAE lambda
    vf_coef: float = Field(0.1, ge=0)          # PPO value-loss weight
    cliprange_value: float = Field(0.2, gt=0)  # PPO value clip
    adaptive_kl_target: Optional[float] = None # PPO adaptive-KL target (None = fixed beta)
    ptx_coef: float = Field(0.0, ge=0)         # PPO pretraining-mix loss weight
    monitor_window: int = Field(10, ge=2)      # reward-hacking monitor window (steps)
    stop_on_hacking: bool = False              # stop when proxy reward rises while gold falls
    readiness_min_signal: float = Field(0.1, ge=0, le=1)  # min share of groups with reward variance
    control: bool = True                       # also train the equal-compute SFT control
    eval_samples: int = Field(4, ge=1)         # k for pass@k in the held-out eval
    generation: Literal["auto", "hf", "vllm"] = "auto"  # rollout sampler: auto = vLLM when installed with CUDA, else HF
    vllm_gpu_memory: float = Field(0.3, gt=0, lt=1)  # share of each GPU the colocated vLLM engine may take
    vllm_max_model_len: int = Field(2048, ge=16)  # vLLM context (prompt + completion tokens)


class EvalSection(Section):
    max_prompts_per_family: int = Field(50, ge=1)  # held-out prompts per built-in family
    max_new_tokens: int = Field(128, ge=1)          # generation budget
    benchmarks: Benchmarks = []                     # gsm8k, arc_easy, arc_challenge, hellaswag, mmlu
    benchmark_limit: int = Field(200, ge=1)         # questions per benchmark
    benchmark_files: BenchmarkFiles = {}            # benchmark -> local jsonl/parquet (offline)
    benchmark_max_new_tokens: int = Field(256, ge=1)  # GSM8K generation budget (working + answer)
    samples: int = Field(3, ge=0)                   # base-model samples logged per eval


# ---------------------------------------------------------------- the stage graph
KIND_SECTION = {"tokenizer": TokenizerStage, "pretrain": PretrainStage, "sft": SFTStage, "rm": RMStage,
                "rl": RLStage}                 # a stage kind -> the section class that configures it
DEFAULT_CHAIN = ("tokenizer", "pretrain", "sft", "rm", "rl")  # the five stages every recipe has
STAGE_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"


def parse_stage(entry, index: int) -> dict:
    """One entry of `stages:` -> {"name", "kind", "fields"}: a default stage's name alone (its section is the
    top-level key of that name), or a mapping {name, kind, from, <the kind's section fields>}."""
    if isinstance(entry, str):
        if entry not in DEFAULT_CHAIN:
            known([entry], DEFAULT_CHAIN, "stage (declare a new one as {name: ..., kind: ...})")
        return {"name": entry, "kind": entry, "fields": None}
    if not isinstance(entry, dict) or "name" not in entry:
        raise ValueError(f"entry {index}: expected a stage name or a mapping with name and kind")
    fields = {k: v for k, v in entry.items() if k not in ("name", "kind")}
    name, kind = str(entry["name"]), entry.get("kind")
    if name in DEFAULT_CHAIN:
        raise ValueError(f"stage '{name}': a default stage is configured in its top-level section '{name}:', "
                         f"not here; list it by name alone")
    if not re.match(STAGE_NAME, name):
        raise ValueError(f"stage name '{name}': expected a letter, then letters, digits, _ or -")
    known([kind], tuple(KIND_SECTION), f"kind for stage '{name}'")
    try:
        KIND_SECTION[kind].model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(where.split(".")[-1], list(KIND_SECTION[kind].model_fields), n=1)
            hint = f" — did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"stage '{name}' ({kind}): unknown key '{where}'{hint}") from None
        raise ValueError(f"stage '{name}' ({kind}): {where}: {err['msg']}") from None
    return {"name": name, "kind": kind, "fields": fields}


class Recipe(Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9._-]{1,100}$")  # run name: runs/<name>/, W&B group
    seed: int = 1337                          # global seed
    output_dir: str = "runs"                  # where runs/<name>/ lives (relative to the cwd)
    extends: Optional[str] = None             # parent recipe (relative path); this file overrides it
    tracking: Tracking = Tracking()
    distributed: Distributed = Distributed()
    data: Data = Data()
    model: Model = Model()
    tokenizer: TokenizerStage = TokenizerStage()
    pretrain: PretrainStage = PretrainStage()
    sft: SFTStage = SFTStage()
    rm: RMStage = RMStage()
    rl: RLStage = RLStage()
    eval: EvalSection = EvalSection()
    stages: Optional[list] = None             # the chain `run` runs, in order: default names and {name, kind, from, ...} declarations; None = the default five

    @model_validator(mode="after")
    def _check_graph(self):
        chain = self.chain()
        names = [s["name"] for s in chain]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"stages: two stages named '{twice[0]}'")
        for i, stage in enumerate(chain):
            ref = self.from_of(stage["name"])
            if ref is None or ref not in names and not _looks_like_stage(ref, names):
                continue
            if ref not in names:
                close = difflib.get_close_matches(ref, names, n=1, cutoff=0.6)
                raise ValueError(f"stage '{stage['name']}': from '{ref}' is no stage of this recipe and no model dir"
                                 + (f" — did you mean '{close[0]}'?" if close else ""))
            if names.index(ref) >= i:
                raise ValueError(f"stage '{stage['name']}' takes from '{ref}', which does not come before it "
                                 f"(stages run in the listed order; a cycle cannot run)")
        return self

    def chain(self) -> list[dict]:
        """The stages in run order: [{"name", "kind", "fields"}] (fields None for the default five)."""
        if self.stages is None:
            return [{"name": n, "kind": n, "fields": None} for n in DEFAULT_CHAIN]
        return [parse_stage(entry, i) for i, entry in enumerate(self.stages)]

    def kind_of(self, stage: str) -> str:
        return next(s["kind"] for s in self.chain() if s["name"] == stage)

    def section_of(self, stage: str):
        """The section that configures `stage`: the top-level one for the default five, else its declaration."""
        if stage in DEFAULT_CHAIN:
            return getattr(self, stage)
        entry = next(s for s in self.chain() if s["name"] == stage)
        return KIND_SECTION[entry["kind"]].model_validate(entry["fields"])

    def from_of(self, stage: str) -> Optional[str]:
        return getattr(self.section_of(stage), "from_", None)

    def distributed_for(self, stage: str) -> Distributed:
        own = getattr(self.section_of(stage), "distributed", None) if stage in [s["name"] for s in self.chain()] \
            else None
        return own or self.distributed


def _looks_like_stage(ref: str, names: list[str]) -> bool:
    """A `from:` that is neither a stage name nor an existing path: a hub id ("org/model", "gpt2") unless it is
    close to a stage name (then it is most likely that stage, mistyped)."""
    if "/" in ref or Path(ref).expanduser().exists():
        return False
    return bool(difflib.get_close_matches(ref, names, n=1, cutoff=0.6))
