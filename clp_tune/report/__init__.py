"""The offline HTML report of a finished search: one module per section, assembled by ``page``.

``run`` reads the run directory, ``statistics`` holds the computations (intervals over seeds, back-test rows) and
``markup`` the HTML pieces every section shares, ``outcomes`` every trial's final (measured, or predicted for a stopped
trial); ``summary``, ``curves``, ``scheduler``, ``savings``, ``parameters``, ``effects`` (with ``adjusted``),
``trajectories``, ``trials`` and ``spec_file`` each render one part of the page.
"""
