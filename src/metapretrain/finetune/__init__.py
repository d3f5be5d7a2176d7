"""UNER fine-tuning: data encoding, token classifier (linear/CRF), training, evaluation, stage CLI, tables."""
