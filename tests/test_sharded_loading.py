"""Loading straight into the mesh (hs_jax.models.convert): a 0.51B-parameter random Gemma 3
checkpoint (1.03 GB in bfloat16, three safetensors shards with an index, written here) loads
on 8 CPU devices with mesh.model=4 and model=8 in a fresh process each.

- Each device holds exactly what `--dry_run`'s plan says it holds (within 5%): the large
  kernels and the embedding split along 'model', the norms whole.
- The process's peak resident memory grows by the placed model and about one tensor, not a
  multiple of the checkpoint. On CPU all 8 devices live in host memory, so the placed model is
  8 / model copies of the checkpoint: model=8 splits it once over the 8 devices (one copy),
  model=4 leaves a 'data' axis of 2, each of whose groups holds its own split copy (two). The
  bound asserted, over the process's resident memory just before loading (JAX and its 8
  devices started): (8 / model) x checkpoint bytes + 4 x the largest tensor (the tensor read,
  its conversion, the slices in flight, allocator slack) + 256 MiB for the runtime's buffers
  and Python. Before this change the loader held the whole state dict (memory-mapped and
  touched), converted it whole, placed it on one device and then split it: several copies
  more.
- The values are the checkpoint's: every parameter equals the one-device load's.
"""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {
    "model_type": "gemma3_text",
    "architectures": ["Gemma3ForCausalLM"],
    "vocab_size": 32768,
    "hidden_size": 1536,
    "intermediate_size": 6144,
    "num_hidden_layers": 14,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "query_pre_attn_scalar": 128,
    "sliding_window": 512,
    "sliding_window_pattern": 6,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
}


def _tensors(c: dict):
    """(HF name, shape) of every tensor of the config, in file order."""
    d, f, h = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * h, c["num_key_value_heads"] * h
    yield "model.embed_tokens.weight", (c["vocab_size"], d)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm"):  # fmt: skip
            yield p + n + ".weight", (d,)
        yield p + "self_attn.q_norm.weight", (h,)
        yield p + "self_attn.k_norm.weight", (h,)
        for n, shape in (("q_proj", (q, d)), ("k_proj", (kv, d)), ("v_proj", (kv, d)),
                         ("o_proj", (d, q))):  # fmt: skip
            yield f"{p}self_attn.{n}.weight", shape
        for n, shape in (("gate_proj", (f, d)), ("up_proj", (f, d)), ("down_proj", (d, f))):
            yield f"{p}mlp.{n}.weight", shape
    yield "model.norm.weight", (d,)


