"""The search tool: passages, the BM25 index and its files, and the <|search|> call run inside generation
(HF batched and streamed, the vLLM path's stand-in, chat's shown form, the server's round trip)."""
from __future__ import annotations

import sys
import threading
from types import SimpleNamespace

import pytest

from stages.lm.generation import generate, stream, tool_ids
from stages.tools.search import (
    MAX_QUERY_CHARS,
    SearchIndex,
    copy_search_index,
    load_search_index,
    passages_from_documents,
    terms,
)
from tests.test_generation import BigramModel

DOCS = ["Veltra Osmund drew the first map of the Orr valley. She was born in Kessa in 1871.\n"
        "Her brother keeps bees.",
        "The river Orr floods each spring.\n\nKessa is a town by the river [north bank].",
        "Veltra Osmund drew the first map of the Orr valley. She was born in Kessa in 1871."]
PASSAGE = "Veltra Osmund drew the first map of the Orr valley."
CUT = 60  # passage size for DOCS: each sentence of the first alone
PROMPT_TOKENS = ("<|bos|>", "<|user|>", "<|end|>", "<|assistant|>")


def test_passages_are_cut_at_sentences_merged_and_deduplicated():
    out = passages_from_documents(DOCS, max_chars=CUT)
    assert out == [PASSAGE, "She was born in Kessa in 1871. Her brother keeps bees.",
                   "The river Orr floods each spring.", "Kessa is a town by the river (north bank).",
                   "She was born in Kessa in 1871."]
    wide = passages_from_documents(DOCS)                  # 240 characters: a paragraph is one passage
    assert wide[0] == PASSAGE + " She was born in Kessa in 1871. Her brother keeps bees."
    long = passages_from_documents(["word " * 30 + "x" * 25, "", "  \n\n "], max_chars=20)
    assert all(0 < len(p) <= 20 for p in long) and long[-2:] == ["x" * 20, "x" * 5]
    assert passages_from_documents(["Stop <|end|> here. <|user|>[x]"]) == ["Stop here. (x)"]
    with pytest.raises(ValueError):
        passages_from_documents(DOCS, max_chars=0)


def test_terms_keep_made_up_names_numbers_and_initials():
    assert terms("Who is VELTRA Osmund, born 1871 (J. R.)?") == ["veltra", "osmund", "born", "1871", "j", "r"]


def test_best_passage_for_a_name_save_load_and_errors(tmp_path):
    index = SearchIndex.build(passages_from_documents(DOCS, max_chars=CUT))
    assert index.tool_result("Who is Veltra Osmund?") == PASSAGE
    assert index.tool_result("where was she born? kessa 1871") == "She was born in Kessa in 1871."
    assert set(index.search("Orr", k=5)) == {PASSAGE, "The river Orr floods each spring."}
    assert index.tool_result("   ") == "error: empty query"
    assert index.tool_result("Zyxx Quorble") == "error: no passage matches"
    assert index.tool_result("who is it?") == "error: no passage matches"       # stopwords only
    assert index.tool_result("a" * (MAX_QUERY_CHARS + 1)).startswith("error: query longer than")
    assert load_search_index(tmp_path) is None
    folder = index.save(tmp_path / "model")
    assert folder == tmp_path / "model" / "search"
    again = load_search_index(tmp_path / "model")
    assert again.passages == index.passages
    for query in ("Veltra", "river Orr", "bees", "north bank", "nothing here"):
        assert again.search(query, k=3) == index.search(query, k=3)
    assert copy_search_index(tmp_path / "model", tmp_path / "next") and not copy_search_index(tmp_path, tmp_path / "x")
    assert load_search_index(tmp_path / "next").tool_result("bees") == index.tool_result("bees")


def test_ties_go_to_the_earlier_passage_and_build_cleans():
    index = SearchIndex.build(["the cat sat", "a cat sat", "the cat sat", "", "  "])
    assert index.passages == ["the cat sat", "a cat sat"]
    assert index.search("cat", k=2) == ["the cat sat", "a cat sat"]
    with pytest.raises(ValueError, match="no passages"):
        SearchIndex.build(["", " "])


