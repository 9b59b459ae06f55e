"""A run report folder: metrics table, curves, ranked lists, tied together by index.html."""
from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..evaluation import RankResult
from ..files import write_text_atomic
from .plots import plot_curves
from .ranked_lists import ranked_lists_image


def metrics_table(rows: dict[str, RankResult]) -> str:
    """Markdown table of mAP / rank-1/5/10 / mINP (percent) for each named result."""
    lines = ["| model | mAP | rank-1 | rank-5 | rank-10 | mINP |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        ranks = [100 * r.rank(min(k, len(r.cmc))) for k in (1, 5, 10)]
        lines.append(f"| {name} | {100 * r.mAP:.2f} | {ranks[0]:.2f} | {ranks[1]:.2f} | {ranks[2]:.2f} "
                     f"| {100 * r.mINP:.2f} |")
    return "\n".join(lines)


def write_report(out: str | Path, title: str, results: dict[str, RankResult], history: dict,
                 query, gallery, distmat: np.ndarray, notes: Sequence[str] = (), num_queries: int = 8,
                 seed: int = 0) -> Path:
    """Write ``metrics.md``, ``metrics.json``, ``curves.png``, ``ranked_lists.png`` and ``index.html``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = metrics_table(results)
    write_text_atomic(out / "metrics.md", f"# {title}\n\n{table}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    write_text_atomic(out / "metrics.json", json.dumps({k: v.as_dict() for k, v in results.items()}, indent=2))
    plot_curves(history, out / "curves.png")
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(query), size=min(num_queries, len(query)), replace=False).tolist())
    ranked_lists_image(query, gallery, distmat, picks, out / "ranked_lists.png")
    rows = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    table_html = _table_html(results)
    write_text_atomic(out / "index.html", f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Metrics (%)</h2>{table_html}<ul>{rows}</ul>
<h2>Training curves</h2><img src="curves.png" alt="loss and mAP curves">
<h2>Ranked lists</h2><p>Query on the left; its top-10 gallery matches, green border = same identity,
red = different identity.</p><img src="ranked_lists.png" alt="ranked lists">
</body></html>
""")
    return out / "index.html"


def _table_html(results: dict[str, RankResult]) -> str:
    head = "<tr><th>model</th><th>mAP</th><th>rank-1</th><th>rank-5</th><th>rank-10</th><th>mINP</th></tr>"
    body = ""
    for name, r in results.items():
        vals = [100 * r.mAP] + [100 * r.rank(min(k, len(r.cmc))) for k in (1, 5, 10)] + [100 * r.mINP]
        body += f"<tr><td style='text-align:left'>{html.escape(name)}</td>" + "".join(
            f"<td>{v:.2f}</td>" for v in vals) + "</tr>"
    return f"<table>{head}{body}</table>"
