"""The vLLM rollout path's own logic (stages/policy_gradient/vllm_sampler.py), against a stand-in engine.

vLLM needs a CUDA GPU and is not installed in CI, so the engine here is a stand-in with vLLM's
interface (LLM.generate over {"prompt_token_ids"} requests with one SamplingParams each, outputs with
token_ids / finish_reason / stop_reason) driven by the scripted bigram model of test_generation.py.
What is tested is ours: the tool round trip between requests, the token budget, tool_mask and the
finished flag must match the HF sampler exactly. A real engine run belongs to a GPU session."""
from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from stages.lm.generation import generate
from tests.test_generation import BigramModel


class Params(SimpleNamespace):  # vllm.SamplingParams: keyword fields only
    pass


class StandInLLM:
    """Greedy decoding from a bigram table with vLLM's stop / budget / n rules."""

    def __init__(self, table, stop_included: bool):
        self.table, self.stop_included, self.requests = table, stop_included, []

    def generate(self, prompts, params, use_tqdm=False):
        outs = []
        for prompt, p in zip(prompts, params):
            self.requests.append((list(prompt["prompt_token_ids"]), p))
            samples = []
            for _ in range(p.n):
                ids, last, reason, stop = [], prompt["prompt_token_ids"][-1], "length", None
                while len(ids) < p.max_tokens:
                    last = self.table.get(last, 0)
                    assert last in p.allowed_token_ids
                    if last in p.stop_token_ids:
                        reason, stop = "stop", last
                        ids += [last] if self.stop_included else []
                        break
                    ids.append(last)
                samples.append(SimpleNamespace(token_ids=ids, finish_reason=reason, stop_reason=stop))
            outs.append(SimpleNamespace(outputs=samples))
        return outs


@pytest.fixture()
def scripted(tiny_tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(SamplingParams=Params))
    tok = tiny_tokenizer
    t = tok.convert_tokens_to_ids
    seven, star, six = (tok(c, add_special_tokens=False)["input_ids"][0] for c in "7*6")
    table = {t("<|assistant|>"): t("<|calc|>"), t("<|calc|>"): seven, seven: star, star: six,
             six: t("<|/calc|>"), t("<|/calc|>"): t("<|end|>"), t("<|/result|>"): t("<|end|>")}
    prompt = [t("<|bos|>"), t("<|user|>"), t("<|end|>"), t("<|assistant|>")]
    return tok, table, prompt


@pytest.mark.parametrize("stop_included", [True, False])   # vLLM versions differ on keeping stop tokens
@pytest.mark.parametrize("budget,use_tools", [(20, True), (7, True), (9, True), (20, False)])
def test_vllm_path_equals_hf_sampler(scripted, stop_included, budget, use_tools):
    from stages.policy_gradient.vllm_sampler import VLLMSampler
    tok, table, prompt = scripted
    llm = StandInLLM(table, stop_included)
    ours = VLLMSampler(llm, tok).generate([prompt, prompt], max_new_tokens=budget, temperature=0.0,
                                          num_samples=2, use_tools=use_tools, seed=0)
    want = generate(BigramModel(table, len(tok)), tok, [prompt, prompt], max_new_tokens=budget,
                    temperature=0.0, num_samples=2, use_tools=use_tools)
    for got_group, want_group in zip(ours, want):
        for got, exp in zip(got_group, want_group):
            assert (got.completion_ids, got.tool_mask, got.text, got.finished) == \
                   (exp.completion_ids, exp.tool_mask, exp.text, exp.finished)
    first = llm.requests[0][1]
    assert first.n == 2 and first.max_tokens == budget and first.allowed_token_ids == list(range(len(tok)))
    if use_tools and budget == 20:  # the tool call went back as one follow-up request per sample
        assert ours[0][0].text == "<|calc|>7*6<|/calc|><|result|>42<|/result|><|end|>"
        follow = [r for r in llm.requests[2:]]
        assert len(follow) == 4 and all(p.n == 1 for _, p in follow)
        assert follow[0][0][-1] == tok.convert_tokens_to_ids("<|/result|>")


def test_make_sampler_falls_back_or_explains(monkeypatch):
    from pipeline.errors import UserError
    from stages.policy_gradient import vllm_sampler as vllm_generation
    monkeypatch.setattr(vllm_generation, "vllm_available", lambda: False)
    cfg = SimpleNamespace(generation="auto", lora=False)
    assert vllm_generation.make_sampler(cfg, "dir", None, None) is None
    with pytest.raises(UserError, match="rl.generation: 'vllm' needs the vllm package and a CUDA GPU"):
        vllm_generation.make_sampler(SimpleNamespace(generation="vllm", lora=False), "dir", None, None)
