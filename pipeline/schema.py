"""The recipe schema: one pydantic model per section, every field typed and documented once.

extra="forbid" everywhere, so a mistyped key is an error (pipeline/recipe.py turns it into one line
with the key path and a close-match suggestion). Numbers such as `1e-4` (a string to YAML) are
coerced to float by pydantic's lax mode.

Every number has an upper bound and every string and list a length limit (pipeline/recipe_values.py),
so no recipe value can make a stage hang or exhaust memory; names are checked against what exists.
"""
from __future__ import annotations

import difflib
import re
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, Field, ValidationError, model_validator

from pipeline.errors import BadValue
from pipeline.recipe_values import (
    BIG,
    GEN_TOKENS,
    STEPS,
    BenchmarkFiles,
    Benchmarks,
    Families,
    Name,
    PathText,
    Prose,
    Rankers,
    TaskList,
    TaskStage,
    _not_dots,
    check_reward_parts,
    known,
    looks_like_stage,
)
from pipeline.sections import Distributed, Facts, Knowledge, Optim, Section, Tracking
from stages.data.tasks import FAMILIES
from stages.data.tasks.spec import hint, parse_source


# ---------------------------------------------------------------- data + model
class Data(Section):
    """Pretraining text. `source` picks the loader in stages/data/sources.py."""
    source: Literal["embedded", "fineweb", "hub", "local"] = "embedded"
    dataset: Optional[PathText] = None       # hub: dataset id (fineweb: HuggingFaceFW/fineweb-edu)
    config_name: Optional[Name] = None       # hub: dataset config (fineweb: sample-10BT)
    split: Name = "train"                    # hub: split name
    text_field: Name = "text"                # hub/local jsonl/parquet: the column holding text
    paths: list[PathText] = Field([], max_length=10_000)  # local: files or globs (.txt, .jsonl, .parquet)
    max_documents: Optional[int] = Field(None, ge=1, le=10**12)  # cap documents read (None = all)
    max_chars: Optional[int] = Field(None, ge=1, le=10**15)      # cap characters read (None = all)
    val_fraction: float = Field(0.02, ge=0.001, lt=0.5)  # share held out for validation (0.001-0.5): whole documents
    # by a seeded hash, or each document's tail when documents are few (stages/data/sources.py, docs/tokenizer.md)
    shard_tokens: int = Field(10_000_000, ge=1000, le=BIG)  # tokens per memmap shard (held in memory while built)
    num_workers: int = Field(0, ge=0, le=1024)         # tokenizing processes; 0 = all cores
    facts: Facts = Facts()                             # made-up people's facts mixed into the training split (docs/knowledge.md)


class Model(Section):
    """Size dial for a model built from scratch (pretrain)."""
    arch: Literal["llama", "gpt2"] = "llama"  # HF architecture
    n_layer: int = Field(4, ge=1, le=1024)    # transformer blocks
    n_embd: int = Field(128, ge=8, le=65_536)  # hidden width
    n_head: int = Field(4, ge=1, le=1024)     # attention heads
    n_kv_head: Optional[int] = Field(None, ge=1, le=1024)  # llama GQA heads; None = n_head
    mlp_ratio: float = Field(4.0, gt=0, le=64)  # MLP width / hidden width
    seq_len: int = Field(256, ge=8, le=1 << 20)  # context length (tokens), up to 1,048,576
    tie_embeddings: bool = True               # share input/output embeddings
    dropout: float = Field(0.0, ge=0, lt=1)   # gpt2 only
    vocab_size: Optional[int] = Field(None, ge=1, le=1 << 22)  # embedding rows (up to 4,194,304); None = the tokenizer's size. Larger pads
    # them (nanoGPT's 50,304 for GPT-2's 50,257: multiples of 64 suit tensor cores); padded ids are never
    # targets, so training drives their logits down, and our sampler never emits them.