def _search_table(tok, query: str = "Veltra"):
    """A bigram script: <|assistant|> <|search|> QUERY <|/search|>, and <|end|> after the result."""
    t = tok.convert_tokens_to_ids
    q = tok(query, add_special_tokens=False)["input_ids"]
    assert len(set(q)) == len(q)                     # a bigram chain needs distinct tokens
    chain = [t("<|assistant|>"), t("<|search|>"), *q, t("<|/search|>")]
    table = dict(zip(chain, chain[1:]))
    table.update({t("<|/search|>"): t("<|end|>"), t("<|/result|>"): t("<|end|>")})
    return table, [t(x) for x in PROMPT_TOKENS], len(q)


def test_search_result_is_inserted_not_sampled(tiny_tokenizer):
    tok = tiny_tokenizer
    table, prompt, n_query = _search_table(tok)
    model = BigramModel(table, len(tok))
    index = SearchIndex.build(passages_from_documents(DOCS, max_chars=CUT))
    (hit,), = generate(model, tok, [prompt], max_new_tokens=80, temperature=0.0, search=index)
    assert hit.text == f"<|search|>Veltra<|/search|><|result|>{PASSAGE}<|/result|><|end|>" and hit.finished
    inserted = tok(f"<|result|>{PASSAGE}<|/result|>", add_special_tokens=False)["input_ids"]
    assert hit.tool_mask == [0] * (n_query + 2) + [1] * len(inserted) + [0]
    assert hit.completion_ids[n_query + 2:-1] == inserted
    (none,), = generate(model, tok, [prompt], max_new_tokens=80, temperature=0.0)
    assert none.text == "<|search|>Veltra<|/search|><|result|>error: no search index<|/result|><|end|>"
    (off,), = generate(model, tok, [prompt], max_new_tokens=80, temperature=0.0, use_tools=False, search=index)
    assert off.text == "<|search|>Veltra<|/search|><|end|>" and sum(off.tool_mask) == 0
    streamed = list(stream(model, tok, prompt, max_new_tokens=80, search=index))
    assert [i for i, _ in streamed] == hit.completion_ids and [int(f) for _, f in streamed] == hit.tool_mask


def test_tokenizer_without_search_tags_keeps_the_calculator():
    """A tokenizer made before the search tags: their lookups give its unk id, which must not count as a tag."""
    ids = {"<|end|>": 5, "<|calc|>": 6, "<|/calc|>": 7}
    tok = SimpleNamespace(convert_tokens_to_ids=lambda s: ids.get(s, 0), unk_token_id=0, unk_token="<unk>")
    assert tool_ids(tok) == {"end": 5, "call": 6, "end_call": 7, "search": None, "end_search": None}


def test_chat_shows_a_search_and_serve_maps_it_back(tiny_tokenizer):
    from serve.engine import to_raw
    from stages.lm.chat import chat_loop, shown_text
    tok = tiny_tokenizer
    table, _, _ = _search_table(tok)
    index = SearchIndex.build(passages_from_documents(DOCS, max_chars=CUT))
    lines = iter(["who is Veltra?", "/exit"])
    shown: list[str] = []
    messages = chat_loop(BigramModel(table, len(tok)), tok, None, lambda: next(lines), shown.append, search=index)
    assert f"[search Veltra -> {PASSAGE}]" in "".join(shown)
    raw = messages[-1]["content"]
    assert raw == f"<|search|>Veltra<|/search|><|result|>{PASSAGE}<|/result|>"
    both = f"Let me look. {raw} and {'<|calc|>7*6<|/calc|><|result|>42<|/result|>'} done"
    assert shown_text(both) == f"Let me look. [search Veltra -> {PASSAGE}] and [calc 7*6 = 42] done"
    assert to_raw(shown_text(both)) == both


def test_vllm_path_inserts_the_passage_like_hf(tiny_tokenizer, monkeypatch):
    from stages.policy_gradient.vllm_sampler import VLLMSampler
    from tests.test_vllm_sampler import Params, StandInLLM
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(SamplingParams=Params))
    tok = tiny_tokenizer
    table, prompt, _ = _search_table(tok)
    index = SearchIndex.build(passages_from_documents(DOCS, max_chars=CUT))
    llm = StandInLLM(table, stop_included=False)
    ours = VLLMSampler(llm, tok).generate([prompt], max_new_tokens=80, temperature=0.0, num_samples=2,
                                          seed=0, search=index)
    want = generate(BigramModel(table, len(tok)), tok, [prompt], max_new_tokens=80, temperature=0.0,
                    num_samples=2, search=index)
    for got, exp in zip(ours[0], want[0]):
        assert (got.completion_ids, got.tool_mask, got.text, got.finished) == \
               (exp.completion_ids, exp.tool_mask, exp.text, exp.finished)
    assert tok.convert_tokens_to_ids("<|/search|>") in llm.requests[0][1].stop_token_ids
    assert PASSAGE in ours[0][0].text


