"""Runs: the config file, datasets, model building, training, evaluation, the paper's table,
checkpoints and analysis. The only layer that reads the run config."""
