"""Learning dynamics from checkpoints: metric registry, probe pass, metrics, phase detection, the stage.

`dynamics/dynamics.csv` rows are `run_id, step, tokens, flops, layer, component, head, metric, value`;
`component` names what was measured and, for matrices, its source:

| metric | component | layer | head | module |
|---|---|---|---|---|
| `effective_rank`, `per` | `attn.q_proj.weight` ... `ffn.down_proj.weight` (also `.grad`, `.act`), `resid.act` | i | - | rank.py |
| `head_entropy`, `head_entropy_norm` | `attn` | i | h | entropy.py |
| `frobenius_norm` | `<proj>.weight`; `embed.weight`, `lm_head.weight` (no layer) | i | - | norms.py |
| `cka_final` | `resid.act` | i | - | cka.py |
| `query_acc`, `support_acc_*` (any `meta/*acc*` key) | `episode` | - | - | episodic.py |

`.weight` = the weight matrix, `.grad` = its gradient of the real next-token
loss on the probe batch, `.act` = the module's output on the probe batch
(centred over tokens), `resid` = the residual stream after block i.
Importing this package is cheap (no torch): `registry.known_metrics()` lists
the metric names for config validation.
"""
