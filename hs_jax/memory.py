"""Per-device memory of a run, estimated from shapes before anything is loaded (`--dry_run`).

What a device holds during a search, by the placement rules of `hs_jax.sharding`:

* base parameters: the large kernels and the tied embedding split along 'model'
  (`sharding.PARAM_RULES`), norms replicated;
* expert stack for generation: every expert's LoRA factors, replicated (one copy per device);
* weight swarm (`pso.PSOState`): positions, velocities and personal bests of every expert
  ([n, ...] each, split along 'expert') plus the global best and worst (one expert each,
  replicated), float32; the search's all-time best keeps one more full stack (replicated);
* KV cache of one generate call: `engine.max_batch` rows split along 'data', every layer's keys
  and values over `engine.max_prompt_len` + the largest token budget, in the parameter dtype;
* logits of one decode step: rows x vocabulary, float32 (the head's output).

Activations and XLA's workspace are not counted: leave headroom. The model's shapes come from a
preset name (`hs_jax.models.PRESETS`, e.g. 'gemma-7b'), an HF directory's config.json or a GGUF
header, never from the weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import ml_collections

from hs_jax.models.config import PRESETS, GemmaConfig, tiny_config

_BYTES = {"float32": 4, "bfloat16": 2}
# The largest generation budget of any task type (judged tasks), when the config sets none.
_MAX_BUDGET = 200


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device of each resident part (see the module docstring) and the mesh used."""

    model: str
    mesh: dict[str, int]
    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def table(self, device_memory_gib: float | None = None) -> str:
        """A plain-text table, GiB per device; with a capacity, whether it fits."""
        mesh = " x ".join(f"{k}={v}" for k, v in self.mesh.items())
        lines = [f"model {self.model}, mesh {mesh} ({math.prod(self.mesh.values())} devices)"]
        width = max(len(k) for k in self.parts)
        for name, size in self.parts.items():
            lines.append(f"  {name:<{width}s} {size / 2**30:9.3f} GiB")
        lines.append(f"  {'total':<{width}s} {self.total / 2**30:9.3f} GiB per device")
        if device_memory_gib:
            verdict = "fits" if self.total <= device_memory_gib * 2**30 else "does NOT fit"
            lines.append(f"  {verdict} in {device_memory_gib:g} GiB (activations not counted)")
        return "\n".join(lines)


def model_shapes(spec: str, param_dtype: str) -> GemmaConfig:
    """The model's config from a preset name, 'tiny', an HF config.json or a GGUF header."""
    if spec == "tiny":
        return tiny_config("gemma3", param_dtype=param_dtype)
    if spec in PRESETS:
        return PRESETS[spec].replace(param_dtype=param_dtype)
    from hs_jax.models.loading import resolve_model_path

    path = resolve_model_path(spec)
    if path.is_dir():
        from hs_jax.models.convert import config_from_hf

        hf = json.loads((Path(path) / "config.json").read_text())
        return config_from_hf(hf, param_dtype=param_dtype, source=str(path / "config.json"))
    from hs_jax.models.gguf_io import config_from_metadata, read_gguf_metadata

    return config_from_metadata(read_gguf_metadata(path), param_dtype=param_dtype)


def _projection_dims(cfg: GemmaConfig) -> dict[str, tuple[int, int]]:
    d, f = cfg.d_model, cfg.ffn_dim
    return {
        "q_proj": (d, cfg.q_dim),
        "k_proj": (d, cfg.kv_dim),
        "v_proj": (d, cfg.kv_dim),
        "o_proj": (cfg.q_dim, d),
        "gate_proj": (d, f),
        "up_proj": (d, f),
        "down_proj": (f, d),
    }


def _mesh(c: ml_collections.ConfigDict, n_devices: int) -> dict[str, int]:
    expert, model = int(c.mesh.get("expert", 1)), int(c.mesh.model)
    data = int(c.mesh.data)
    if data == -1:
        if n_devices % (expert * model):
            raise ValueError(
                f"config.mesh: {n_devices} devices do not divide by expert={expert} x model={model}"
            )
        data = n_devices // (expert * model)
    return {"data": data, "expert": expert, "model": model}


def plan(c: ml_collections.ConfigDict, n_devices: int) -> MemoryPlan:
    """Per-device bytes of a resolved run config on `n_devices` devices (nothing loaded)."""
    dtype = c.model.param_dtype or "bfloat16"
    cfg = model_shapes(c.model.spec, dtype)
    mesh = _mesh(c, n_devices)
    weight = _BYTES[dtype]

    kernels = sum(a * b for a, b in _projection_dims(cfg).values()) * cfg.n_layers
    embedding = cfg.vocab_size * cfg.d_model
    rest = cfg.num_params() - kernels - embedding
    base = ((kernels + embedding) / mesh["model"] + rest) * weight

    layers = c.experts.last_layers or cfg.n_layers
    dims = _projection_dims(cfg)
    per_expert = layers * sum(c.experts.rank * sum(dims[t]) for t in c.experts.targets)
    n = int(c.experts.n)
    stack = n * per_expert * 4  # float32 factors
    swarm = (3 * math.ceil(n / mesh["expert"]) + 2) * per_expert * 4

    rows = math.ceil(c.engine.max_batch / mesh["data"])
    length = c.engine.max_prompt_len + (c.task.max_new_tokens or _MAX_BUDGET)
    kv = cfg.n_layers * 2 * rows * cfg.n_kv_heads * cfg.head_dim * length * weight
    logits = rows * cfg.vocab_size * 4
    parts = {
        "base parameters": int(base),
        "expert stack (generation)": int(stack),
        "weight swarm (x, v, p, g, worst)": int(swarm),
        "all-time best experts": int(stack),
        f"KV cache ({rows} rows x {length} slots)": int(kv),
        "logits of one step": int(logits),
    }
    return MemoryPlan(model=str(c.model.spec), mesh=mesh, parts=parts)
