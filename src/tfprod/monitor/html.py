"""The drift report as one self-contained HTML page: summary first, then the ranked table, then
reference-vs-current histograms as small embedded PNGs.

It stays small whatever the data size: the plots are drawn from the report's binned frequencies
(no raw rows are embedded), and only the ``MAX_PLOTS`` most severe columns are plotted.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

from tfprod.monitor.report import DriftReport, FeatureDrift, _fmt

MAX_PLOTS = 12

_STYLE = """body{font:14px system-ui,sans-serif;margin:2em;max-width:60em;color:#222}
table{border-collapse:collapse}td,th{padding:.2em .6em;border-bottom:1px solid #ddd;
text-align:left}.drift{color:#b00;font-weight:bold}.ok{color:#080}
.plots{display:flex;flex-wrap:wrap;gap:.5em}.plots figure{margin:0}
figcaption{font-size:12px;color:#555}"""


def _png(feature: FeatureDrift) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys, ref, cur = feature.histogram
    fig, ax = plt.subplots(figsize=(3.2, 1.6), dpi=72)
    if feature.kind == "numeric":
        edges = np.asarray(keys)
        centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        ax.bar(centers, ref, width=width, alpha=0.5, label="reference", color="#1f77b4")
        ax.bar(centers, cur, width=width, alpha=0.5, label="current", color="#d62728")
    else:
        x = np.arange(len(keys))
        ax.bar(x - 0.2, ref, 0.4, label="reference", color="#1f77b4")
        ax.bar(x + 0.2, cur, 0.4, label="current", color="#d62728")
        ax.set_xticks(x, [str(k)[:6] for k in keys], fontsize=6)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, frameon=False)
    fig.tight_layout(pad=0.2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _rows(items: list[list[Any]]) -> str:
    return "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in items)


def render_html(report: DriftReport, *, title: str = "tfprod monitor") -> str:
    """The report as a self-contained HTML page (a string)."""
    e = html.escape
    verdict = report.exit_status
    parts = [f"<!doctype html><meta charset=utf-8><title>{e(title)}</title><style>{_STYLE}"
             f"</style><h1>{e(title)}</h1>",
             f"<p class={'drift' if verdict else 'ok'}>{e(report.summary())}</p>",
             f"<p>reference {report.reference_rows:,} rows, current {report.current_rows:,} "
             f"rows; computed in {report.seconds:.2f} s</p>"]
    if report.multivariate:
        m = report.multivariate
        parts.append(f"<h2>Joint distribution</h2><p>{e(m['test'])}: score {_fmt(m['score'])}, "
                     f"p {_fmt(m['p_adjusted'])} (BH), interval {e(str(m.get('interval')))} "
                     f"&rarr; {'<b class=drift>drift</b>' if m['drift'] else 'no drift'}</p>")
    parts.append("<h2>Features</h2><table><tr><th>feature</th><th>kind</th><th>test</th>"
                 "<th>score</th><th>threshold</th><th>p (BH)</th><th>drift</th></tr>")
    parts.append(_rows([[e(f.name), f.kind, f.test, _fmt(f.score),
                         "-" if f.threshold is None else f"{f.threshold:g}", _fmt(f.p_adjusted),
                         "<b class=drift>DRIFT</b>" if f.drift else "-"]
                        for f in report.ranked()]) + "</table>")
    if report.prediction_drift:
        parts.append("<h2>Predictions</h2><table><tr><th>output</th><th>test</th><th>score</th>"
                     "<th>p (BH)</th><th>drift</th></tr>")
        parts.append(_rows([[e(k), v["test"], _fmt(v["score"]), _fmt(v["p_adjusted"]),
                             "<b class=drift>DRIFT</b>" if v["drift"] else "-"]
                            for k, v in report.prediction_drift.items()]) + "</table>")
    if report.performance:
        parts.append("<h2>Performance</h2><table>" + _rows(
            [[e(k), e(_fmt(v) if isinstance(v, float) else str(v))]
             for k, v in report.performance.items() if k != "accuracy_by_window"]) + "</table>")
    if report.validation:
        parts.append("<h2>Validation</h2><table><tr><th>feature</th><th>check</th>"
                     "<th>severity</th><th>rows</th><th>message</th><th>examples</th></tr>")
        parts.append(_rows([[e(v["feature"]), v["check"], v["severity"], v["count"],
                             e(v["message"]), e(", ".join(map(str, v["examples"])))]
                            for v in report.validation]) + "</table>")
    plotted = [f for f in report.ranked() if f.histogram is not None][:MAX_PLOTS]
    if plotted:
        parts.append("<h2>Reference vs current</h2><div class=plots>")
        for f in plotted:
            parts.append(f"<figure><img alt='{e(f.name)}' src='data:image/png;base64,{_png(f)}'>"
                         f"<figcaption>{e(f.name)} ({f.test} {_fmt(f.score)})</figcaption>"
                         "</figure>")
        parts.append("</div>")
    return "\n".join(parts)
