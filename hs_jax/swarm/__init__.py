"""The search: DAGs and G-decode (`graph`), particle swarms over pytrees (`pso`), JFK-score
(`jfk`), the alternating role / weight loop with its two schedules, checkpointed every
iteration (`search`), and its typed iteration records (`history`). It scores systems only
through an injected function, so nothing here loads a model."""
