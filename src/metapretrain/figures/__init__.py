"""Paper figures and tables, rebuilt from the runs' files alone (never wandb).

| module | what |
|---|---|
| `load.py` | grid.yaml, resolved configs, metrics.jsonl, ner/results.csv, dynamics CSVs → `ExperimentData` |
| `pairing.py` | method vs facet axes, method/panel labels, the vanilla baseline of each meta run |
| `loss.py` | loss vs steps / tokens / FLOPs, final-state table |
| `speedup.py` | speedup to equal loss (the interpolation rule is in its docstring) |
| `ner.py` | UNER heatmaps, summary table, ΔF1 by entity type and size |
| `dynamics.py` | per-layer PER / head-entropy curves and heatmaps with peaks, episodic accuracy vs PER |
| `tables.py`, `outputs.py`, `style.py` | table formats, atomic writing + `index.json`, the shared look |
| `stage.py` | `metapretrain figures --experiment-dir results/EXP [--config EXP.yaml]` |

`build_figures(exp_dir)` (in `stage`) is the Python entry point.
"""
