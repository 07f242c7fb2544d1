"""The distillation loop, evaluation protocol and end-to-end pipeline."""
