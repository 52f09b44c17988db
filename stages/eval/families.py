"""Held-out evaluation on task sources: accuracy and chat-format compliance per source.

    from stages.eval.families import evaluate_families
    metrics = evaluate_families(model, tok, ["arithmetic", "calculator"], n_per_family=50, seed=1337,
                                max_new_tokens=128)
    # eval/acc/<family>, eval/format/<family>, eval/acc, eval/format (+ eval/pass@k/<family> with samples > 1)

`families` are task source specs or built-in family names (stages/data/tasks/sources.py); metrics are keyed
by each source's label. Prompts come from the test split, so they never appeared in SFT's demonstrations.
Accuracy is the mean score over all samples; pass@k is the share of prompts with at least one correct
sample among k (k = samples). Format is is_well_formed: the turn ends with <|end|> after an
"Answer: ..." line.
"""
from __future__ import annotations

from stages.data.chat import render_prompt
from stages.data.tasks import is_well_formed, score
from stages.data.tasks.sources import label_of, load_tasks
from stages.lm.generation import generate


def evaluate_families(model, tokenizer, families, n_per_family, seed, max_new_tokens, use_tools=True, samples=1,
                      temperature=0.0, *, prefix: str = "eval", batch_size: int = 64,
                      return_rows: bool = False, search=None):
    """Metrics dict (see module doc). With return_rows=True returns (metrics, rows), rows being
    [family, prompt, completion, answer, score, well_formed] for logging tables. `search` (a
    stages.tools.search.SearchIndex) answers <|search|> calls; without it they get an error line."""
    metrics: dict[str, float] = {}
    rows: list[list] = []
    accs, formats = [], []
    for spec in families:
        family, tasks = label_of(spec), load_tasks(spec, n_per_family, seed, "test")
        prompts = [render_prompt(tokenizer, t.prompt_messages()) for t in tasks]
        outs = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                        num_samples=samples, use_tools=use_tools, seed=seed, batch_size=batch_size, search=search)
        scores = [[score(t, c.text) for c in cs] for t, cs in zip(tasks, outs)]
        forms = [[float(is_well_formed(c.text)) for c in cs] for cs in outs]
        acc = sum(map(sum, scores)) / (len(tasks) * samples)
        fmt = sum(map(sum, forms)) / (len(tasks) * samples)
        metrics[f"{prefix}/acc/{family}"], metrics[f"{prefix}/format/{family}"] = acc, fmt
        if samples > 1:
            metrics[f"{prefix}/pass@{samples}/{family}"] = sum(max(s) for s in scores) / len(tasks)
        accs.append(acc)
        formats.append(fmt)
        for t, cs, ss, fs in zip(tasks, outs, scores, forms):
            rows.append([family, t.prompt_messages()[-1]["content"], cs[0].text, t.answer, ss[0], fs[0]])
    if families:
        metrics[f"{prefix}/acc"] = sum(accs) / len(accs)
        metrics[f"{prefix}/format"] = sum(formats) / len(formats)
    return (metrics, rows) if return_rows else metrics
