"""What the checks of bad input share: an error as one line, and the file that stands where a directory must be.

A check reports bad input as one line naming the key and what was expected (exit 2). A reader's own message (YAML,
pyarrow, the AWS SDK) may span lines, and a path under a file fails only when something is first written there,
which for a search is after it has run.
"""

from __future__ import annotations

from pathlib import Path


def is_uri(path: str | Path) -> bool:
    """A storage location that is not a local path (``s3://...``, ``gs://...``). Here, not in :mod:`clp_tune.remote`,
    so that the command line can tell the two apart without importing Ray."""
    return "://" in str(path)


def one_line(error: object) -> str:
    """``error``'s message with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(str(error).split())


def blocking_file(path: str | Path) -> Path | None:
    """The file that keeps ``path`` from being a directory: ``path`` itself or its nearest existing ancestor, when
    that is not a directory; None when ``path`` is a directory or can be made one."""
    existing = Path(path).expanduser().absolute()
    while not existing.exists():
        existing = existing.parent
    return None if existing.is_dir() else existing