# ---------------------------------------------------------------- stages
class TokenizerStage(Section):
    from_: Optional[PathText] = Field(None, alias="from")  # reuse a tokenizer dir / hub id instead of training
    vocab_size: int = Field(2048, ge=300, le=1 << 20)  # total vocab: 256 bytes + merges + special tokens (300-1,048,576)
    max_train_chars: int = Field(50_000_000, ge=1000, le=10**11)  # text fed to BPE training (held in memory)
    individual_digits: bool = True            # every digit its own token (helps arithmetic)
    eval_chars: int = Field(200_000, ge=1000, le=BIG)  # held-out text for the bytes-per-token report


class PretrainStage(Section):
    distributed: Optional[Distributed] = None  # this stage's processes/engine; None = the run-level `distributed`
    from_: Optional[PathText] = Field(None, alias="from")  # continue pretraining an HF model dir / hub id
    max_steps: int = Field(200, ge=1, le=STEPS)  # optimizer steps
    micro_batch_size: int = Field(8, ge=1, le=65_536)  # sequences per forward/backward per process
    total_batch_tokens: Optional[int] = Field(None, ge=1, le=BIG)  # tokens per optimizer step; None = one micro-batch per process
    optim: Optim = Optim(lr=3e-3, warmup_steps=20)
    eval_every: int = Field(50, ge=1, le=STEPS)  # steps between val-loss / bits-per-byte evals
    eval_tokens: int = Field(65_536, ge=1, le=100_000_000)  # val tokens per eval (held in memory)
    sample_every: int = Field(100, ge=1, le=STEPS)  # steps between logged samples
    checkpoint_every: int = Field(100, ge=1, le=STEPS)  # steps between resumable checkpoints
    keep_checkpoints: bool = False             # keep checkpoints/ in the final dir (else deleted)
    compile: bool = False                      # torch.compile the model (GPU)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto = bf16 autocast on GPU, fp32 on CPU


class SFTStage(Section, TaskStage):
    distributed: Optional[Distributed] = None  # this stage's processes/engine; None = the run-level `distributed`
    from_: Optional[PathText] = Field(None, alias="from")  # start from an HF model dir / hub id, not pretrain
    datasets: list[PathText] = Field(["builtin"], max_length=64)  # "builtin" (= "tasks": demonstrations of sft.tasks), a conversation hub id ("id[:config][@split]") or local .jsonl/.json/.parquet (messages, ShareGPT, Alpaca)
    dataset_max_rows: int = Field(20_000, ge=1, le=100_000_000)  # rows read per hub/local dataset (hub ones stream)
    builtin_train_per_family: int = Field(2000, ge=1, le=1_000_000)  # built-in generator: train conversations per family
    builtin_test_per_family: int = Field(50, ge=1, le=10_000)  # built-in generator: held-out prompts per family
    tasks: Optional[TaskList] = Field(None, max_length=64)  # task sources (docs/tasks.md) for demonstrations and the held-out eval; None = builtin:<f> for f in families
    families: Families = Field([], max_length=64)  # built-in task families (shorthand for tasks); [] = all
    family_weights: dict[Name, Annotated[float, Field(ge=0, le=10)]] = Field({}, max_length=64)  # source label -> multiplier on builtin_train_per_family (0-10); missing = 1; built-in families sft does not read are ignored
    multi_turn_share: float = Field(0.2, ge=0, le=1)  # built-in conversations continued by another task as a 2nd turn
    system_prompt: Optional[Prose] = None      # system prompt `lifecycle chat` uses with this model (system_prompt.txt); None = the built-in identity prompt
    max_length: int = Field(256, ge=16, le=GEN_TOKENS)  # tokens per conversation; longer ones are skipped (counted)
    max_steps: int = Field(400, ge=1, le=STEPS)  # optimizer steps
    micro_batch_size: int = Field(16, ge=1, le=65_536)  # conversations per forward/backward
    grad_accum: int = Field(1, ge=1, le=65_536)  # micro-batches per optimizer step
    packing: bool = False                      # pack conversations into max_length rows
    optim: Optim = Optim(lr=1e-3, warmup_steps=20, weight_decay=0.0)
    lora: bool = False                         # train LoRA adapters (peft), merged at the end
    lora_r: int = Field(16, ge=1, le=4096)     # LoRA rank
    lora_alpha: int = Field(32, ge=1, le=65_536)  # LoRA scale numerator
    eval_max_new_tokens: int = Field(128, ge=1, le=GEN_TOKENS)  # generation budget for the held-out eval
    eval_base: bool = True                     # also evaluate the starting model (base/... metrics)
    checkpoint_every: int = Field(100, ge=1, le=STEPS)  # steps between resumable checkpoints (in <stage>.tmp/checkpoints)
    keep_checkpoints: bool = False             # keep checkpoints/ in the final dir (else deleted)
    knowledge: Knowledge = Knowledge()         # fact questions with probe-based refusals and search (needs data.facts)

    @model_validator(mode="after")
    def _weights_name_sources(self):
        labels = [parse_source(s).label for s in (self.tasks if self.tasks is not None else self.families or FAMILIES)]
        for key, weight in self.family_weights.items():
            if key not in labels and key not in FAMILIES:  # a built-in family's weight may outlive it (extends)
                raise BadValue(f"family_weights: '{key}' is not the label of one of sft's task sources"
                                 f"{hint(key, labels)} (labels: {', '.join(labels)})")
            if weight < 0:
                raise BadValue(f"family_weights: '{key}': expected a weight >= 0, got {weight}")
        return self


