"""Shared test setup: 8 virtual CPU devices for sharding tests, and the real Gemma 3 270M file."""

import os

# Must happen before jax is imported anywhere: every test process sees 8 CPU devices, so sharded
# code paths are exercised against their 1-device results.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# The suite runs on two pytest-xdist workers (scripts/test.sh: `-n 2 --dist loadgroup`). Each
# test file stays on one worker (its module fixtures are computed once), and the files that
# hold a real-size model, transformers' reference models or many processes and devices share
# one group, so they run one after another on one worker: two of them side by side would
# exceed CI's 24 GB, and the other worker runs the tiny-model files meanwhile.
HEAVY_FILES = frozenset(
    {
        "test_bench_accelerator.py",
        "test_expert_axis.py",
        "test_experts.py",
        "test_families.py",
        "test_families_gguf.py",
        "test_gguf.py",
        "test_host_memory.py",
        "test_memory.py",
        "test_models.py",
        "test_multihost.py",
        "test_runner_real.py",
        "test_sharded_loading.py",
        "test_tokenizer.py",
        "test_tokenizer_parity.py",
    }
)
_TESTS = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """One xdist group per test file, and one for all of `HEAVY_FILES`."""
    for item in items:
        path = Path(str(item.fspath)).resolve()
        group = "heavy" if path.name in HEAVY_FILES else str(path.relative_to(_TESTS))
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def gemma3_270m_gguf():
    """Path of the real Gemma 3 270M GGUF, assembled once from the PyPI package."""
    from hs_jax.models.gguf_io import pypi_gguf_path

    return pypi_gguf_path()


@pytest.fixture(scope="module", autouse=True)
def _drop_compiled_programs():
    """After each test module, drop jax's compiled programs and traces: the suite runs in one
    process, and programs compiled for one module's models are not reused by the next, so
    keeping them only raises the process's peak memory (CI has 24 GB)."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
