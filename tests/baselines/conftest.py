"""Shared by the baselines' end-to-end tests: a utility that tells systems apart.

The tiny config's random model scores 0 on every system, so "picks the best" cannot be seen
through it. `fake_utilities` keeps every generation (and its cost) real and replaces only the
returned utilities with a fixed hash of each system.
"""

import json
import zlib

import numpy as np
import pytest


def hashed_utility(dag, assignment) -> float:
    from hs_jax.methods import archive

    key = json.dumps(archive.system_key(dag, assignment), sort_keys=True)
    return (zlib.crc32(key.encode()) % 1000) / 1000


@pytest.fixture
def fake_utilities(monkeypatch):
    from hs_jax.engine import scoring

    real = scoring.SystemScorer.score

    def score(self, systems, weights, items):
        real(self, systems, weights, items)
        return np.asarray([hashed_utility(dag, a) for dag, a in systems], float)

    monkeypatch.setattr(scoring.SystemScorer, "score", score)