class RMStage(Section, TaskStage):
    distributed: Optional[Distributed] = None  # this stage's processes/engine; None = the run-level `distributed`
    from_: Optional[PathText] = Field(None, alias="from")  # init from an HF model dir / hub id, not sft
    num_prompts: int = Field(200, ge=1, le=1_000_000)  # prompts to roll out
    k: int = Field(5, ge=2, le=256)            # completions per prompt (ranked best to worst)
    temperature: float = Field(1.0, gt=0, le=100)  # rollout sampling temperature
    top_p: float = Field(1.0, gt=0, le=1)      # rollout nucleus sampling
    max_new_tokens: int = Field(96, ge=1, le=GEN_TOKENS)  # rollout length
    tasks: Optional[TaskList] = Field(None, max_length=64)  # task sources whose train prompts are rolled out (docs/tasks.md); None = builtin:<f> for f in families
    families: Families = Field([], max_length=64)  # built-in task families to roll out (shorthand for tasks); [] = all
    rankers: Rankers = Field(["verifier"], max_length=8)  # mix of: verifier, judge, human (from rankings.jsonl)
    tie_break: Literal["none", "shorter"] = "none"  # verifier: same-tier completions tie, or the shorter wins
    judge_model: Optional[PathText] = None     # judge ranker: HF chat model dir / hub id
    rankings_file: Optional[PathText] = None   # human ranker: JSONL written by `lifecycle rank`
    pairs_datasets: list[PathText] = Field([], max_length=64)  # extra chosen/rejected datasets (hub id or local), as K=2
    pairs_max_examples: int = Field(10_000, ge=1, le=100_000_000)  # rows read per pairs dataset
    max_length: int = Field(512, ge=16, le=GEN_TOKENS)  # tokens per prompt+completion; longer keep their last tokens
    epochs: int = Field(2, ge=1, le=10_000)    # passes over the ranked prompts
    prompts_per_batch: int = Field(4, ge=1, le=65_536)  # prompts (each with K completions) per optimizer step, per process
    process_coef: float = Field(0.0, ge=0, le=1000)  # weight of the per-token "still on the reference path" loss; 0 = off
    optim: Optim = Optim(lr=1e-4, warmup_steps=10, weight_decay=0.0)
    test_fraction: float = Field(0.2, gt=0, lt=1)  # prompts held out for pairwise/top-1 accuracy
    lora: bool = False                         # train LoRA adapters (peft), + the score head; merged at the end
    lora_r: int = Field(16, ge=1, le=1024)     # LoRA rank
    lora_alpha: int = Field(32, ge=1, le=4096) # LoRA scale numerator
    checkpoint_every: int = Field(100, ge=1, le=STEPS)  # steps between resumable checkpoints (in <stage>.tmp/checkpoints)
    keep_checkpoints: bool = False             # keep checkpoints/ in the final dir (else deleted)


