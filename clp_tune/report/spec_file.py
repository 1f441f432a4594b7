"""The last section: the run's spec file as written, so the report says exactly what was searched and how."""

from __future__ import annotations

from clp_tune.report.markup import Page, esc, note
from clp_tune.report.run import Run
from clp_tune.vocabulary import SPEC_FILE


def render(run: Run, page: Page) -> str:
    """The spec's text (escaped: it is user input), with why it does not validate where it does not."""
    if run.spec_text is None:
        return page.section("spec", "Spec", note(f"The run directory has no {SPEC_FILE}."))
    invalid = "" if run.spec_error is None else note(f"This spec does not validate: {run.spec_error}")
    return page.section("spec", "Spec", f"{invalid}<pre>{esc(run.spec_text)}</pre>")
