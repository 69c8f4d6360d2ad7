"""Training: configs, batches, feature cache, trainer, distributed helpers."""