class RLStage(Section, TaskStage):
    distributed: Optional[Distributed] = None  # this stage's processes/engine; None = the run-level `distributed`
    from_: Optional[PathText] = Field(None, alias="from")  # policy: an HF model dir / hub id, not sft
    algorithm: Literal["grpo", "ppo"] = "grpo"  # grpo: verifiable rewards; ppo: against the RM
    rewards: Annotated[dict[Name, Annotated[float, Field(ge=-1000, le=1000)]], AfterValidator(check_reward_parts)] = Field({}, max_length=64)  # reward parts -> weights: verifier, format, rm, module:function; {} = {verifier: 1} (grpo) / {rm: 1} (ppo)
    tasks: Optional[TaskList] = Field(None, max_length=64)  # task sources to train on (docs/tasks.md); None = builtin:<f> for f in families
    families: Families = Field([], max_length=64)  # built-in task families to train on (shorthand for tasks); [] = all
    max_steps: int = Field(100, ge=1, le=STEPS)  # RL steps: one rollout batch each, then ppo_epochs optimizer steps
    prompts_per_step: int = Field(8, ge=1, le=65_536)  # prompts per step, per process (N processes sample N x this)
    micro_batch_size: int = Field(64, ge=1, le=65_536)  # completions per forward/backward (the step's loss spans them all)
    num_generations: int = Field(8, ge=1, le=1024)  # G: samples per prompt (GRPO group size)
    temperature: float = Field(1.0, gt=0, le=100)  # sampling temperature
    top_p: float = Field(1.0, gt=0, le=1)      # nucleus sampling
    max_new_tokens: int = Field(96, ge=1, le=GEN_TOKENS)  # completion budget
    optim: Optim = Optim(lr=1e-4, weight_decay=0.0, grad_clip=1.0, schedule="constant")
    beta: float = Field(0.0, ge=0, le=1000)    # KL coefficient to the reference policy
    clip_eps: float = Field(0.2, gt=0, le=100)  # PPO/GRPO ratio clip
    scale_rewards: bool = True                 # GRPO: divide advantages by group std (False = Dr. GRPO)
    loss_type: Literal["token", "sequence"] = "token"  # normalise loss per token (DAPO) or per sequence
    ppo_epochs: Optional[int] = Field(None, ge=1, le=1000)  # optimizer steps per rollout batch (1-4); None = 1 for grpo (on-policy), 2 for ppo
    gamma: float = Field(1.0, ge=0, le=1)      # PPO discount
    lam: float = Field(0.95, ge=0, le=1)       # PPO GAE lambda
    vf_coef: float = Field(0.1, ge=0, le=1000)  # PPO value-loss weight
    cliprange_value: float = Field(0.2, gt=0, le=1e6)  # PPO value clip
    adaptive_kl_target: Optional[float] = Field(None, gt=0, le=1000)  # PPO adaptive-KL target (None = fixed beta)
    ptx_coef: float = Field(0.0, ge=0, le=1000)  # PPO pretraining-mix loss weight
    monitor_window: int = Field(10, ge=2, le=100_000)  # reward-hacking monitor window (steps)
    stop_on_hacking: bool = False              # stop when proxy reward rises while gold falls
    readiness_min_signal: float = Field(0.1, ge=0, le=1)  # min share of groups with reward variance
    control: bool = True                       # also train the equal-compute SFT control
    eval_samples: int = Field(4, ge=1, le=1024)  # k for pass@k in the held-out eval
    generation: Literal["auto", "hf", "vllm"] = "auto"  # rollout sampler: auto = vLLM when installed with CUDA, else HF
    vllm_gpu_memory: float = Field(0.3, gt=0, lt=1)  # share of each GPU the colocated vLLM engine may take
    vllm_max_model_len: int = Field(2048, ge=16, le=1 << 20)  # vLLM context (prompt + completion tokens)
    lora: bool = False                         # train LoRA adapters (peft), on the policy, merged at the end (HF generate)
    lora_r: int = Field(16, ge=1, le=1024)     # LoRA rank
    lora_alpha: int = Field(32, ge=1, le=4096) # LoRA scale numerator
    checkpoint_every: int = Field(25, ge=1, le=STEPS)  # steps between resumable checkpoints (in <stage>.tmp/checkpoints)
    keep_checkpoints: bool = False             # keep checkpoints/ in the final dir (else deleted)


