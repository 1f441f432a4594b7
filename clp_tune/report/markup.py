"""The HTML building blocks every section uses, so that all sections escape, format, count and colour alike.

:class:`Page` collects the figures and the navigation while the sections render; the page itself (styles, scripts,
the outline) is assembled in ``page``. Everything a user or a run wrote (spec text, error messages, config values)
goes through :func:`esc` before it reaches the page.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go

_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
#: The best trial's colour wherever it is drawn (learning curves, stop thresholds).
BEST_COLOR = "#d62728"
#: Tables longer than this scroll inside a box of their own, so a search of hundreds of trials keeps its outline.
SCROLL_ROWS = 25
#: Colours of traces that stand for different things in one figure (trials, settings, detectors).
TRACE_COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


@dataclass
class Page:
    """Collects figure divs so the page can say how many it holds (``data-figure-count``), and the sections' anchors
    and titles for the navigation."""

    figure_count: int = 0
    nav: list[tuple[str, str]] = field(default_factory=list)

    def figure(self, fig: go.Figure, height: int = 420, margin: dict | None = None) -> str:
        """``fig`` as a div without plotly.js (the page inlines it once), numbered so a browser test can find it."""
        self.figure_count += 1
        fig.update_layout(template="plotly_white", height=height, margin=margin or {"l": 60, "r": 20, "t": 50, "b": 50})
        div = fig.to_html(
            full_html=False, include_plotlyjs=False, div_id=f"clp-figure-{self.figure_count}", config=_PLOT_CONFIG
        )
        return f'<div class="clp-figure">{div}</div>'

    def section(self, anchor: str, title: str, body: str) -> str:
        """One ``<section>`` of the report, listed in the navigation."""
        self.nav.append((anchor, title))
        return f'<section id="{anchor}">\n<h2>{esc(title)}</h2>\n{body}\n</section>'


def esc(value: object) -> str:
    """``value`` as text that cannot inject markup (quotes included: it may stand in an attribute)."""
    return html.escape(str(value), quote=True)


def fmt(value: object, digits: int = 4) -> str:
    """Numbers for tables: 4 significant digits, integers as such, missing values as an em dash."""
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return "—"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer) or (isinstance(value, float | np.floating) and float(value).is_integer()):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}g}"
    return esc(value)


def note(text: str) -> str:
    """A sentence that explains a section, or says why its data is absent."""
    return f'<p class="note">{esc(text)}</p>'


def table(header: Sequence[str], rows: Iterable[Sequence[object]], css_class: str = "") -> str:
    """A plain table; cells are formatted with :func:`fmt` and keep the raw number in ``data-value`` for sorting.
    One of more than SCROLL_ROWS rows scrolls in a box (``div.clp-scroll``)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            raw = "" if fmt(cell) == "—" else cell
            cells.append(f'<td data-value="{esc(raw)}">{fmt(cell)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    markup = f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    return f'<div class="clp-scroll">{markup}</div>' if len(body) > SCROLL_ROWS else markup
