"""Concurrency limits that do not count frozen trials, so that a paused trial's slot goes to a new configuration.

Ray Tune's limits on concurrent trials (``ConcurrencyLimiter`` for a searcher such as OptunaSearch, and the basic
variant generator's own ``max_concurrent``) count every trial suggested and not yet complete. A trial the
trajectory scheduler PAUSED is not complete, so with ``max_concurrent_trials`` paused trials the searcher would
suggest nothing more and the search would only ever thaw what it froze. These two subclasses leave the trials in
``frozen`` out of the count; the scheduler keeps that set up to date (``TrajectoryScheduler.choose_trial_to_run``)
and reads ``max_concurrent`` to know when a slot would idle.
"""

from __future__ import annotations

from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.basic_variant import BasicVariantGenerator


class FrozenSlotsLimiter(ConcurrencyLimiter):
    """``ConcurrencyLimiter`` whose limit leaves out the trials in ``frozen`` (paused by the scheduler).

    Args:
        searcher: the searcher to limit (e.g. ``OptunaSearch``).
        max_concurrent: trials running at once, paused ones not counted.

    Example:
        >>> limiter = FrozenSlotsLimiter(OptunaSearch(), max_concurrent=2)  # doctest: +SKIP
        >>> tune.TuneConfig(search_alg=limiter, scheduler=TrajectoryScheduler())  # doctest: +SKIP
    """

    def __init__(self, searcher, max_concurrent: int):
        super().__init__(searcher, max_concurrent)
        self.frozen: frozenset[str] = frozenset()

    def suggest(self, trial_id: str):
        limit = self.max_concurrent
        self.max_concurrent = limit + len(self.live_trials & self.frozen)  # the parent compares len(live) to it
        try:
            return super().suggest(trial_id)
        finally:
            self.max_concurrent = limit


class FrozenSlotsVariantGenerator(BasicVariantGenerator):
    """``BasicVariantGenerator`` (random search, grids, repeats) whose ``max_concurrent`` leaves out ``frozen``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.frozen: frozenset[str] = frozenset()

    def next_trial(self):
        limit = self.max_concurrent
        if limit > 0:
            self.max_concurrent = limit + len(self._live_trials & self.frozen)
        try:
            return super().next_trial()
        finally:
            self.max_concurrent = limit
