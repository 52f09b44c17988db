"""Scoring completions at RL and eval time: verifiers, the trained RM, weighted mixes, rankers."""
