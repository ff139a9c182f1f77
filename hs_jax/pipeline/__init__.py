"""A run from config to results: the door that resolves and checks the config once (`door`),
the per-device memory plan of `--dry_run` (`memory_plan`), the composition of a run
(`runner`), results.json and its pictures (`report`, `plots`, `diagnostics`), and loading a
found system to answer with it (`found_system`)."""