def test_server_engine_answers_from_the_checkpoint_index(tiny_tokenizer, tmp_path):
    from serve.engine import Engine, Sampling
    from stages.data.chat import render_prompt
    from tests.serve_helpers import save, scripted_llama
    tok = tiny_tokenizer
    table, _, _ = _search_table(tok)
    path = save(scripted_llama(tok, table), tok, tmp_path / "knows")
    SearchIndex.build(passages_from_documents(DOCS, max_chars=CUT)).save(path)
    engine = Engine.load(path, device="cpu")
    try:
        events: list[tuple] = []
        done = threading.Event()

        def emit(event):
            events.append(event)
            if event[0] in ("done", "error"):
                done.set()

        ask = [{"role": "user", "content": "Who is Veltra?"}]
        engine.submit(engine.render(ask), Sampling(max_tokens=80, temperature=0.0), emit)
        assert done.wait(60)
        text = "".join(e[1] for e in events if e[0] == "text")
        assert text == f"[search Veltra -> {PASSAGE}]" and events[-1][:2] == ("done", "stop")
        follow = ask + [{"role": "assistant", "content": text}, {"role": "user", "content": "Thanks"}]
        raw = f"<|search|>Veltra<|/search|><|result|>{PASSAGE}<|/result|>"
        assert engine.render(follow) == render_prompt(tok, ask + [{"role": "assistant", "content": raw},
                                                                  {"role": "user", "content": "Thanks"}])
    finally:
        engine.close()


def test_eval_and_rollouts_pass_the_index_to_the_sampler(tiny_tokenizer, monkeypatch):
    from stages.eval import families
    from stages.lm.generation import Completion
    from stages.policy_gradient import rollout
    seen = []

    def fake_generate(model, tokenizer, prompts, **kw):
        seen.append(kw.get("search"))
        return [[Completion(p, [], [], "Answer: 1<|end|>", True)] * kw.get("num_samples", 1) for p in prompts]

    monkeypatch.setattr(families, "generate", fake_generate)
    monkeypatch.setattr(rollout, "generate", fake_generate)
    index = SearchIndex.build(["a passage"])
    model = BigramModel({}, len(tiny_tokenizer))
    families.evaluate_families(model, tiny_tokenizer, ["arithmetic"], 2, 0, 8, search=index)
    tasks = families.load_tasks("arithmetic", 2, 0, "train")
    cfg = SimpleNamespace(max_new_tokens=8, temperature=1.0, top_p=1.0)
    rollout.sample_groups(model, tiny_tokenizer, tasks, cfg, 2, seed=0, search=index)
    rollout.sample_groups(model, tiny_tokenizer, tasks, cfg, 2, seed=0)
    assert seen == [index, index, None]


def test_rl_stage_samples_with_the_policy_dirs_index_and_carries_it(tiny_model, tiny_tokenizer, tmp_path,
                                                                    monkeypatch):
    from stages import rl
    from stages.eval import families
    from stages.lm.model import save_model
    from stages.policy_gradient import rollout
    from tests.test_grpo import _recipe, _stage_ctx
    save_model(tiny_model, tiny_tokenizer, tmp_path / "sft")
    SearchIndex.build(passages_from_documents(DOCS)).save(tmp_path / "sft")
    seen = []

    def spy(real):
        def wrapped(*args, **kw):
            seen.append(kw.get("search"))
            return real(*args, **kw)
        return wrapped

    monkeypatch.setattr(families, "generate", spy(families.generate))
    monkeypatch.setattr(rollout, "generate", spy(rollout.generate))
    ctx = _stage_ctx(tmp_path)
    rl.run(_recipe(), {"policy": str(tmp_path / "sft")}, ctx)
    assert len(seen) >= 4 and all(s is not None and s.passages == passages_from_documents(DOCS) for s in seen)
    assert load_search_index(ctx.out_dir).passages == passages_from_documents(DOCS)


def test_well_formed_needs_balanced_search_tags():
    from stages.data.tasks import is_well_formed
    span = f"<|search|>Veltra<|/search|><|result|>{PASSAGE}<|/result|>"
    assert is_well_formed(f"{span}\nAnswer: 1871<|end|>")
    assert not is_well_formed("<|search|>Veltra<|result|>x<|/result|>\nAnswer: 1871<|end|>")
