"""The offline HTML report of a finished search: one module per section, assembled by ``page``."""
