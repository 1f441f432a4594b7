"""Stopping hopeless trials: predict each trial's final accuracy from its trajectory and stop those unlikely to win.

``curves`` (parametric extrapolation), ``features`` (a partial trajectory's features), ``context`` (where a trial
stands among the other trials of its search), ``incontext`` (the scale-free model that transfers across tasks),
``prior`` (the shipped banks pooled), ``calibration`` (online conformal recalibration) and ``predictor`` turn a
partial trajectory into a predictive distribution of the final val_acc; ``transfer`` measures that leave-task-out.
``boosting`` fits and asks their trees, ``fit_cache`` keeps the fits on the shipped banks, which every search
repeats. ``policy`` decides continue or stop from the trials' histories (pure, no Ray); ``persistence`` keeps the
decisions across a driver crash; ``scheduler`` is the Ray Tune adapter; ``factory`` builds every scheduler a search or
benchmark uses; ``bank_library`` names the shipped banks the prior is fitted on.
"""
