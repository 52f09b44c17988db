"""RL rollouts through vLLM on GPU, with our tools (calculator, search) run between requests.

    sampler = make_sampler(cfg, policy_dir, tokenizer, accelerator)   # None: HF generate (stages.lm.generation)
    groups = sampler.generate(prompts, max_new_tokens=96, temperature=1.0, num_samples=8, seed=0)
    sampler.load_weights(accelerator.unwrap_model(policy))           # after every optimizer step

`rl.generation: auto` uses vLLM when it is installed and CUDA is there, `vllm` insists, `hf` never.
Each process runs its own colocated engine on its own GPU (TRL's "colocate" mode with
distributed_executor_backend="external_launcher"), sampling the prompts that rank drew, and takes
the policy's new weights in place after each optimizer step (no disk round trip).

The output is stages.lm.generation's: out[prompt][sample] -> Completion, with the same rules. vLLM
samples until <|end|>, <|/calc|> or <|/search|>; a row that stopped at a tool's closing tag gets the
tool's <|result|>...<|/result|> appended (tool_mask 1: not sampled, no loss) and goes back as a new request
whose prompt is everything so far (vLLM's prefix cache makes the resend cheap), until <|end|> or the
token budget, which counts inserted tokens as the HF path does. Padded embedding rows
(model.vocab_size) are excluded with allowed_token_ids.
"""
from __future__ import annotations

import os

import torch

from pipeline.distributed import holds_shards
from pipeline.errors import UserError
from stages.lm.generation import Completion, _Row, _tool_tokens, closes_call, tool_ids


def vllm_available() -> bool:
    import importlib.util
    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def make_sampler(cfg, policy_dir: str, tokenizer, accelerator):
    """The vLLM sampler that rl.generation asks for, or None for HF generate."""
    if cfg.generation == "hf" or (cfg.generation == "auto" and (not vllm_available() or cfg.lora)):
        return None
    if cfg.lora:  # load_weights copies plain HF parameter names; a peft model's are its adapters'
        raise UserError("rl.generation: vllm takes the policy's whole weights after every step, which rl.lora "
                        "keeps as adapters; use rl.generation: hf (or auto) with rl.lora")
    if not vllm_available():
        raise UserError("rl.generation: 'vllm' needs the vllm package and a CUDA GPU "
                        "(pip install vllm); use 'auto' to fall back to HF generate")
    if holds_shards(accelerator):
        raise UserError("rl.generation: vllm takes whole weights from each rank after every step, which "
                        "FSDP and ZeRO-3 do not hold; use engine ddp or zero2, or rl.generation: hf")
    from vllm import LLM
    # the external launcher reads these: each accelerate process is one single-GPU vLLM "world" member
    os.environ.setdefault("RANK", str(accelerator.process_index))
    os.environ.setdefault("LOCAL_RANK", str(accelerator.local_process_index))
    os.environ.setdefault("WORLD_SIZE", str(accelerator.num_processes))
    llm = LLM(model=str(policy_dir), tokenizer=str(policy_dir), gpu_memory_utilization=cfg.vllm_gpu_memory,
              max_model_len=cfg.vllm_max_model_len, distributed_executor_backend="external_launcher",
              seed=accelerator.process_index, enable_prefix_caching=True, dtype="auto")
    accelerator.wait_for_everyone()
    return VLLMSampler(llm, tokenizer)


class VLLMSampler:
    def __init__(self, llm, tokenizer):
        self.llm, self.tokenizer = llm, tokenizer
        self.ids = tool_ids(tokenizer)

    def load_weights(self, model) -> None:
        """Copy the policy's current weights into the engine (names as HF saves them)."""
        try:
            target = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError as exc:  # the engine's layout moves between vLLM versions
            raise UserError(f"rl.generation: this vLLM version hides its model ({exc}); TRL's supported "
                            "vLLM range works, or use rl.generation: hf") from None
        target.load_weights((name, p.detach()) for name, p in model.named_parameters())
        self.llm.reset_prefix_cache()  # cached prefixes hold the old weights' keys and values

    def _params(self, n: int, max_tokens: int, temperature: float, top_p: float, top_k: int, seed, use_tools: bool):
        from vllm import SamplingParams
        closing = [self.ids["end_call"]] + ([self.ids["end_search"]] if self.ids["end_search"] is not None else [])
        stops = [self.ids["end"]] + (closing if use_tools else [])
        return SamplingParams(n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                              top_k=top_k if top_k > 0 else -1, seed=seed, stop_token_ids=stops,
                              allowed_token_ids=list(range(len(self.tokenizer))), skip_special_tokens=False,
                              detokenize=False)

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, num_samples: int = 1, use_tools: bool = True,
                 seed: int | None = None, search=None) -> list[list[Completion]]:
        """As stages.lm.generation.generate; `search` (a stages.tools.search.SearchIndex) answers <|search|> calls."""
        rows = [[_Row(list(p)) for _ in range(num_samples)] for p in prompts]
        # round 1: every prompt once with n samples; later rounds: rows that called the tool, one each
        requests = [(rows[i], p, max_new_tokens) for i, p in enumerate(prompts)]
        round_ = 0
        while requests:
            params = [self._params(len(group), budget, temperature, top_p, top_k,
                                   None if seed is None else seed + 7919 * round_ + j, use_tools)
                      for j, (group, _, budget) in enumerate(requests)]
            outputs = self.llm.generate([{"prompt_token_ids": ids} for _, ids, _ in requests], params, use_tqdm=False)
            follow_up = []
            for (group, _, _), out in zip(requests, outputs):
                for row, sample in zip(group, out.outputs):
                    if self._extend(row, list(sample.token_ids), sample.finish_reason,
                                    getattr(sample, "stop_reason", None), max_new_tokens, use_tools, search):
                        follow_up.append(([row], row.prompt_ids + row.ids, max_new_tokens - len(row.ids)))
            requests, round_ = follow_up, round_ + 1
        return [[Completion(r.prompt_ids, r.ids, r.tool, self.tokenizer.decode(r.ids, skip_special_tokens=False),
                            r.finished) for r in group] for group in rows]

    def _extend(self, row: _Row, sampled: list[int], finish_reason, stop_reason, max_new_tokens: int,
                use_tools: bool, search=None) -> bool:
        """Append one request's tokens to the row; True when it stopped at a tool call with budget left."""
        if finish_reason == "stop" and stop_reason is None:
            stop_reason = self.ids["end"]  # stopped at the EOS token (<|end|> is the chat models' EOS)
        if isinstance(stop_reason, int) and (not sampled or sampled[-1] != stop_reason):
            sampled = sampled + [stop_reason]  # some vLLM versions leave the stop token out of token_ids
        row.ids += sampled
        row.tool += [0] * len(sampled)
        last = sampled[-1] if sampled else None
        if last == self.ids["end"]:
            row.finished = True
            return False
        if not (use_tools and last is not None and closes_call(last, self.ids)) or len(row.ids) >= max_new_tokens:
            return False
        forced = _tool_tokens(self.tokenizer, row, self.ids, search)[:max_new_tokens - len(row.ids)]
        row.ids += forced
        row.tool += [1] * len(forced)
        return len(row.ids) < max_new_tokens
