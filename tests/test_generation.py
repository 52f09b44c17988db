"""Generation: the KV-cached batched loop equals plain recomputation; the calculator result is inserted."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from stages.eval.families import evaluate_families
from stages.lm.generation import filter_logits, generate


def _greedy_reference(model, prompt, n, end_id):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == end_id:
                break
    return ids[len(prompt):]


def test_batched_cached_greedy_equals_recompute(tiny_model, tiny_tokenizer):
    prompts = [tiny_tokenizer("In the beginning", add_special_tokens=False)["input_ids"],
               tiny_tokenizer("The quick brown fox jumps over", add_special_tokens=False)["input_ids"], [5]]
    end_id = tiny_tokenizer.convert_tokens_to_ids("<|end|>")
    out = generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=12, temperature=0.0, batch_size=3)
    for prompt, (completion,) in zip(prompts, out):
        assert tiny_tokenizer.convert_tokens_to_ids("<|/calc|>") not in completion.completion_ids  # no tool here
        assert completion.completion_ids == _greedy_reference(tiny_model, prompt, 12, end_id)
        assert completion.prompt_ids == prompt and sum(completion.tool_mask) == 0


class EndAfter(torch.nn.Module):
    """A real model whose rows end their turn right after token `trigger`: rows finish at different steps."""

    def __init__(self, model, trigger: int, end_id: int):
        super().__init__()
        self.model, self.trigger, self.end_id = model, trigger, end_id

    def forward(self, input_ids, **kwargs):
        out = self.model(input_ids, **kwargs)
        out.logits[input_ids[:, -1] == self.trigger, -1, self.end_id] = 1e4
        return out


def test_rows_that_finish_early_leave_the_others_unchanged(tiny_model, tiny_tokenizer):
    end_id = tiny_tokenizer.convert_tokens_to_ids("<|end|>")
    model = EndAfter(tiny_model, trigger=9, end_id=end_id)
    prompts = [[5, 9], [7, 8, 6, 5], [11, 12], [9]]
    out = generate(model, tiny_tokenizer, prompts, max_new_tokens=10, temperature=0.0, batch_size=4)
    assert out[0][0].completion_ids == [end_id] and out[0][0].finished
    for prompt, (completion,) in zip(prompts, out):
        assert completion.completion_ids == _greedy_reference(model, prompt, 10, end_id)


def test_sampling_is_seeded_and_shaped(tiny_model, tiny_tokenizer):
    prompts = [[5, 6], [7]]
    a = generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=8, num_samples=3, seed=1)
    b = generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=8, num_samples=3, seed=1)
    assert [len(x) for x in a] == [3, 3]
    assert [[c.completion_ids for c in x] for x in a] == [[c.completion_ids for c in x] for x in b]
    assert len({tuple(c.completion_ids) for c in a[0]}) > 1
    assert all(len(c.completion_ids) <= 8 for x in a for c in x)
    assert tiny_model.training  # the training flag is restored


class BigramModel(torch.nn.Module):
    """Next token = table[last token]: scripts the model's side of a tool call."""

    def __init__(self, table: dict[int, int], vocab: int):
        super().__init__()
        self.table, self.vocab = table, vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b in range(input_ids.size(0)):
            for t in range(input_ids.size(1)):
                logits[b, t, self.table.get(int(input_ids[b, t]), 0)] = 10.0
        return SimpleNamespace(logits=logits, cache=cache or SimpleNamespace(reorder_cache=lambda index: None))


