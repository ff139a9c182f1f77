"""Per-device memory of a run, estimated from shapes before anything is loaded (`--dry_run`).

What a device holds during a search, by the placement rules of `hs_jax.runtime.sharding` and the way
the engine and the search allocate:

* base parameters: the large kernels, the embedding and an untied head split along 'model'
  (`sharding.PARAM_RULES`; a dimension that does not divide by the axis stays whole, as
  `sharding.spec_for` leaves it), norms replicated;
* head screen: float32 models only, a bfloat16 copy of the head table (the embedding when
  tied) the greedy head screens with (`models.screened_head`), split along 'model' like it;
* expert stack for generation: every expert's LoRA factors, replicated (one copy per device);
  a pool of full models (experts.source='full') instead: the stacked pool as loaded, the one
  expert whose rows run (placed like the base parameters) and a swarm of whole weight sets in
  the param dtype (`_full_pool_parts`);
* weight swarm (`pso.PSOState`): positions, velocities and personal bests of every expert
  ([n, ...] each, split along 'expert') plus the global best and worst (one expert each,
  replicated), float32; a pool that does not divide 'expert' is padded to the next multiple
  with inert particles (`swarm.pso`), so each device holds ceil(n / expert) of them; the
  search's all-time best keeps one more copy of the positions, split along 'expert' like them
  (a copy keeps its source's sharding), or, for a padded pool, all n of them on every device
  (the real positions are a slice of the padded swarm, which XLA replicates);
* KV cache of the largest generate call: `engine.max_batch` rows (rounded up to a multiple of
  the devices rows are split over, 'data' x 'expert') split over 'data' x 'expert', every
  layer's keys and values over the padded prompt length plus the padded token budget, in the
  parameter dtype. The padding is the engine's: the longest prompt (`engine.max_prompt_len`)
  is rounded up to a length bucket and the token budget to a new-token bucket
  (`call_plan.DEFAULT_*_BUCKETS`), and the cache has exactly that many slots per row. Its kv
  heads are split along 'model' when they divide by it, as the q/k/v projections split them
  (the sampler pins the cache to P(('data', 'expert'), 'model', None, None) over a
  [rows, kv heads, ...] layout, `engine.sampling.kv_cache_spec`); for kv heads that 'model'
  does not divide (Gemma 2B and Gemma 3 270M / 1B have one), the plan counts every kv head of
  a device's rows, an upper bound: the sampler constrains that cache over 'data' x 'expert'
  only, and XLA may still split it along head_dim, after the k/v projections' column split;
* logits of one step: the rows x vocabulary float32 output of the head.

Activations and XLA's workspace are not counted: leave headroom. The model's shapes come from a
preset name (`hs_jax.models.PRESETS`, e.g. 'gemma-7b'), an HF directory's config.json or a GGUF
header, never from the weights; the pool's size, rank and projections from the PEFT folders'
adapter_config.json files when they are readable, else from config.experts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import ml_collections

from hs_jax.config import mesh_layout
from hs_jax.config.model_source import ModelSource, tiny_family_of
from hs_jax.config.pool_source import PoolSource
from hs_jax.config.task_choice import TaskChoice
from hs_jax.models import tiny_vocab
from hs_jax.models.gemma_config import PRESETS, GemmaConfig, tiny_config
from hs_jax.pipeline import door
from hs_jax.setup import assembly

_BYTES = {"float32": 4, "bfloat16": 2}
# The largest generation budget of any task type (judged tasks), for a task the registry does
# not know when the config sets none.
_MAX_BUDGET = 200


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device of each resident part (see the module docstring) and the mesh used."""

    model: str
    mesh: dict[str, int]
    parts: dict[str, int]
    notes: tuple[str, ...] = ()

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
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def model_shapes(spec: str, param_dtype: str) -> GemmaConfig:
    """The model's config from a preset name, 'tiny' / 'tiny:<family>', an HF config.json or
    a GGUF header."""
    family = tiny_family_of(spec)
    if family is not None:
        config = tiny_config(family, param_dtype=param_dtype)
        if spec == "tiny":  # the real Gemma 3 vocabulary, which the plan does not load
            return config
        return config.replace(vocab_size=tiny_vocab.tiny_vocab_size(family))
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


