"""Pure tensor maths for every stage: no models, no data, no state. Each function is tested against
hand-computed values (tests/test_losses_rl.py; the RM losses in tests/test_reward_model.py; DPO in
tests/test_dpo.py).

Shapes: B = batch, T = tokens, V = vocab, K = completions per prompt, G = group size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy. logits (B, T, V) predict labels (B, T) shifted by one."""
    shift_logits = logits[:, :-1, :].reshape(-1, logits.size(-1))  # (B*(T-1), V)
    shift_labels = labels[:, 1:].reshape(-1)                         # (B*(T-1),)
    return F.cross_entropy(shift_logits.float(), shift_labels, ignore_index=ignore_index)


# ---------------------------------------------------------------- RL (GRPO, PPO)
# Shapes: N = completions in the batch (= prompts * G for GRPO), T = completion tokens.
# Every (N, T) tensor comes with a float `mask` (N, T): 1 on tokens the policy sampled, 0 on padding
# and on calculator output inserted by the tool.

def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over positions where mask is 1 (all of them, or along `dim`)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def aggregate_tokens(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str = "token",
                     num_tokens: float | None = None, num_seqs: float | None = None) -> torch.Tensor:
    """Reduce a per-token loss (N, T) to a scalar.

    "token": sum over every sampled token / number of tokens (DAPO), so long answers weigh more;
    "sequence": mean over sequences of each sequence's token mean (GRPO paper), so each answer weighs
    the same. `num_tokens` / `num_seqs` give the normaliser of the whole batch when this is one
    micro-batch of it (gradient accumulation then sums to the full-batch loss).
    """
    if loss_type == "token":
        denom = num_tokens if num_tokens is not None else mask.sum().clamp(min=1.0)
        return (per_token * mask).sum() / denom
    if loss_type == "sequence":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # (N,)
        denom = num_seqs if num_seqs is not None else per_token.size(0)
        return per_seq.sum() / denom
    raise ValueError(f"loss_type must be 'token' or 'sequence', got {loss_type!r}")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages: each reward minus its group's mean, divided by the group's std when `scale`.

    rewards (N,) are ordered group by group (G = group_size consecutive completions of one prompt).
    std is the unbiased sample std (as TRL); scale=False is Dr. GRPO (mean-centred only), which does
    not up-weight groups whose rewards barely differ. A group whose rewards are all equal gets 0.
    """
    grouped = rewards.float().view(-1, group_size)              # (N/G, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(centred[:, :1])
        centred = torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))
    return centred.reshape(-1)                                   # (N,)


def zero_variance_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Share of groups whose G rewards are all equal (they carry no GRPO gradient)."""
    grouped = rewards.float().view(-1, group_size)              # (N/G, G)
    return float(((grouped.max(dim=1).values - grouped.min(dim=1).values) == 0).float().mean())


def kl_k3(per_token_logps: torch.Tensor, ref_per_token_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || ref) on tokens sampled from the policy (Schulman 2020):
    exp(ref - logp) - (ref - logp) - 1. Non-negative, unbiased, low variance."""
    log_ratio = ref_per_token_logps - per_token_logps
    return torch.exp(log_ratio) - log_ratio - 1.0


def clipped_policy_loss(per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor,
                        advantages: torch.Tensor, clip_eps: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, per token: -min(r * A, clip(r, 1-eps, 1+eps) * A), r = pi/pi_old.

    advantages are (N,) (one per sequence, GRPO) or (N, T) (per token, PPO). Returns the per-token
    loss (N, T) and a (N, T) 0/1 tensor marking tokens where the clipped branch was taken.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)                     # (N, 1) broadcasts over T
    ratio = torch.exp(per_token_logps - old_per_token_logps)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    return -torch.min(unclipped, clipped), (clipped < unclipped).float()


def ppo_policy_loss(per_token_logps, old_per_token_logps, advantages, mask, clip_eps: float = 0.2,
                    loss_type: str = "token", **norm) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO policy loss (scalar) and stats {clipfrac, approx_kl}. `norm`: num_tokens/num_seqs."""
    per_token, clipped = clipped_policy_loss(per_token_logps, old_per_token_logps, advantages, clip_eps)
    loss = aggregate_tokens(per_token, mask, loss_type, **norm)
    with torch.no_grad():
        approx_kl = masked_mean(0.5 * (per_token_logps - old_per_token_logps) ** 2, mask)
        stats = {"clipfrac": float(masked_mean(clipped, mask)), "approx_kl": float(approx_kl)}
    return loss, stats


