"""Benchmarks behind the README's figures; each writes its section of bench/RESULTS.md.

Run from the repository root: `python -m bench.generate`, `python -m bench.decode`,
`python -m bench.step_budget`, `python -m bench.pso`, `python -m bench.search`.
"""
