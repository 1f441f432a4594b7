"""Benchmarks and the tooling they need, kept apart from the product: bank recording (``record``), the scheduler
benchmark (``suite``: the lineup of ``baselines`` under the priors of ``priors``, run on ``simulator`` or through
real Ray Tune with ``replay``, scored by ``metrics``, printed by ``tables``), the scheduler's own cost (``cost``)
and the ``clp-tune bench ...`` commands (``commands``, ``benchmarks``)."""
