"""Stopping hopeless trials: predict each trial's final accuracy from its trajectory and stop those unlikely to win.

``predictor`` turns a partial trajectory into a predictive distribution of the final val_acc, from the features of
``features`` and the curve extrapolation of ``curves``; ``policy`` decides continue or stop from the trials'
states (pure, no Ray); ``persistence`` keeps the decisions across a driver crash; ``scheduler`` is the Ray Tune
adapter; ``factory`` builds every scheduler a search or benchmark uses; ``bank_library`` finds the recorded
trajectories the predictor's prior is fitted on.
"""