def _split(dim: int, axis: int) -> float:
    """The share of a dimension one device holds: split when it divides, else whole."""
    return dim / axis if dim % axis == 0 else dim


def budget(c: ml_collections.ConfigDict) -> int:
    """The generation budget a node call gets: task.max_new_tokens, else the registered task's
    (the authors' AbstainQA budget under protocol 'authors'), else the largest of any type."""
    from hs_jax import tasks

    task = TaskChoice.of(c)
    if task.max_new_tokens:
        return task.max_new_tokens
    spec = task.registered
    if spec is None:
        return _MAX_BUDGET
    if c.protocol == "authors" and spec.type == "abstain":
        return tasks.AUTHORS_ABSTAIN_MAX_NEW_TOKENS
    return spec.max_new_tokens


def _pool_shape(c: ml_collections.ConfigDict) -> tuple[int, int, tuple[str, ...], str]:
    """(experts, rank, projections, note) of the pool as the search stacks it. A PEFT pool is
    read from its adapter_config.json files (the stack pads every expert to the largest rank,
    rank_pattern included, and adapts the union of their target modules); without readable
    folders, or for 'train' / 'random', experts.n / rank / targets (and a note saying so)."""
    from hs_jax.experts.lora import ADAPTER_CONFIG, PROJ_NAMES

    pool = PoolSource.of(c)
    configured = (int(pool.n), int(pool.rank), tuple(pool.targets))
    if pool.kind != "peft":
        return (*configured, "")
    try:
        folders = pool.peft_folders()
    except FileNotFoundError:  # none given yet: the configured rank and targets
        folders = []
    ranks, targets = [], set()
    try:
        for folder in folders:
            adapter = json.loads((Path(folder) / ADAPTER_CONFIG).read_text())
            ranks += [int(adapter["r"]), *map(int, (adapter.get("rank_pattern") or {}).values())]
            modules = adapter["target_modules"]
            targets |= {modules} if isinstance(modules, str) else set(modules)
    except (OSError, ValueError, KeyError, TypeError):
        folders = []
    targets = tuple(t for t in PROJ_NAMES if any(m.endswith(t) for m in targets))
    if not folders or not targets:
        n, rank, projections = configured
        return (
            n, rank, projections,
            f"no readable PEFT pool: experts.n={n} experts of rank experts.rank={rank} on "
            f"{'/'.join(projections)} assumed",
        )  # fmt: skip
    return len(folders), max(ranks), targets, f"pool read from {len(folders)} PEFT folders"


def _full_pool_size(c: ml_collections.ConfigDict) -> tuple[int, str]:
    """(experts, note) of a pool of full models (experts.source='full'): one per folder listed
    in experts.model_dirs (each of the base model's architecture, so of its size)."""

    n = len(PoolSource.of(c).model_folders())
    if not n:
        return 1, "experts.model_dirs lists no folder: 1 full-weight expert assumed"
    return n, f"{n} full-weight experts (experts.source='full'), each the base model's size"


def _full_pool_parts(expert: int, expert_here: int, n: int, here: int, best: int) -> dict[str, int]:
    """Bytes per device of a pool of full models: the stacked pool as loaded (on one device,
    not split), the expert whose rows run (placed like the base parameters, one at a time), and
    the weight swarm and all-time best in the param dtype (split along 'expert'). `expert`: one
    whole expert's bytes; `expert_here`: its share on one device once placed."""
    return {
        "expert pool (as loaded)": n * expert,
        "expert in generation (one at a time)": expert_here,
        "weight swarm (x, v, p, g, worst)": (3 * here + 2) * expert,
        "all-time best experts": best * expert,
    }


