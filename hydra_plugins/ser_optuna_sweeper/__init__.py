"""A Hydra sweeper that runs an Optuna (4 or later) study, prunes trials in process, and resumes from SQLite.

``hydra/sweeper=ser_optuna`` (chosen by ``conf/hparams_search/optuna.yaml``); ``hydra/sweeper/sampler`` and
``hydra/sweeper/pruner`` pick Optuna's sampler and pruner.
"""
