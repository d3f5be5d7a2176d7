"""Weight norms: the Frobenius norm of every projection per layer, and of `embed` and `lm_head`.

Rows: metric `frobenius_norm`, component `<module>.weight` (`attn.q_proj.weight`
... per layer; `embed.weight`, `lm_head.weight` with no layer).
"""

from __future__ import annotations

from metapretrain.dynamics.registry import Row, register_metric


@register_metric("weight_norm", needs={"weights"})
def weight_norm_metric(ctx) -> list[Row]:
    """Frobenius norm of each weight matrix."""
    import torch

    from metapretrain.dynamics.probe_pass import COMPONENTS

    rows: list[Row] = []
    with torch.no_grad():
        for layer in range(ctx.n_layers):
            for comp in COMPONENTS:
                w = ctx.module(layer, comp).weight
                rows.append(Row(layer, f"{comp}.weight", None, "frobenius_norm", float(w.double().norm())))
        for name in ("embed", "lm_head"):
            w = ctx.model.get_submodule(name).weight
            rows.append(Row(None, f"{name}.weight", None, "frobenius_norm", float(w.double().norm())))
    return rows
