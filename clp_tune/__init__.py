"""clp_tune: Ray Tune searches over the early ("critical") period of training, with trajectory-aware stopping."""

__version__ = "0.1.0"
