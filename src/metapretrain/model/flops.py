"""FLOP accounting for training (forward + backward = 3 × forward).

Forward FLOPs per token at sequence length T, counting a multiply-add as 2:
* every weight matrix except the input embedding (a lookup): 2 · N_matmul
* attention scores and the weighted sum of values, causal: each query attends
  on average to (T + 1) / 2 keys, so 2 · 2 · L · d · (T + 1) / 2 = 2 · L · d · (T + 1)
Backward costs twice the forward, so training = 3 × forward.
Norms, activations and softmax are ignored (they are O(d), not O(d²)).
"""

from __future__ import annotations


def matmul_params(cfg) -> int:
    """Parameters used in matrix multiplies per token (excludes embedding lookup and norm gains)."""
    d, hd = cfg.d_model, cfg.d_model // cfg.n_heads
    attn = d * cfg.n_heads * hd + 2 * d * cfg.n_kv_heads * hd + cfg.n_heads * hd * d
    ffn = 3 * d * cfg.ffn_hidden
    return cfg.n_layers * (attn + ffn) + d * cfg.vocab_size  # + lm_head


def forward_flops_per_token(cfg, seq_len: int) -> float:
    attention = 2.0 * cfg.n_layers * cfg.d_model * (seq_len + 1)
    return 2.0 * matmul_params(cfg) + attention


def training_flops_per_token(cfg, seq_len: int) -> float:
    return 3.0 * forward_flops_per_token(cfg, seq_len)