def plan(c: ml_collections.ConfigDict, n_devices: int) -> MemoryPlan:
    """Per-device bytes of a resolved run config on `n_devices` devices (nothing loaded)."""
    from hs_jax.engine import call_plan

    source = ModelSource.of(c)
    dtype = source.dtype(default="bfloat16")  # the plan is for an accelerator
    cfg = model_shapes(source.spec, dtype)
    mesh = mesh_layout.mesh_shape(c, n_devices)
    weight = _BYTES[dtype]
    model = mesh["model"]
    dims = _projection_dims(cfg)

    # Column-parallel kernels [d_in, d_out] split d_out, row-parallel ones split d_in.
    row_parallel = ("o_proj", "down_proj")
    kernels = sum(a * b for a, b in dims.values()) * cfg.n_layers
    kernels_here = cfg.n_layers * sum(
        (_split(a, model) * b) if name in row_parallel else (a * _split(b, model))
        for name, (a, b) in dims.items()
    )
    tables = 1 if cfg.tie_embeddings else 2  # an untied lm_head is split like the embedding
    embedding_here = _split(cfg.vocab_size, model) * cfg.d_model
    rest = cfg.num_params() - kernels - tables * cfg.vocab_size * cfg.d_model
    base = (kernels_here + tables * embedding_here + rest) * weight

    experts = PoolSource.of(c)
    if experts.full:
        n, pool_note = _full_pool_size(c)
        here = math.ceil(n / mesh["expert"])
        best = here if n % mesh["expert"] == 0 else n  # a padded pool's best is replicated
        pool = _full_pool_parts(cfg.num_params() * weight, int(base), n, here, best)
    else:
        n, rank, targets, pool_note = _pool_shape(c)
        layers = experts.last_layers if experts.trained else 0
        per_expert = (layers or cfg.n_layers) * sum(rank * sum(dims[t]) for t in targets)
        here = math.ceil(n / mesh["expert"])
        best = here if n % mesh["expert"] == 0 else n  # a padded pool's best is replicated
        pool = {  # float32 factors
            "expert stack (generation)": int(n * per_expert * 4),
            "weight swarm (x, v, p, g, worst)": int((3 * here + 2) * per_expert * 4),
            "all-time best experts": int(best * per_expert * 4),
        }

    engine = assembly.engine_settings(c)
    rows = math.ceil(engine["max_batch"] / (mesh["data"] * mesh["expert"]))  # ROW_AXES
    prompt = call_plan.round_to_bucket(engine["max_prompt_len"], engine["length_buckets"])
    new = call_plan.round_to_bucket(budget(c), call_plan.DEFAULT_NEW_TOKEN_BUCKETS)
    length = prompt + new
    kv_heads = _split(cfg.n_kv_heads, model)  # split along 'model' where the heads divide
    kv = cfg.n_layers * 2 * rows * kv_heads * cfg.head_dim * length * weight
    logits = rows * cfg.vocab_size * 4
    parts = {"base parameters": int(base)}
    if dtype == "float32":
        parts["head screen (bfloat16 embedding)"] = int(embedding_here * 2)
    parts |= pool
    parts |= {
        f"KV cache ({rows} rows x {prompt}+{new} slots)": int(kv),
        "logits of one step": int(logits),
    }
    pad = -n % mesh["expert"]
    notes = [
        f"{n} experts, {here} per device along 'expert' (swarm and all-time best)"
        if not pad
        else f"{n} experts padded with {pad} inert particles to {n + pad}, {here} per device "
        "along 'expert' (swarm); the all-time best holds all n on every device"
    ]
    notes += [pool_note] if pool_note else []
    if model > 1:
        kh = cfg.n_kv_heads
        notes.append(
            f"KV cache split along 'model': {int(kv_heads)} of {kh} kv heads per device"
            if kv_heads < kh
            else f"KV cache not split by kv head ({kh} kv heads, model={model}): counted whole "
            "on every device of a 'model' group"
        )
    return MemoryPlan(model=source.spec, mesh=mesh, parts=parts, notes=tuple(notes))


def dry_run(config: ml_collections.ConfigDict, n_devices: int, device_memory_gib=None) -> str:
    """What `launch.main --dry_run` prints: the plan's table for `config` on `n_devices`
    devices and, when the config would be refused at launch, the reasons (the plan is still
    shown: a dry run is for sizing a config whose data and experts may not be there yet).
    Reads no weights and writes nothing; a layout the devices cannot hold is a ConfigError."""
    from hs_jax.runtime.errors import ConfigError

    c = door.resolve(config)
    lines = [plan(c, n_devices).table(device_memory_gib)]
    try:
        door.check(c)
    except ConfigError as e:
        problems = [line.strip() for line in str(e).splitlines() if line.strip()]
        problems = problems[1:] if len(problems) > 1 else problems
        lines.append("a launch with this config would stop before loading anything:")
        lines += [f"  {p}" for p in problems]
    return "\n".join(lines)
