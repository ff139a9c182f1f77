"""PEFT adapters that would silently change what is computed are refused when loaded, naming
the folder and the tensors (hs_jax.experts.lora.load_peft_adapter): factors with NaN or infinite
values (they used to be accepted and end the search in a 40-line FloatingPointError), and
factors of modules the adapter's target_modules do not cover (PEFT drops them, so hs_jax and
PEFT would run different adapters). target_modules naming a module no factor is for only
warns: PEFT gives it a zero update, nothing is lost. The launchers print the refusal in one
line and exit 1, before any search."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hs_jax.experts import lora

ROOT = Path(__file__).resolve().parents[2]
Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
V_B = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"


def _copy(good: Path, dst: Path, *, tensors=None, **config) -> Path:
    """`good` copied to `dst`, with the tensors changed by `tensors(dict)` and config keys
    set (None removes a key)."""
    shutil.copytree(good, dst)
    if tensors is not None:
        path = dst / lora.ADAPTER_WEIGHTS
        save_file(tensors(load_file(path)), path, metadata={"format": "pt"})
    if config:
        cfg = json.loads((dst / lora.ADAPTER_CONFIG).read_text())
        cfg.update(config)
        cfg = {k: v for k, v in cfg.items() if v is not None}
        (dst / lora.ADAPTER_CONFIG).write_text(json.dumps(cfg))
    return dst


def _set(key, value, at=(0, 0)):
    def fn(tensors):
        tensors[key] = tensors[key].copy()
        tensors[key][at] = value
        return tensors

    return fn


@pytest.mark.parametrize(
    "key, value, counts",
    [
        (Q_A, np.nan, "1 NaN and 0 infinite"),
        (V_B, np.inf, "0 NaN and 1 infinite"),
        (V_B, -np.inf, "0 NaN and 1 infinite"),
    ],
)
def test_a_factor_with_nan_or_inf_is_refused_naming_the_tensor(
    adapter, tmp_path, key, value, counts
):
    config, good = adapter
    folder = _copy(good, tmp_path / "bad", tensors=_set(key, value))
    with pytest.raises(lora.AdapterError) as info:
        lora.load_peft_adapter(folder, config)
    message = str(info.value)
    assert repr(str(folder)) in message and repr(key) in message and counts in message
    assert "\n" not in message


def test_a_bfloat16_nan_and_a_scale_that_overflows_are_refused(adapter, tmp_path):
    import ml_dtypes

    config, good = adapter

    def to_bf16_nan(tensors):
        tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
        return _set(Q_A, np.nan)(tensors)

    folder = _copy(good, tmp_path / "bf16", tensors=to_bf16_nan)
    with pytest.raises(lora.AdapterError, match="lora_A.weight' holds 1 NaN"):
        lora.load_peft_adapter(folder, config)
    # Finite factors whose scale (lora_alpha / r) overflows float32.
    folder = _copy(good, tmp_path / "overflow", tensors=_set(V_B, 3e38), lora_alpha=1e6)
    with pytest.raises(lora.AdapterError, match=r"v_proj\.lora_B scaled by 500000' holds 0 NaN"):
        lora.load_peft_adapter(folder, config)


@pytest.mark.parametrize(
    "changes, untargeted",
    [
        ({"target_modules": ["q_proj"]}, "v_proj"),  # a list that leaves out a module
        ({"target_modules": r".*\.q_proj"}, "v_proj"),  # a regex (full match)
        ({"exclude_modules": ["v_proj"]}, "v_proj"),
        ({"layers_to_transform": [0]}, "layers.1."),  # tensors on another layer
    ],
)
def test_factors_of_modules_target_modules_do_not_cover_are_refused(
    adapter, tmp_path, changes, untargeted
):
    config, good = adapter
    folder = _copy(good, tmp_path / "bad", **changes)
    with pytest.raises(lora.AdapterError) as info:
        lora.load_peft_adapter(folder, config)
    message = str(info.value)
    assert repr(str(folder)) in message and "does not target" in message
    assert untargeted in message.split(": ", 2)[-1] and "PEFT would drop them" in message


@pytest.mark.parametrize(
    "changes",
    [
        {"target_modules": r"model\.layers\.\d+\.self_attn\.(q|v)_proj"},
        {"target_modules": "all-linear"},
        {"target_modules": None},  # not said: not judged
        {"target_modules": ["self_attn.q_proj", "v_proj"]},  # a dotted suffix
        {"layers_to_transform": [0, 1, 2, 3]},
        {"exclude_modules": ["mlp.up_proj"]},
    ],
)
def test_target_modules_that_cover_the_tensors_load(adapter, tmp_path, changes):
    config, good = adapter
    loaded = lora.load_peft_adapter(_copy(good, tmp_path / "ok", **changes), config)
    assert set(loaded.targets) == {"q_proj", "v_proj"}


def test_a_listed_module_without_factors_only_warns(adapter, tmp_path, caplog):
    config, good = adapter
    folder = _copy(good, tmp_path / "extra", target_modules=["q_proj", "v_proj", "k_proj"])
    with caplog.at_level("WARNING"):
        loaded = lora.load_peft_adapter(folder, config)
    assert set(loaded.targets) == {"q_proj", "v_proj"}
    assert "['k_proj']" in caplog.text and "holds no factors" in caplog.text


@pytest.mark.parametrize(
    "changes, why",
    [
        ({"target_modules": "(q_proj"}, "target_modules is an invalid regex"),
        ({"target_modules": {"q_proj": 1}}, "target_modules must be module names or a regex"),
        ({"exclude_modules": 3}, "exclude_modules must be module names or a regex"),
        ({"layers_to_transform": "0"}, "layers_to_transform must be layer indices"),
    ],
)
def test_malformed_module_selections_are_refused(adapter, tmp_path, changes, why):
    config, good = adapter
    folder = _copy(good, tmp_path / "bad", **changes)
    with pytest.raises(lora.AdapterError, match=why) as info:
        lora.load_peft_adapter(folder, config)
    assert repr(str(folder)) in str(info.value)


def test_launch_main_refuses_a_nan_adapter_in_one_line(adapter, tmp_path):
    """The whole command: exit 1, one line naming the folder and the tensor, no search."""
    _, good = adapter
    pool = tmp_path / "pool"
    pool.mkdir()
    _copy(good, pool / "e0")
    _copy(good, pool / "e1", tensors=_set(Q_A, np.nan))
    cmd = [
        sys.executable, "-m", "launch.main", "--config=configs/tiny.py",
        f"--workdir={tmp_path / 'run'}", "--config.experts.source=peft",
        f"--config.experts.peft_dirs={pool}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-4000:]
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith("launch.main: PEFT adapter ") and repr(Q_A) in last, last
    assert str(pool / "e1") in last and "1 NaN" in last
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "results.json").exists()
