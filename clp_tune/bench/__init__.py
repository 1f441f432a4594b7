"""Benchmarks and the tooling they need, kept apart from the product: bank recording (``record``), scheduler
replay through Ray Tune (``replay``) and the ``clp-tune bench ...`` commands (``benchmarks``)."""
