"""Sweeps: the paper's tuning protocol as an Optuna study whose trials are ordinary runs
(`hs_jax.sweep.study`), over a space of config fields (`space`), kept in a journal file or a
database shared by many workers (`storage`, `slots`), reported in summary.md and pictures
(`summary`); the spaces `launch.compare --tune_trials` gives each method (`method_spaces`)."""
