"""A run report folder: metrics table, curves, ranked lists, tied together by index.html."""
from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..evaluation import RankResult
from ..files import write_text_atomic
from .plots import plot_curves, plot_verification
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
                 seed: int = 0, recipe: dict | None = None, data_summary: str | None = None,
                 camera_table: tuple[list[int], np.ndarray] | None = None) -> Path:
    """Write ``metrics.md``, ``metrics.json``, ``curves.png`` (when ``history`` has epochs),
    ``ranked_lists.png`` (``num_queries`` rows) and ``index.html``; with ``recipe``, ``data_summary`` and
    ``camera_table`` (:func:`reidkit.evaluation.cameras.camera_pair_map`), their sections too."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = metrics_table(results)
    write_text_atomic(out / "metrics.md", f"# {title}\n\n{table}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    write_text_atomic(out / "metrics.json", json.dumps({k: v.as_dict() for k, v in results.items()}, indent=2))
    sections = [f"<h2>Metrics (%)</h2>{_table_html(results)}<ul>"
                + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"]
    verified = {name: r.verification for name, r in results.items() if r.verification is not None}
    if verified:
        name, first = next(iter(verified.items()))
        plot_verification(first, f"{name}: distances of query-gallery pairs", out / "verification.png")
        sections.append("<h2>Verification</h2><p>Is a query-gallery pair the same person?  At each false accept "
                        "rate (FAR: impostor pairs accepted), the distance threshold and the true accept rate "
                        "(TAR: genuine pairs accepted, %); same-identity same-camera pairs left out.</p>"
                        + _verification_html(verified)
                        + '<img src="verification.png" alt="genuine and impostor distance distributions">')
    if camera_table is not None:
        sections.append("<h2>mAP (%) by query camera (rows) and gallery camera (columns)</h2>"
                        + _camera_html(*camera_table))
    if history.get("epoch"):
        plot_curves(history, out / "curves.png")
        sections.append('<h2>Training curves</h2><img src="curves.png" alt="loss and mAP curves">')
    if num_queries > 0 and len(query):
        rng = np.random.default_rng(seed)
        picks = sorted(rng.choice(len(query), size=min(num_queries, len(query)), replace=False).tolist())
        ranked_lists_image(query, gallery, distmat, picks, out / "ranked_lists.png")
        sections.append("<h2>Ranked lists</h2><p>Query on the left; its top-10 gallery matches with rank and "
                        "distance, green frame = same identity, red = different identity.</p>"
                        '<img src="ranked_lists.png" alt="ranked lists">')
    if data_summary:
        sections.append(f"<h2>Data</h2><pre>{html.escape(data_summary)}</pre>")
    if recipe is not None:
        sections.append(f"<h2>Recipe</h2><pre>{html.escape(json.dumps(recipe, indent=1))}</pre>")
    write_text_atomic(out / "index.html", f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1>
{"".join(sections)}
</body></html>
""")
    return out / "index.html"


def _camera_html(cameras: list[int], table: np.ndarray) -> str:
    head = "<tr><th></th>" + "".join(f"<th>cam {c}</th>" for c in cameras) + "</tr>"
    body = "".join(f"<tr><th>cam {c}</th>" + "".join("<td>-</td>" if np.isnan(v) else f"<td>{100 * v:.1f}</td>"
                                                     for v in row) + "</tr>" for c, row in zip(cameras, table))
    return f"<table>{head}{body}</table>"


def _verification_html(verified: dict) -> str:
    fars = next(iter(verified.values())).fars
    head = "<tr><th>model</th>" + "".join(f"<th>TAR @ FAR {f:.0e}</th><th>threshold</th>" for f in fars) + "</tr>"
    body = "".join(f"<tr><td style='text-align:left'>{html.escape(name)}</td>" + "".join(
        f"<td>{100 * tar:.2f}</td><td>{threshold:.4g}</td>" for tar, threshold in zip(v.tars, v.thresholds))
        + "</tr>" for name, v in verified.items())
    return f"<table>{head}{body}</table>"


def _table_html(results: dict[str, RankResult]) -> str:
    head = "<tr><th>model</th><th>mAP</th><th>rank-1</th><th>rank-5</th><th>rank-10</th><th>mINP</th></tr>"
    body = ""
    for name, r in results.items():
        vals = [100 * r.mAP] + [100 * r.rank(min(k, len(r.cmc))) for k in (1, 5, 10)] + [100 * r.mINP]
        body += f"<tr><td style='text-align:left'>{html.escape(name)}</td>" + "".join(
            f"<td>{v:.2f}</td>" for v in vals) + "</tr>"
    return f"<table>{head}{body}</table>"