def test_calculator_result_is_inserted_not_sampled(tiny_tokenizer):
    tok = tiny_tokenizer
    t = tok.convert_tokens_to_ids
    seven, star, six = (tok(c, add_special_tokens=False)["input_ids"][0] for c in "7*6")
    table = {t("<|assistant|>"): t("<|calc|>"), t("<|calc|>"): seven, seven: star, star: six,
             six: t("<|/calc|>"), t("<|/calc|>"): t("<|end|>"), t("<|/result|>"): t("<|end|>")}
    model = BigramModel(table, len(tok))
    prompt = [t("<|bos|>"), t("<|user|>"), t("<|end|>"), t("<|assistant|>")]
    (with_tool,), = generate(model, tok, [prompt], max_new_tokens=20, temperature=0.0)
    assert with_tool.text == "<|calc|>7*6<|/calc|><|result|>42<|/result|><|end|>"
    inserted = tok("<|result|>42<|/result|>", add_special_tokens=False)["input_ids"]
    assert with_tool.tool_mask == [0] * 5 + [1] * len(inserted) + [0]
    assert with_tool.finished
    (without,), = generate(model, tok, [prompt], max_new_tokens=20, temperature=0.0, use_tools=False)
    assert without.text == "<|calc|>7*6<|/calc|><|end|>" and sum(without.tool_mask) == 0
    (cut,), = generate(model, tok, [prompt], max_new_tokens=7, temperature=0.0)
    assert len(cut.completion_ids) == 7 and not cut.finished


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, 1.0, 2, 1.0)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, 1.0, 0, 0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, 1.0, 0, 0.5)).tolist() == [[False, True, True, True]]


def test_evaluate_families_keys(tiny_model, tiny_tokenizer):
    metrics = evaluate_families(tiny_model, tiny_tokenizer, ["arithmetic", "identity"], 3, 0, 6, samples=2,
                                temperature=1.0)
    for family in ("arithmetic", "identity"):
        assert {f"eval/acc/{family}", f"eval/format/{family}", f"eval/pass@2/{family}"} <= metrics.keys()
    assert 0.0 <= metrics["eval/acc"] <= 1.0 and "eval/format" in metrics


def test_stream_matches_generate_and_chat_loop_shows_tool_calls(tiny_tokenizer):
    from stages.lm.chat import chat_loop
    from stages.lm.generation import stream
    tok = tiny_tokenizer
    t = tok.convert_tokens_to_ids
    seven, star, six = (tok(c, add_special_tokens=False)["input_ids"][0] for c in "7*6")
    table = {t("<|assistant|>"): t("<|calc|>"), t("<|calc|>"): seven, seven: star, star: six,
             six: t("<|/calc|>"), t("<|/calc|>"): t("<|end|>"), t("<|/result|>"): t("<|end|>")}
    model = BigramModel(table, len(tok))
    prompt = [t("<|bos|>"), t("<|user|>"), t("<|end|>"), t("<|assistant|>")]
    streamed = list(stream(model, tok, prompt, max_new_tokens=20))
    (batched,), = generate(model, tok, [prompt], max_new_tokens=20, temperature=0.0)
    assert [i for i, _ in streamed] == batched.completion_ids
    assert [int(f) for _, f in streamed] == batched.tool_mask
    lines = iter(["what is 7*6?", "/reset", "again", "/exit"])
    shown: list[str] = []
    messages = chat_loop(model, tok, "Be brief.", lambda: next(lines), shown.append)
    assert "".join(shown).count("[calc 7*6 = 42]") == 2
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "again"},
                        {"role": "assistant", "content": "<|calc|>7*6<|/calc|><|result|>42<|/result|>"}]


def test_padded_embedding_rows_are_never_sampled(tiny_model_cfg, tiny_tokenizer):
    """model.vocab_size pads the embedding (nanoGPT's 50,304); the sampler only draws real token ids."""
    import pytest

    from pipeline.errors import UserError
    from stages.lm.model import build_model
    vocab = len(tiny_tokenizer)
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg.model_copy(update={"vocab_size": vocab + 200}), tiny_tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == vocab + 200

    def favour_padding(module, inputs, logits):  # make the padded rows the most likely by far
        return torch.cat([logits[..., :vocab], logits[..., vocab:] + 100.0], dim=-1)

    model.get_output_embeddings().register_forward_hook(favour_padding)
    prompt = tiny_tokenizer("The quick brown", add_special_tokens=False)["input_ids"]
    for temperature in (0.0, 1.0):
        out = generate(model, tiny_tokenizer, [prompt], max_new_tokens=8, temperature=temperature,
                       num_samples=4, seed=0, use_tools=False)
        assert all(t < vocab for c in out[0] for t in c.completion_ids) and len(out[0][0].completion_ids) == 8
    with pytest.raises(UserError, match="model.vocab_size: 10 is smaller than the tokenizer's"):
        build_model(tiny_model_cfg.model_copy(update={"vocab_size": 10}), tiny_tokenizer)
