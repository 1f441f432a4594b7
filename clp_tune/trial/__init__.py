"""One trial: the data, the model, the training recipe and what it records of its own trajectory.

``trainable.train_trial`` is the Ray Tune entry point; ``recipe.run_trial`` trains one configuration epoch by
epoch and reports the metrics, the trajectory statistics (``statistics``, ``probe_gradients``) and the
critical-period detectors' verdicts (``detectors``). The early period's recipe (Mixup pause or boost, high-loss
removal) is ``early_period``; ``mixup``, ``label_noise`` and ``pretrain`` are the recipe's regularizers; ``device``
(with ``augment``) is how batches reach the device: CIFAR's crop-and-flip augmentation, bf16 autocast, channels-last
and torch.compile.
"""
