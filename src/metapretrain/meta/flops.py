"""FLOPs of the pieces meta steps run (same convention as metapretrain.model.flops).

Forward FLOPs per token count a multiply-add as 2; a backward that computes
weight and input gradients costs 2 × the forward of the part it traverses.
Meta steps use the backbone without the LM head (features only), inner
loops may traverse only a suffix of the network, and heads act on one
position per example, so each piece is counted separately.
"""

from __future__ import annotations

from metapretrain.model.flops import forward_flops_per_token


def lm_head_forward(cfg) -> float:
    return 2.0 * cfg.d_model * cfg.vocab_size


def backbone_forward(cfg, seq_len: int) -> float:
    """Forward FLOPs per token of the decoder up to the final norm (no LM head)."""
    return forward_flops_per_token(cfg, seq_len) - lm_head_forward(cfg)


def block_forward(cfg, seq_len: int) -> float:
    """Forward FLOPs per token of one decoder block (projections, FFN, causal attention)."""
    return backbone_forward(cfg, seq_len) / cfg.n_layers


def suffix_forward(cfg, seq_len: int, n_blocks: int, lm_head: bool) -> float:
    """Forward FLOPs per token of the last `n_blocks` blocks (+ the LM head): what a suffix backward traverses."""
    return n_blocks * block_forward(cfg, seq_len) + (lm_head_forward(cfg) if lm_head else 0.0)


def head_forward(matmul_params: int) -> float:
    """Forward FLOPs of the episode head per example, from its matmul parameters (EpisodeHead.shape_params)."""
    return 2.0 * matmul_params
