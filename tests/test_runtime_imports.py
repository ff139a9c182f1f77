"""Runtime code imports only the runtime requirements: every module of hs_jax/ and each
launcher imports in a process where torch, transformers, peft, accelerate and IPython cannot be
imported (the test extra installs them, so only this blocker shows a runtime import)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "transformers", "peft", "accelerate", "IPython")

BLOCKER = f"""
import importlib, pkgutil, sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError("test-only package " + name + " imported at run time")

sys.meta_path.insert(0, Block())
"""

LIBRARY = """
import hs_jax
prefix = hs_jax.__name__ + "."
names = [m.name for m in pkgutil.walk_packages(hs_jax.__path__, prefix)]
for name in names:
    importlib.import_module(name)
for name in hs_jax.__all__:
    getattr(hs_jax, name)
print(len(names))
"""

LAUNCHERS = sorted(p.stem for p in (ROOT / "launch").glob("*.py") if p.stem != "__init__")


def _run(code):
    out = subprocess.run(
        [sys.executable, "-c", BLOCKER + code], cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_every_library_module_imports_without_test_only_packages():
    assert int(_run(LIBRARY).split()[-1]) > 30


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_launcher_imports_without_test_only_packages(launcher):
    _run(f"importlib.import_module('launch.{launcher}')")
