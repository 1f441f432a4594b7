"""One self-contained, offline HTML page that explains a finished search, assembled from one module per section.

The page is read where the search ran: often a cluster with no internet, so plotly.js is inlined once
(``plotly.offline.get_plotlyjs()``) and every figure is emitted with ``include_plotlyjs=False``; a CDN link would
draw nothing. Everything comes from the run directory's files (``clp_tune.report.run``): the spec, the trajectories
and trials tables and, for the trajectory scheduler, the decisions table. A section whose data is absent says so in
one sentence instead of disappearing, so two reports always have the same outline.

Every figure sits in a ``<div class="clp-figure">`` and ``<body data-figure-count=N>`` says how many there are,
so a test can check in a browser that each one drew.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import plotly.offline

from clp_tune.report import (
    curves,
    effects,
    parameters,
    savings,
    scheduler,
    spec_file,
    summary,
    trajectories,
    trials,
)
from clp_tune.report.markup import Page, esc
from clp_tune.report.run import Run, load_run
from clp_tune.vocabulary import REPORT_PAGE

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1300px;
       padding: 0 24px 48px; color: #222; line-height: 1.45; }
header { border-bottom: 2px solid #ddd; margin-bottom: 8px; }
nav a { margin-right: 14px; font-size: 0.92em; }
section { margin-top: 28px; }
h2 { border-bottom: 1px solid #e5e5e5; padding-bottom: 4px; }
.note { color: #555; font-style: italic; }
table { border-collapse: collapse; margin: 10px 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f4f6f8; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th:hover { background: #e6ebf0; }
tbody tr:nth-child(even) { background: #fafafa; }
pre { background: #f6f8fa; padding: 12px; overflow-x: auto; border: 1px solid #e1e4e8; }
.clp-figure { margin: 8px 0 16px; }
.clp-scroll { max-height: 520px; overflow-y: auto; display: inline-block; border: 1px solid #ddd; }
.clp-scroll table { margin: 0; }
.clp-scroll th { position: sticky; top: 0; }
"""

_SORT_JS = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], col = th.cellIndex, asc = th.dataset.order !== "asc";
    th.dataset.order = asc ? "asc" : "desc";
    var key = function (tr) { return tr.cells[col].dataset.value; };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === "" || y === "") { return (x === "") - (y === ""); }
      var nx = Number(x), ny = Number(y);
      var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return asc ? c : -c;
    }).forEach(function (tr) { body.appendChild(tr); });
  });
});
"""

#: The report's sections in page order; each renders itself into the page and returns its ``<section>``.
_SECTIONS: tuple[Callable[[Run, Page], str], ...] = (
    summary.render,
    curves.render,
    scheduler.render,
    savings.render,
    parameters.render,
    effects.render_mixup,
    effects.render_pretrain,
    trajectories.render,
    trials.render,
    spec_file.render,
)


def render_report(run: Run) -> str:
    """The whole page as a string: plotly.js once in <head>, then one <section> per part of the report."""
    page = Page()
    sections = "\n".join(section(run, page) for section in _SECTIONS)
    nav = " ".join(f'<a href="#{anchor}">{esc(title)}</a>' for anchor, title in page.nav)
    title = f"clp_tune report — {run.name}"
    about = f"<p>{esc(run.description)}</p>" if run.description else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n"
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>\n</head>\n'
        f'<body data-figure-count="{page.figure_count}">\n'
        f"<header><h1>{esc(title)}</h1>{about}<p>Run directory: <code>{esc(run.directory)}</code></p>"
        f"<nav>{nav}</nav></header>\n{sections}\n<script>{_SORT_JS}</script>\n</body>\n</html>\n"
    )


def write_report(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the report page (``REPORT_PAGE``) into ``out_dir`` for the run in ``run_dir`` and return its path."""
    page = render_report(load_run(run_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_PAGE
    path.write_text(page, encoding="utf-8")
    return path