class DPOStage(Section):
    """Direct preference optimisation (stages/dpo.py): ranked rollouts of the start policy, chosen/rejected data."""
    distributed: Optional[Distributed] = None  # this stage's processes/engine; None = the run-level `distributed`
    from_: Optional[PathText] = Field(None, alias="from")  # start from an HF model dir / hub id, not sft
    loss: Literal["pairs", "plackett_luce"] = "pairs"  # pairs: DPO on every ranked pair; plackett_luce: the K-way ranking likelihood (DPO paper, app. A.3)
    beta: float = Field(0.1, gt=0, le=10)      # implicit reward = beta * log(pi / pi_ref): larger stays closer to the start (0.05-0.5)
    sft_coef: float = Field(0.0, ge=0, le=10)  # weight of an NLL term on each prompt's best completions (RPO, Pang et al. 2024); 0 = plain DPO
    num_prompts: int = Field(400, ge=1, le=BIG)  # prompts to roll out from the start policy (training split)
    k: int = Field(4, ge=2, le=64)             # completions per prompt, ranked best to worst
    temperature: float = Field(1.0, gt=0, le=100)  # rollout sampling temperature
    top_p: float = Field(1.0, gt=0, le=1)      # rollout nucleus sampling
    max_new_tokens: int = Field(96, ge=1, le=GEN_TOKENS)  # rollout length
    families: Families = Field([], max_length=64)  # built-in task families to roll out; [] = all
    rankers: Rankers = Field(["verifier"], max_length=8)  # mix of: verifier, judge, human; [] = pairs_datasets only
    tie_break: Literal["none", "shorter"] = "none"  # verifier: same-tier completions tie, or the shorter wins
    judge_model: Optional[PathText] = None          # judge ranker: HF chat model dir / hub id
    rankings_file: Optional[PathText] = None        # human ranker: JSONL written by `lifecycle rank`
    pairs_datasets: list[PathText] = Field([], max_length=64)  # chosen/rejected datasets (hub id or local .jsonl/.json/.parquet), as K=2
    pairs_max_examples: int = Field(10_000, ge=1, le=BIG)  # rows read per pairs dataset
    max_length: int = Field(512, ge=16, le=GEN_TOKENS)  # tokens per prompt+completion; longer keep their last tokens
    epochs: int = Field(1, ge=1, le=20)        # passes over the ranked prompts (1-3)
    prompts_per_batch: int = Field(4, ge=1, le=65_536)  # prompts (each with K completions) per optimizer step, per process
    optim: Optim = Optim(lr=1e-4, warmup_steps=5, weight_decay=0.0)
    test_fraction: float = Field(0.2, gt=0, lt=1)  # prompts held out for preference accuracy
    eval_base: bool = True                     # also evaluate the start model (base/... metrics, gain/...)
    lora: bool = False                         # train LoRA adapters (peft), merged at the end
    lora_r: int = Field(16, ge=1, le=1024)     # LoRA rank
    lora_alpha: int = Field(32, ge=1, le=4096) # LoRA scale numerator
    checkpoint_every: int = Field(50, ge=1, le=STEPS)  # steps between resumable checkpoints (in <stage>.tmp/checkpoints)
    keep_checkpoints: bool = False             # keep checkpoints/ in the final dir (else deleted)


class EvalSection(Section):
    tasks: Optional[TaskList] = Field(None, max_length=64)  # held-out task sources after sft and rl; None = sft's sources (sft), the built-in families + rl's sources (rl)
    max_prompts_per_family: int = Field(50, ge=1, le=10_000)  # held-out prompts per task source (1-10,000)
    max_new_tokens: int = Field(128, ge=1, le=GEN_TOKENS)  # generation budget
    benchmarks: Benchmarks = Field([], max_length=16)  # gsm8k, arc_easy, arc_challenge, hellaswag, mmlu
    benchmark_limit: int = Field(200, ge=1, le=1_000_000)  # questions per benchmark
    benchmark_files: BenchmarkFiles = Field({}, max_length=16)  # benchmark -> local jsonl/parquet (offline)
    benchmark_max_new_tokens: int = Field(256, ge=1, le=GEN_TOKENS)  # GSM8K generation budget (working + answer)
    samples: int = Field(3, ge=0, le=1000)          # base-model samples logged per eval


