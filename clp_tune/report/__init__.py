"""The offline HTML report of a finished search: one module per section, assembled by ``page``.

``run`` reads the run directory, ``statistics`` holds the computations (intervals over seeds, back-test rows) and
``markup`` the HTML pieces every section shares; ``summary``, ``curves``, ``scheduler``, ``parameters``, ``effects``,
``trajectories``, ``trials`` and ``spec_file`` each render one part of the page.
"""
