"""Shared test setup: 8 virtual CPU devices for sharding tests, and the real Gemma 3 270M file."""

import os

# Must happen before jax is imported anywhere: every test process sees 8 CPU devices, so sharded
# code paths are exercised against their 1-device results.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


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