def grpo_loss(per_token_logps, old_per_token_logps, advantages, mask, ref_per_token_logps=None,
              beta: float = 0.0, clip_eps: float = 0.2, loss_type: str = "token",
              **norm) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO (DeepSeekMath eq. 3): clipped surrogate with sequence advantages plus beta * k3 KL to the
    reference, per token, reduced by `loss_type`. Returns (scalar loss, {clipfrac, kl})."""
    per_token, clipped = clipped_policy_loss(per_token_logps, old_per_token_logps, advantages, clip_eps)
    stats = {"clipfrac": float(masked_mean(clipped, mask))}
    if ref_per_token_logps is not None:
        kl = kl_k3(per_token_logps, ref_per_token_logps)
        if beta > 0:
            per_token = per_token + beta * kl
        stats["kl"] = float(masked_mean(kl.detach(), mask))
    return aggregate_tokens(per_token, mask, loss_type, **norm), stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float = 0.2) -> tuple[torch.Tensor, float]:
    """PPO's clipped value loss: 0.5 * max((V - R)^2, (V_old + clip(V - V_old, +-c) - R)^2), token mean.
    Returns (loss, share of tokens where the clipped term was larger)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(loss_unclipped, loss_clipped), mask)
    return loss, float(masked_mean((loss_clipped > loss_unclipped).float(), mask))


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman 2016) over the masked tokens of each sequence.

    rewards, values, mask (N, T). Masked positions (padding, tool output) are skipped: the next value
    and the running advantage carry across them, so a tool result does not break the chain. The value
    after the last sampled token is 0 (the episode ends). Returns (advantages, returns), both (N, T),
    zero where mask is 0.
    """
    n, t_len = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(n, dtype=rewards.dtype, device=rewards.device)
    running = torch.zeros_like(next_value)
    for t in reversed(range(t_len)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        new_running = delta + gamma * lam * running
        running = torch.where(m > 0, new_running, running)
        next_value = torch.where(m > 0, values[:, t], next_value)
        advantages[:, t] = running * m
    returns = (advantages + values) * mask
    return advantages, returns


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise x to unit variance (and zero mean if shift_mean) over masked positions; 0 elsewhere."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def ppo_token_rewards(scores: torch.Tensor, per_token_logps: torch.Tensor, ref_per_token_logps: torch.Tensor,
                      mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """InstructGPT's per-token reward: -beta * (logp - ref_logp) on every sampled token, plus the
    sequence score (N,) on its last sampled token. Returns (rewards (N, T), per-token KL (N, T))."""
    kl = (per_token_logps - ref_per_token_logps) * mask
    rewards = -beta * kl
    positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
    last = (positions * (mask > 0)).max(dim=1).values            # (N,) index of the last sampled token
    rewards[torch.arange(mask.size(0), device=mask.device), last] += scores.to(rewards.dtype)
    return rewards, kl


def adaptive_kl_beta(beta: float, observed_kl: float, target: float, n_steps: int,
                     horizon: int = 10_000) -> float:
    """Ziegler et al. (2019) proportional controller: move beta so the observed KL tracks `target`."""
    error = max(-0.2, min(0.2, observed_kl / target - 1.0))
    return beta * (1.0 + error * n_steps / horizon)


def kway_ranking_loss(rewards: torch.Tensor, ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """InstructGPT's reward-model loss over all ranked pairs of each prompt.

    rewards (B, K): one scalar per completion (one forward pass each). ranks (B, K): 0 = best; equal
    ranks are ties (no pair); -1 marks a padded slot (prompts may have fewer completions, e.g. K=2 pairs).
    loss = mean over prompts of [ -mean over pairs (w beats l) of log sigmoid(r_w - r_l) ]: each prompt is
    one batch element whatever its number of pairs, as in InstructGPT (which divides by C(K,2)).
    Returns (loss, pair_accuracy) where pair_accuracy is the share of pairs with r_w > r_l (detached).
    """
    valid = ranks >= 0                                                    # (B, K)
    beats = (ranks.unsqueeze(2) < ranks.unsqueeze(1)) & valid.unsqueeze(2) & valid.unsqueeze(1)  # (B, K, K): i beats j
    margin = rewards.float().unsqueeze(2) - rewards.float().unsqueeze(1)  # (B, K, K): r_i - r_j
    n_pairs = beats.sum(dim=(1, 2))                                       # (B,)
    has_pairs = n_pairs > 0
    if not has_pairs.any():
        return rewards.sum() * 0.0, rewards.new_tensor(float("nan"))
    pair_losses = -F.logsigmoid(margin) * beats                          # (B, K, K), zero off-pair
    per_prompt = pair_losses.sum(dim=(1, 2))[has_pairs] / n_pairs[has_pairs]
    correct = ((margin > 0) & beats).sum().float() / n_pairs.sum().float()
    return per_prompt.mean(), correct.detach()


def dpo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, ranks: torch.Tensor, beta: float,
             form: str = "pairs") -> tuple[torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023) over K ranked completions per prompt.

    policy_logps, ref_logps (B, K): summed log-probs of each completion under the policy and the frozen
    reference. ranks (B, K) as kway_ranking_loss (0 = best, equal = tie, -1 = padded slot). The implicit
    reward is r = beta * (policy_logps - ref_logps).
    form "pairs": eq. 7 on every ranked pair, -log sigmoid(r_w - r_l), averaged per prompt then over
      prompts (a K=2 pair is exactly the paper's loss).
    form "plackett_luce": eq. 18 (appendix A.3), the negative log-likelihood of the whole ranking,
      -sum_k log( exp r_(k) / sum_{j >= k} exp r_(j) ), summed over positions (the paper's form), meaned
      over prompts. Ties follow Breslow: every member of a tied group is "chosen" against the group and
      everything ranked below it; the bottom group, having nothing below it, adds no term (a strict K=2
      ranking gives -log sigmoid(r_w - r_l), the pairwise loss).
    Returns (loss, share of ranked pairs whose implicit rewards are in order; detached).
    """
    rewards = beta * (policy_logps.float() - ref_logps.float())                          # (B, K)
    pair_loss, acc = kway_ranking_loss(rewards, ranks)
    if form == "pairs":
        return pair_loss, acc
    if form != "plackett_luce":
        raise ValueError(f"form must be 'pairs' or 'plackett_luce', got {form!r}")
    valid = ranks >= 0                                                                   # (B, K)
    # risk[b, i, j]: j is still "in the urn" when i is drawn (ranked at or below i)
    risk = (ranks.unsqueeze(1) >= ranks.unsqueeze(2)) & valid.unsqueeze(1) & valid.unsqueeze(2)  # (B, K, K)
    below = ((ranks.unsqueeze(1) > ranks.unsqueeze(2)) & valid.unsqueeze(1)).any(dim=2) & valid  # (B, K): i beats someone
    scores = rewards.unsqueeze(1).expand_as(risk).masked_fill(~risk, float("-inf"))     # (B, K, K)
    log_denominator = torch.logsumexp(scores, dim=2)                                     # (B, K)
    terms = torch.where(below, rewards - log_denominator, torch.zeros_like(rewards))     # (B, K)
    has_terms = below.any(dim=1)
    if not has_terms.any():
        return rewards.sum() * 0.0, acc
    return -terms.sum(dim=1)[has_terms].mean(), acc