# ---------------------------------------------------------------- the stage graph
KIND_SECTION = {"tokenizer": TokenizerStage, "pretrain": PretrainStage, "sft": SFTStage, "dpo": DPOStage,
                "rm": RMStage, "rl": RLStage}                 # a stage kind -> the section class that configures it
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
        raise BadValue(f"entry {index}: expected a stage name or a mapping with name and kind")
    fields = {k: v for k, v in entry.items() if k not in ("name", "kind")}
    name, kind = str(entry["name"]), entry.get("kind")
    if name in DEFAULT_CHAIN:
        raise BadValue(f"stage '{name}': a default stage is configured in its top-level section '{name}:', "
                         f"not here; list it by name alone")
    if not re.match(STAGE_NAME, name):
        raise BadValue(f"stage name '{name}': expected a letter, then letters, digits, _ or -")
    known([kind], tuple(KIND_SECTION), f"kind for stage '{name}'")
    try:
        KIND_SECTION[kind].model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(where.split(".")[-1], list(KIND_SECTION[kind].model_fields), n=1)
            hint = f" — did you mean '{close[0]}'?" if close else ""
            raise BadValue(f"stage '{name}' ({kind}): unknown key '{where}'{hint}") from None
        raise BadValue(f"stage '{name}' ({kind}): {where}: {err['msg']}") from None
    return {"name": name, "kind": kind, "fields": fields}


class Recipe(Section):
    name: Annotated[str, AfterValidator(_not_dots)] = Field(..., pattern=r"^[A-Za-z0-9._-]+$", max_length=100)  # run name: runs/<name>/, W&B group (1-100 characters)
    seed: int = Field(1337, ge=0, le=2**32 - 1)  # global seed (0 to 2^32-1)
    output_dir: PathText = "runs"             # where runs/<name>/ lives (relative to the cwd)
    extends: Optional[PathText] = None        # parent recipe (relative path); this file overrides it
    tracking: Tracking = Tracking()
    distributed: Distributed = Distributed()
    data: Data = Data()
    model: Model = Model()
    tokenizer: TokenizerStage = TokenizerStage()
    pretrain: PretrainStage = PretrainStage()
    sft: SFTStage = SFTStage()
    rm: RMStage = RMStage()
    rl: RLStage = RLStage()
    dpo: DPOStage = DPOStage()
    eval: EvalSection = EvalSection()
    stages: Optional[list] = Field(None, max_length=64)  # the chain `run` runs, in order: default names and {name, kind, from, ...} declarations; None = the default five

    @model_validator(mode="after")
    def _check_graph(self):
        chain = self.chain()
        names = [s["name"] for s in chain]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise BadValue(f"stages: two stages named '{twice[0]}'")
        for i, stage in enumerate(chain):
            section = self.section_of(stage["name"])
            if stage["kind"] == "sft" and section.knowledge.questions and not self.data.facts.people:
                raise BadValue(f"stage '{stage['name']}': knowledge.questions needs facts in the corpus; "
                               "set data.facts.people (e.g. 400) or knowledge.questions: 0")
            ref = self.from_of(stage["name"])
            if ref is None or ref not in names and not looks_like_stage(ref, names):
                continue
            if ref not in names:
                close = difflib.get_close_matches(ref, names, n=1, cutoff=0.6)
                raise BadValue(f"stage '{stage['name']}': from '{ref}' is no stage of this recipe and no model dir"
                                 + (f" — did you mean '{close[0]}'?" if close else ""))
            if names.index(ref) >= i:
                raise BadValue(f"stage '{stage['name']}' takes from '{ref}', which does not come before it "
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
