"""One look for every figure: seaborn paper theme, Okabe–Ito colours, labelled units."""

from __future__ import annotations

import math

# Okabe & Ito (2008): distinguishable under the common colour-vision deficiencies.
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442"]
VANILLA_COLOR = "#000000"
DEPTH_CMAP = "viridis"  # line colour = layer depth (perceptually uniform, colour-blind safe)
SEQ_CMAP = "viridis"  # F1 heatmaps
DIV_CMAP = "vlag"  # ΔF1: blue = meta worse, red = meta better, white = 0

AXIS_LABELS = {
    "step": "optimizer steps",
    "tokens": "training tokens",
    "flops": "training FLOPs (fwd + bwd)",
    "wall": "wall time (h)",
}
COORD_TITLES = {"step": "steps", "tokens": "tokens", "flops": "FLOPs", "wall": "wall time"}
LOSS_LABEL = "cross-entropy (nats / token)"

_applied = False


def apply() -> None:
    """Select the Agg backend and set the theme once per process."""
    global _applied
    if _applied:
        return
    import matplotlib

    matplotlib.use("Agg", force=True)
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", palette=OKABE_ITO, font_scale=1.0)
    matplotlib.rcParams.update({
        "figure.dpi": 100,
        "savefig.dpi": 150,
        "savefig.bbox": "tight",
        "axes.titlesize": 9,
        "axes.labelsize": 8,
        "xtick.labelsize": 7,
        "ytick.labelsize": 7,
        "legend.fontsize": 7,
        "legend.title_fontsize": 7,
        "figure.titlesize": 10,
        "lines.linewidth": 1.3,
        "axes.formatter.limits": (-3, 4),  # scientific notation beyond 1e4 (tokens, FLOPs)
        "axes.formatter.use_mathtext": False,  # mathtext tick labels cost ~1/3 of the rendering time
        "pdf.fonttype": 42,  # TrueType in PDFs: editable text, accepted by publishers
    })
    _applied = True


# Further vanilla variants (e.g. `vanilla_flops`, an LR sweep): greys, so each baseline stays tellable apart.
VANILLA_SHADES = (VANILLA_COLOR, "#7F7F7F", "#4D4D4D", "#B3B3B3", "#262626", "#999999")


def method_colors(methods: list[str]) -> dict[str, str]:
    """Vanilla methods in black and greys (in order), each other method a fixed Okabe–Ito colour in order."""
    out, i, v = {}, 0, 0
    for m in methods:
        if m.startswith("vanilla"):
            out[m] = VANILLA_SHADES[v % len(VANILLA_SHADES)]
            v += 1
        else:
            out[m] = OKABE_ITO[i % len(OKABE_ITO)]
            i += 1
    return out


VANILLA_LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 1)))


def method_linestyles(methods: list[str]) -> dict[str, object]:
    """Solid for every method, but each further vanilla variant (an LR value, `vanilla_flops`) its own dash
    pattern, so baselines in greys stay tellable apart in print."""
    out, v = {}, 0
    for m in methods:
        if m.startswith("vanilla"):
            out[m] = VANILLA_LINESTYLES[v % len(VANILLA_LINESTYLES)]
            v += 1
        else:
            out[m] = "-"
    return out


def depth_colors(layers: list[int]) -> dict[int, tuple]:
    import matplotlib

    cmap = matplotlib.colormaps[DEPTH_CMAP]
    n = max(len(layers) - 1, 1)
    return {layer: cmap(0.9 * i / n) for i, layer in enumerate(sorted(layers))}  # 0.9: skip the pale yellow end


def depth_colorbar(fig, axes, colors: dict[int, tuple]) -> None:
    """A discrete colour bar with one swatch per layer, matching `depth_colors`."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap

    layers = sorted(colors)
    bounds = [layers[0] - 0.5] + [(a + b) / 2 for a, b in zip(layers, layers[1:], strict=False)] + [layers[-1] + 0.5]
    sm = ScalarMappable(norm=BoundaryNorm(bounds, len(layers)), cmap=ListedColormap([colors[x] for x in layers]))
    step = max(1, len(layers) // 12)
    fig.colorbar(sm, ax=axes, fraction=0.025, pad=0.02, label="layer (0 = first)", ticks=layers[::step])


def grid_shape(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def subplots(n: int, *, max_cols: int = 4, w: float = 3.0, h: float = 2.4, sharey: bool = False):
    """A figure with `n` panels in a grid; returns (fig, flat list of the n used axes)."""
    import matplotlib.pyplot as plt

    rows, cols = grid_shape(n, max_cols)
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False, sharey=sharey)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


NTP_TOKENS = "tokens = next-token tokens"  # caption phrase when `tokens` is read from `tokens_ntp`


def has_ntp_tokens(df) -> bool:
    """Whether a metrics frame counts next-token tokens (`tokens_ntp`, finite on every record)."""
    if df is None or "tokens_ntp" not in df or not len(df):
        return False
    import pandas as pd

    return bool(pd.to_numeric(df["tokens_ntp"], errors="coerce").notna().all())


def with_ntp_tokens(df):
    """The frame with `tokens` = next-token tokens where every record has `tokens_ntp` (`tokens` also counts
    the meta steps' episode windows); unchanged otherwise (older runs, a resume that lost the count)."""
    if not has_ntp_tokens(df):
        return df
    df = df.copy()
    df["tokens"] = df["tokens_ntp"].astype(float)
    return df


def coord_values(df, coord: str):
    """A metrics column in plotting units (wall seconds -> hours; tokens -> next-token tokens when counted)."""
    if coord == "tokens" and has_ntp_tokens(df):
        return df["tokens_ntp"].astype(float)
    return df[coord] / 3600.0 if coord == "wall" else df[coord]


def fmt_number(x, digits: int = 3) -> str:
    """Sensible precision for tables: 3 significant digits, scientific beyond 1e5."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}" if abs(x) < 10**7 else f"{x:.{digits - 1}e}"
    ax = abs(x)
    if ax != 0 and (ax >= 1e5 or ax < 1e-3):
        return f"{x:.{digits - 1}e}"
    if ax >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}" if ax >= 1 else f"{x:.{digits}f}"


def figure_legend(fig, axes, title: str | None = None, ncol: int = 4) -> None:
    """One legend above the panels, with each label once (taken from every axis)."""
    seen: dict[str, object] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=min(len(seen), ncol), frameon=False,
                   bbox_to_anchor=(0.5, 1.0), title=title)
