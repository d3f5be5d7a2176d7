"""Pretraining: loop, step kinds, schedule, checkpoints, metrics."""
