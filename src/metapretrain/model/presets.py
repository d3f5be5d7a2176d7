"""Model size presets: the paper's four sizes plus CPU presets for the demo grid.

Paper sizes (Africa et al. 2025, arXiv 2508.02189): 12 layers, 12 query heads, 4 KV heads,
SwiGLU hidden 4·d, vocabulary 50,304, context 2,048. Only the width differs.
"""

from __future__ import annotations

PAPER = dict(n_layers=12, n_heads=12, n_kv_heads=4, vocab_size=50_304, max_seq_len=2048)

PRESETS: dict[str, dict] = {
    # CPU presets: small enough that the default grid trains in minutes on 2 cores.
    # vocab_size None = the tokenizer's vocabulary size, known at train time.
    "micro": dict(d_model=64, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden=256, vocab_size=None, max_seq_len=256),
    "mini": dict(d_model=128, n_layers=6, n_heads=8, n_kv_heads=4, ffn_hidden=512, vocab_size=None, max_seq_len=512),
    "tiny": dict(d_model=96, ffn_hidden=384, **PAPER),
    "small": dict(d_model=384, ffn_hidden=1536, **PAPER),
    "medium": dict(d_model=768, ffn_hidden=3072, **PAPER),
    "large": dict(d_model=1536, ffn_hidden=6144, **PAPER),
}