def _write_shard(path: Path, items) -> None:
    """A safetensors file written tensor by tensor (header first, then each tensor's bytes)."""
    header, offset = {}, 0
    for name, shape in items:
        size = math.prod(shape) * 2
        header[name] = {
            "dtype": "BF16",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(len(items))
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for _, shape in items:
            values = rng.standard_normal(math.prod(shape), dtype=np.float32) * np.float32(0.02)
            f.write(values.astype(ml_dtypes.bfloat16).tobytes())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gemma_0p5b")
    (folder / "config.json").write_text(json.dumps(CONFIG))
    tensors = list(_tensors(CONFIG))
    shards = np.array_split(np.arange(len(tensors)), 3)
    weight_map = {}
    for k, idx in enumerate(shards):
        name = f"model-{k + 1:05d}-of-00003.safetensors"
        _write_shard(folder / name, [tensors[i] for i in idx])
        weight_map |= {tensors[i][0]: name for i in idx}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


_PROBE = textwrap.dedent(
    """
    import json, sys
    import jax
    import numpy as np
    from hs_jax.config import base_config
    from hs_jax.models.loading import load_model
    from hs_jax.pipeline import door, memory_plan
    from hs_jax.runtime import sharding

    folder, model = sys.argv[1], int(sys.argv[2])
    mesh = sharding.make_mesh(model=model) if model > 1 else None  # 1: the default device
    jax.block_until_ready(jax.device_put(np.zeros(8), jax.devices()[-1]))  # runtime started
    before = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024
    config, params = load_model(folder, param_dtype="bfloat16", mesh=mesh)
    leaves = jax.tree.leaves(jax.block_until_ready(params))
    # VmHWM: this process image's peak (ru_maxrss would keep the forking parent's).
    peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
    per_device = {str(d.id): 0 for d in (mesh.devices.flat if mesh else jax.devices()[:1])}
    for leaf in leaves:
        for shard in leaf.addressable_shards:
            per_device[str(shard.device.id)] += shard.data.nbytes
    c = base_config()
    c.model.spec, c.model.param_dtype, c.mesh.model = folder, "bfloat16", model
    c.task.name, c.experts.source = "nlgraph_gen", "random"
    plan = memory_plan.plan(door.resolve(c), len(jax.devices()))
    pure, layer = params.to_pure_dict(), params.to_pure_dict()["layers"][3]
    picked = {"embedding": pure["embedder"]["embedding"], "q": layer["attn"]["q_proj"]["kernel"],
              "o": layer["attn"]["o_proj"]["kernel"], "norm": layer["input_norm"]["scale"]}
    sample = {k: np.asarray(v, np.float32)[-3:, -70:].tolist() if v.ndim == 2 else
              np.asarray(v, np.float32)[-70:].tolist() for k, v in picked.items()}
    print(json.dumps({"before": before, "peak": peak, "per_device": per_device,
                      "plan": plan.parts["base parameters"], "largest": max(
                          x.nbytes for x in leaves), "sample": sample}))
    """
)


def _load(folder: Path, model: int) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(folder), str(model)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("model", [4, 8])
def test_a_half_billion_checkpoint_loads_slice_by_slice(checkpoint, model):
    size = sum(f.stat().st_size for f in checkpoint.glob("*.safetensors"))
    assert size > 1.0e9  # 0.51B parameters in bfloat16
    got = _load(checkpoint, model)
    for device, held in got["per_device"].items():
        assert held == pytest.approx(got["plan"], rel=0.05), device
    # Every device holds about 1/model of the model, not the whole of it.
    assert max(got["per_device"].values()) < 1.2 * size / model
    grown = got["peak"] - got["before"]
    bound = (8 // model) * size + 4 * got["largest"] + 256 * 2**20
    print(f"model={model}: peak grew {grown / 2**30:.2f} GiB for a {size / 2**30:.2f} GiB "
          f"checkpoint (bound {bound / 2**30:.2f} GiB)")  # fmt: skip
    assert grown < bound  # about one copy, not several


def test_sharded_values_equal_the_one_device_load(checkpoint):
    assert _load(checkpoint, 8)["sample"] == _load(checkpoint, 1)["sample"]


def test_the_gguf_model_loads_into_the_mesh_tensor_by_tensor(gemma3_270m_gguf):
    """The real 270M GGUF, dequantised tensor by tensor, straight into mesh.model=4 (a 'data'
    axis of 2): every parameter equals the one-device load, split as the rule table says."""
    import jax

    from hs_jax.models.loading import load_model
    from hs_jax.runtime import sharding

    mesh = sharding.make_mesh(model=4)
    _, one = load_model(gemma3_270m_gguf, param_dtype="float32")
    _, split = load_model(gemma3_270m_gguf, param_dtype="float32", mesh=mesh)
    flat_one, flat_split = one.flat_state(), split.flat_state()
    for (path, a), (path_b, b) in zip(flat_one, flat_split, strict=True):
        assert path == path_b
        expected = sharding.spec_for("/".join(map(str, path)), a.value.shape, mesh)
        assert b.value.sharding.spec == expected, path
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))
    kernel = split["layers"][0]["mlp"]["gate_proj"]["kernel"].value
    assert {s.data.shape for s in kernel.addressable_shards} == {
        (kernel.shape[0], kernel.shape[1] // 4)
    }
    assert len(jax.devices()) == 8
