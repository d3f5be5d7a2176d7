"""Attention-head entropy, recomputed from q and k with RoPE and the causal mask.

For query position i (0-based) with attention distribution a_i over its keys,
H_i = -Σ_j a_ij log a_ij (nats). Per layer and head:

* `head_entropy`: H_i averaged over all query positions of the probe batch
  (uniform causal attention gives mean_i log(i + 1));
* `head_entropy_norm`: H_i / log(i + 1), the entropy as a fraction of its
  maximum given the i + 1 keys the causal mask leaves visible, averaged over
  positions i >= 1 (position 0 sees one key: its entropy is always 0 and its
  maximum too). Uniform attention gives 1, one-hot attention 0.

Probabilities come from `layers[i].attn.scores(x)` on the attention's real
input (the output of `attn_norm`), the same q/k/RoPE path the model's SDPA
forward uses. Rows have component `attn`, a layer and a head.
"""

from __future__ import annotations

from metapretrain.dynamics.registry import Row, register_metric


def query_entropy(probs):
    """Shannon entropy (nats) of each attention row: [..., T_q, T_k] -> [..., T_q], in float64."""
    import torch

    p = probs.to(torch.float64)
    return -torch.special.xlogy(p, p).sum(-1)


def causal_entropy_sums(probs):
    """Per-head sums over batch and positions: (Σ H_i, Σ_{i>=1} H_i / log(i+1)) for causal probs [B, H, T, T]."""
    import torch

    ent = query_entropy(probs)  # [B, H, T]
    T = ent.shape[-1]
    max_ent = torch.arange(1, T + 1, dtype=torch.float64, device=ent.device).log()  # log(keys visible to query i)
    raw = ent.sum(dim=(0, 2))
    norm = (ent[..., 1:] / max_ent[1:]).sum(dim=(0, 2))
    return raw, norm


def head_entropies(prob_chunks):
    """(mean entropy [H], mean normalised entropy [H]) over an iterable of causal probability slices [b, H, T, T]."""
    raw = norm = None
    n_rows = 0
    T = None
    for probs in prob_chunks:
        r, n = causal_entropy_sums(probs)
        raw, norm = (r, n) if raw is None else (raw + r, norm + n)
        n_rows += probs.shape[0]
        T = probs.shape[-1]
    if raw is None:
        raise ValueError("no attention probabilities to average")
    return raw / (n_rows * T), (norm / (n_rows * (T - 1)) if T > 1 else norm * float("nan"))


@register_metric("head_entropy", needs={"attention"})
def head_entropy_metric(ctx) -> list[Row]:
    """Mean and normalised Shannon entropy of every head's causal attention, per layer and head."""
    rows: list[Row] = []
    for layer in range(ctx.n_layers):
        raw, norm = head_entropies(ctx.attention(layer))
        for head, (r, n) in enumerate(zip(raw.tolist(), norm.tolist(), strict=True)):
            rows += [Row(layer, "attn", head, "head_entropy", r), Row(layer, "attn", head, "head_entropy_norm", n)]
    return rows