def sequence_logps(per_token_logps: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probs of each completion: per_token_logps, completion_mask (N, T) -> (N,)."""
    return (per_token_logps * completion_mask.to(per_token_logps.dtype)).sum(dim=-1)


def process_loss(token_scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token auxiliary loss of the reward model (process supervision, Lightman et al. 2023).

    token_scores (N, T): the score head read at every position; labels (N, T): 1 = the completion is still
    on a path to a right answer after this token, 0 = it has gone wrong, -1 = not scored (prompt, padding).
    Binary cross-entropy of sigmoid(score) against the label, mean over scored tokens (0 when there are none)."""
    scored = labels >= 0
    if not scored.any():
        return token_scores.sum() * 0.0
    return F.binary_cross_entropy_with_logits(token_scores.float()[scored], labels[scored].float())


def bits_per_byte(nll_nats_sum: float, n_bytes: int) -> float:
    """Tokenizer-independent LM quality: total next-token loss (nats) over the text, in bits per UTF-8 byte."""
    return nll_nats_sum / math.log(2) / max(n_bytes, 1)


def bigram_bits_per_byte(train_pairs: torch.Tensor, val_pairs: torch.Tensor, alpha: float = 0.5) -> float:
    """Byte-level bigram baseline. Pair counts are (contexts, 256): row c counts next bytes after context c
    (our shards use 257 rows, row 256 = document start). P(b | c) = (n(c, b) + alpha) / (n(c) + 256 alpha)
    is fit on train_pairs; the result is the bits per byte it spends on the pairs counted in val_pairs."""
    train = train_pairs.double() + alpha
    log2p = torch.log2(train / train.sum(dim=1, keepdim=True))  # (contexts, 256)
    val = val_pairs.double()
    spent = torch.where(val > 0, val * log2p, torch.zeros_like(val))  # 0 * log 0 counts as 0
    return float(-spent.sum() / val.sum().clamp(min=1))
