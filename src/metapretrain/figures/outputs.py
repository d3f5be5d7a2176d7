"""Writing figures and tables atomically, and the index of everything written.

Figures go to `figures/<group>/<name>.{png,pdf}`, tables to
`figures/tables/<name>.{csv,md,tex,html}` (the HTML copy is what
`snakemake --report` shows), the claims report to `figures/claims.{md,json}`. Each file gets an index entry
`{file, kind, caption, inputs}`; `index.json` is written last by the stage.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from metapretrain.figures.tables import formatted, to_latex, to_markdown
from metapretrain.io import atomic_path, atomic_write_text, write_json

log = logging.getLogger("metapretrain.figures")

GROUPS = ("loss", "speedup", "ner", "dynamics", "finetune_speed", "episodic", "domains", "tables")
REPORT_FILES = ("claims.md", "claims.json")  # top-level files in figures/ (metapretrain.figures.claims)
TABLE_FORMATS = ("csv", "md", "tex", "html")
_SAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def safe_name(*parts: str) -> str:
    """A file-name-safe stem from labels: ('ner', 'micro, seed=1') -> 'ner__micro_seed-1'."""
    return "__".join(_SAFE.sub("-", str(p).replace(", ", "_")).strip("-") for p in parts if str(p))


@dataclass
class Outputs:
    root: Path  # results/<exp>/figures
    exp_dir: Path
    formats: tuple[str, ...] = ("png", "pdf")
    entries: list[dict] = field(default_factory=list)

    def prepare(self) -> None:
        """Empty the group folders this stage owns, so a rerun leaves no stale figure behind; the old
        index goes first, so an interrupted rerun never leaves an index listing files that are gone."""
        (self.root / "index.json").unlink(missing_ok=True)
        for group in GROUPS:
            d = self.root / group
            d.mkdir(parents=True, exist_ok=True)
            for p in d.iterdir():
                if p.is_file():
                    p.unlink()
        for name in REPORT_FILES:
            (self.root / name).unlink(missing_ok=True)

    def _entry(self, path: Path, kind: str, caption: str, inputs: list[str]) -> None:
        self.entries.append({"file": str(path.relative_to(self.root)), "kind": kind, "caption": caption,
                             "inputs": sorted(set(inputs))})

    def figure(self, fig, group: str, name: str, caption: str, inputs: list[str]) -> list[Path]:
        import matplotlib.pyplot as plt

        written = []
        try:
            for fmt in self.formats:
                path = self.root / group / f"{name}.{fmt}"
                # No timestamps or versions in the files: the same inputs give the same bytes.
                meta = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Creator": None}}.get(fmt)
                with atomic_path(path, suffix=f".{fmt}") as tmp:
                    fig.savefig(tmp, format=fmt, metadata=meta)
                self._entry(path, "figure", caption, inputs)
                written.append(path)
        finally:
            plt.close(fig)
        log.info("figure %s/%s (%s)", group, name, ", ".join(self.formats))
        return written

    def table(self, df, name: str, caption: str, inputs: list[str], formats: dict[str, str] | None = None,
              display=None, latex_drop: tuple[str, ...] = ("source",)) -> list[Path]:
        """CSV: `df` at full precision. Markdown, LaTeX, HTML: `display` (default `df`) formatted with
        `formats` ({column: format spec}, else 3 significant digits)."""
        shown = formatted(df if display is None else display, formats or {})
        out = {
            "csv": df.to_csv(index=False),
            "md": f"{caption}\n\n{to_markdown(shown)}",
            "tex": to_latex(shown.drop(columns=[c for c in latex_drop if c in shown.columns]), caption,
                            sources=sorted(set(inputs))),
            "html": f"<p>{_html_escape(caption)}</p>\n" + shown.to_html(index=False, border=0, escape=True),
        }
        written = []
        for fmt in TABLE_FORMATS:
            path = self.root / "tables" / f"{name}.{fmt}"
            atomic_write_text(path, out[fmt])
            self._entry(path, "table", caption, inputs)
            written.append(path)
        log.info("table tables/%s (%d rows)", name, len(df))
        return written

    def report_file(self, name: str, text: str, caption: str, inputs: list[str], kind: str = "table") -> Path:
        """A top-level report file `figures/<name>` (one of REPORT_FILES), written atomically and indexed."""
        if name not in REPORT_FILES:
            raise ValueError(f"{name!r} is not a report file this stage owns ({', '.join(REPORT_FILES)})")
        path = self.root / name
        atomic_write_text(path, text)
        self._entry(path, kind, caption, inputs)
        log.info("report %s", name)
        return path

    def write_index(self) -> Path:
        path = self.root / "index.json"
        write_json(path, self.entries)
        return path


def _html_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
