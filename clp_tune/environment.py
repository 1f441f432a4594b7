"""Environment variables set for a block of work and restored after it.

Ray, Tune and the fit cache read settings from the environment, some of them in processes they start, so a setting
for one block of work (a benchmark's own fit cache, a replay without Tune's loggers, a Jobs client that must not
pick up a Ray address) is an environment variable, and it must not outlive the block. (The few defaults meant for
the whole process, such as ``RAY_AUTH_MODE`` for a benchmark's own local Ray, are set with ``setdefault`` instead.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Set each variable of ``values`` (None: unset it) for the block; restore every one as it was after it.

    Example:
        >>> with environment(CLP_TUNE_FIT_CACHE="off", RAY_ADDRESS=None):
        ...     pass
    """
    before = {name: os.environ.get(name) for name in values}
    try:
        _set(values)
        yield
    finally:
        _set(before)


def _set(values: dict[str, str | None]) -> None:
    """Set each variable of ``values``; None unsets it."""
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
