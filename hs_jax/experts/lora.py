"""n LoRA experts held as one pytree with a leading expert axis, and PEFT import/export.

Swarm search moves expert weights with linear combinations (PSO acts on every leaf), and the
model gathers each batch row's factors by expert id, so all experts live in one `LoraStack`:

    stack.layers[i][proj] = {'a': [E, d_in, r], 'b': [E, r, d_out]}

with `proj` any subset of q/k/v/o/gate/up/down per layer. Kernels are oriented like the model's
([d_in, d_out]); the adapted projection is y = x @ W + (x @ a[e]) @ b[e]. PEFT's scale
(lora_alpha / r, or lora_alpha / sqrt(r) with rslora) is folded into b at import, so every
expert has scale 1 and a linear combination of the a's and b's of experts with different
ranks or alphas means the same thing for all of them. Experts of smaller rank are zero-padded
to the largest rank, which leaves their output unchanged exactly.

Expert names and each expert's own (unpadded) rank are static metadata (not leaves), so code
that maps over leaves touches only the factors.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import struct

from hs_jax.models.gemma_config import GemmaConfig
from hs_jax.models.safetensors_io import read_safetensors

PROJ_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The HF submodule that holds each projection.
_PARENT = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}
INIT_SCHEMES = ("zero", "random", "peft")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_ALL_LINEAR = "all-linear"  # PEFT's target_modules shorthand: every linear layer but the head


class AdapterError(ValueError):
    """A PEFT adapter folder that cannot be imported (the message names folder, key, problem)."""


def proj_dims(config: GemmaConfig, name: str) -> tuple[int, int]:
    """(d_in, d_out) of projection `name` in `config`'s decoder layers."""
    d, f = config.d_model, config.ffn_dim
    dims = {
        "q_proj": (d, config.q_dim),
        "k_proj": (d, config.kv_dim),
        "v_proj": (d, config.kv_dim),
        "o_proj": (config.q_dim, d),
        "gate_proj": (d, f),
        "up_proj": (d, f),
        "down_proj": (f, d),
    }
    if name not in dims:
        raise ValueError(f"unknown projection {name!r}; expected one of {PROJ_NAMES}")
    return dims[name]


@struct.dataclass
class LoraStack:
    """LoRA factors of E experts for every adapted projection, leading axis = expert.

    layers: one dict per decoder layer, proj name -> {'a': [E, d_in, r], 'b': [E, r, d_out]}
      (b already multiplied by the expert's PEFT scale); a layer without LoRA is {}.
    names: one label per expert (static), e.g. the folder it came from.
    ranks: each expert's own rank before zero padding (static); used to trim on export.
    """

    layers: tuple[dict[str, dict[str, jax.Array]], ...]
    names: tuple[str, ...] = struct.field(pytree_node=False, default=())
    ranks: tuple[int, ...] = struct.field(pytree_node=False, default=())

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_experts(self) -> int:
        """Size of the leading expert axis."""
        return int(_first_entry(self)["a"].shape[0])

    @property
    def rank(self) -> int:
        """The padded rank shared by all experts and projections."""
        return int(_first_entry(self)["a"].shape[-1])

    @property
    def targets(self) -> tuple[str, ...]:
        """Projection names adapted in at least one layer, in PROJ_NAMES order."""
        present = {name for layer in self.layers for name in layer}
        return tuple(n for n in PROJ_NAMES if n in present)

    @property
    def dtype(self):
        return _first_entry(self)["a"].dtype


def _first_entry(stack: LoraStack) -> dict[str, jax.Array]:
    for layer in stack.layers:
        for entry in layer.values():
            return entry
    raise ValueError("LoraStack has no adapted projection")


def _check_targets(targets: Iterable[str]) -> tuple[str, ...]:
    targets = tuple(targets)
    bad = [t for t in targets if t not in PROJ_NAMES]
    if bad:
        raise ValueError(f"unknown LoRA target(s) {bad}; expected a subset of {PROJ_NAMES}")
    if not targets:
        raise ValueError("LoRA needs at least one target projection")
    return tuple(n for n in PROJ_NAMES if n in targets)


def _with_meta(layers, names, ranks, n_experts) -> LoraStack:
    names = tuple(names) if names else tuple(f"expert_{i}" for i in range(n_experts))
    ranks = tuple(int(r) for r in ranks)
    if len(names) != n_experts or len(ranks) != n_experts:
        raise ValueError(f"{len(names)} names and {len(ranks)} ranks for {n_experts} experts")
    return LoraStack(layers=tuple(layers), names=names, ranks=ranks)


def init_lora_stack(
    config: GemmaConfig,
    n_experts: int,
    rank: int,
    targets: Iterable[str] = PROJ_NAMES,
    key: jax.Array | None = None,
    *,
    scheme: str = "zero",
    init_scale: float = 0.02,
    dtype=jnp.float32,
    names: Sequence[str] | None = None,
) -> LoraStack:
    """A stack of `n_experts` rank-`rank` adapters on `targets` in every layer.

    scheme: 'zero' (a = b = 0: the base model), 'peft' (a ~ U(+-1/sqrt(d_in)) as PEFT's
    kaiming init, b = 0: also the base model, but PSO can move b), 'random' (a as 'peft',
    b ~ N(0, init_scale^2): every expert changes the output; for tests and random swarms).
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown LoRA init scheme {scheme!r}; expected one of {INIT_SCHEMES}")
    if n_experts < 1 or rank < 1:
        raise ValueError(f"need n_experts >= 1 and rank >= 1, got {n_experts}, {rank}")
    targets = _check_targets(targets)
    if scheme != "zero" and key is None:
        raise ValueError(f"LoRA init scheme {scheme!r} needs a PRNG key")
    if key is None:
        key = jax.random.key(0)  # unused by 'zero'
    layers = _init_layers(key, init_scale, config, n_experts, rank, targets, scheme, dtype)
    return _with_meta(layers, names, (rank,) * n_experts, n_experts)


def _init_layers(key, init_scale, config, n_experts, rank, targets, scheme, dtype):
    """The factors of `init_lora_stack`, drawn on the host.

    A numpy generator seeded by the key's data: per-shape jax.random kernels took seconds to
    compile for a few layers, and this init runs once per swarm, off the hot path.
    """
    shapes = [(proj_dims(config, name), name) for _ in range(config.n_layers) for name in targets]
    n_a = sum(n_experts * d_in * rank for (d_in, _), _ in shapes)
    n_b = sum(n_experts * rank * d_out for (_, d_out), _ in shapes)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    rng = np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())
    u = rng.uniform(-1.0, 1.0, n_a).astype(np.float32)
    g = rng.standard_normal(n_b, np.float32)
    layers, off_a, off_b, it = [], 0, 0, iter(shapes)
    for _ in range(config.n_layers):
        layer = {}
        for _ in targets:
            (d_in, d_out), name = next(it)
            a_shape, b_shape = (n_experts, d_in, rank), (n_experts, rank, d_out)
            a = np.zeros(a_shape, np.float32)
            b = np.zeros(b_shape, np.float32)
            if scheme != "zero":
                a = u[off_a : off_a + a.size].reshape(a_shape) / math.sqrt(d_in)
            if scheme == "random":
                b = init_scale * g[off_b : off_b + b.size].reshape(b_shape)
            off_a, off_b = off_a + a.size, off_b + b.size
            layer[name] = {
                "a": jnp.asarray(a, dtype),  # [E, d_in, r]
                "b": jnp.asarray(b, dtype),  # [E, r, d_out]
            }
        layers.append(layer)
    return tuple(layers)


def _pad_rank(x, rank: int, axis: int):
    """Zero-pad the rank axis of one factor to `rank` (exact: padded components add 0)."""
    pad = rank - x.shape[axis]
    if pad < 0:
        raise ValueError(f"cannot pad rank {x.shape[axis]} down to {rank}")
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return (np if isinstance(x, np.ndarray) else jnp).pad(x, widths)


def stack_adapters(adapters: Sequence[LoraStack], *, dtype=None) -> LoraStack:
    """Concatenate stacks (often single-expert ones) along the expert axis.

    Ranks are zero-padded to the largest one, and a projection that some adapters do not
    adapt is filled with zeros for them: both are exact. All adapters need the same number of
    layers and the same projection shapes. Runs on the host (an import-time operation).
    """
    if not adapters:
        raise ValueError("stack_adapters needs at least one adapter")
    n_layers = adapters[0].n_layers
    for j, ad in enumerate(adapters):
        if ad.n_layers != n_layers:
            raise ValueError(
                f"adapter {j} ({ad.names}) has {ad.n_layers} layers, adapter 0 has {n_layers}"
            )
    rank = max(ad.rank for ad in adapters)
    dtype = jnp.dtype(dtype or jnp.result_type(*[ad.dtype for ad in adapters]))
    layers = []
    for i in range(n_layers):
        names = [n for n in PROJ_NAMES if any(n in ad.layers[i] for ad in adapters)]
        layer = {}
        for name in names:
            ref = next(ad.layers[i][name] for ad in adapters if name in ad.layers[i])
            d_in, d_out = ref["a"].shape[1], ref["b"].shape[2]
            parts_a, parts_b = [], []
            for j, ad in enumerate(adapters):
                e = ad.n_experts
                entry = ad.layers[i].get(name)
                if entry is None:
                    parts_a.append(np.zeros((e, d_in, rank), dtype))
                    parts_b.append(np.zeros((e, rank, d_out), dtype))
                    continue
                if entry["a"].shape[1] != d_in or entry["b"].shape[2] != d_out:
                    raise ValueError(
                        f"adapter {j} ({ad.names}) layer {i} {name}: shapes "
                        f"{entry['a'].shape}, {entry['b'].shape} do not match d_in={d_in}, "
                        f"d_out={d_out}"
                    )
                parts_a.append(_pad_rank(np.asarray(entry["a"], dtype), rank, 2))
                parts_b.append(_pad_rank(np.asarray(entry["b"], dtype), rank, 1))
            layer[name] = {
                "a": jnp.asarray(np.concatenate(parts_a)),  # [E, d_in, r]
                "b": jnp.asarray(np.concatenate(parts_b)),  # [E, r, d_out]
            }
        layers.append(layer)
    names = tuple(n for ad in adapters for n in ad.names)
    ranks = tuple(r for ad in adapters for r in ad.ranks)
    return _with_meta(layers, names, ranks, len(names))


def _check_index(stack: LoraStack, i: int) -> int:
    if not -stack.n_experts <= i < stack.n_experts:
        raise IndexError(f"expert {i} out of range for a stack of {stack.n_experts}")
    return i % stack.n_experts


def expert(stack: LoraStack, i: int) -> LoraStack:
    """Expert i as a one-expert stack (leading axis of size 1, same padded rank)."""
    i = _check_index(stack, i)
    layers = jax.tree.map(lambda x: x[i : i + 1], stack.layers)
    return LoraStack(layers=layers, names=(stack.names[i],), ranks=(stack.ranks[i],))


def replace_expert(stack: LoraStack, i: int, single: LoraStack) -> LoraStack:
    """`stack` with expert i replaced by the one-expert stack `single` (rank zero-padded).

    `single` may adapt a subset of the stack's projections (the rest become zero) but no
    projection the stack lacks, and its rank may not exceed the stack's.
    """
    i = _check_index(stack, i)
    if single.n_experts != 1:
        raise ValueError(f"replace_expert needs a one-expert stack, got {single.n_experts}")
    if single.n_layers != stack.n_layers:
        raise ValueError(f"{single.n_layers} layers in the new expert, {stack.n_layers} in stack")
    if single.rank > stack.rank:
        raise ValueError(f"new expert rank {single.rank} exceeds the stack's rank {stack.rank}")
    layers = []
    for li, (layer, new) in enumerate(zip(stack.layers, single.layers, strict=True)):
        extra = set(new) - set(layer)
        if extra:
            raise ValueError(f"layer {li}: new expert adapts {sorted(extra)}, the stack does not")
        out = {}
        for name, entry in layer.items():
            if name in new:
                a = _pad_rank(new[name]["a"][0], stack.rank, 1)
                b = _pad_rank(new[name]["b"][0], stack.rank, 0)
            else:
                a, b = jnp.zeros_like(entry["a"][0]), jnp.zeros_like(entry["b"][0])
            out[name] = {
                "a": entry["a"].at[i].set(a.astype(entry["a"].dtype)),
                "b": entry["b"].at[i].set(b.astype(entry["b"].dtype)),
            }
        layers.append(out)
    names = stack.names[:i] + single.names + stack.names[i + 1 :]
    ranks = stack.ranks[:i] + single.ranks + stack.ranks[i + 1 :]
    return LoraStack(layers=tuple(layers), names=names, ranks=ranks)


def num_params(stack: LoraStack) -> int:
    """Number of stored LoRA values in the whole stack (padded; all experts)."""
    return int(sum(x.size for x in jax.tree.leaves(stack.layers)))


def to_flat_dict(stack: LoraStack) -> dict[str, np.ndarray]:
    """Host arrays keyed 'layers.{i}.{proj}.{a|b}' (for checkpoints and safetensors)."""
    return {
        f"layers.{i}.{name}.{ab}": np.asarray(entry[ab])
        for i, layer in enumerate(stack.layers)
        for name, entry in layer.items()
        for ab in ("a", "b")
    }


_FLAT_KEY = re.compile(r"^layers\.(\d+)\.(\w+)\.([ab])$")


def from_flat_dict(
    flat: dict[str, Any],
    *,
    n_layers: int,
    names: Sequence[str] | None = None,
    ranks: Sequence[int] | None = None,
) -> LoraStack:
    """Inverse of `to_flat_dict`; `ranks` defaults to the padded rank for every expert."""
    layers: list[dict[str, dict[str, jax.Array]]] = [{} for _ in range(n_layers)]
    for key, value in flat.items():
        m = _FLAT_KEY.match(key)
        if not m or m.group(2) not in PROJ_NAMES or int(m.group(1)) >= n_layers:
            raise ValueError(
                f"bad LoRA flat key {key!r} (expected layers.<i < {n_layers}>.proj.a|b)"
            )
        layers[int(m.group(1))].setdefault(m.group(2), {})[m.group(3)] = jnp.asarray(value)
    for i, layer in enumerate(layers):
        for name, entry in layer.items():
            if set(entry) != {"a", "b"}:
                raise ValueError(f"layers.{i}.{name}: needs both a and b, got {sorted(entry)}")
    stack = LoraStack(layers=tuple(layers))
    e, r = stack.n_experts, stack.rank
    return _with_meta(layers, names, ranks if ranks is not None else (r,) * e, e)


# ----------------------------------------------------------------------------- PEFT import

# Key of one LoRA factor in a PEFT safetensors file. Accepted prefixes: a causal LM
# ('model.layers.'), Gemma 3 multimodal in transformers 5 ('model.language_model.layers.') and 4
# ('language_model.model.layers.'); an optional adapter name ('.default.') before 'weight'.
_PEFT_KEY = re.compile(
    r"^(?:base_model\.model\.)?"
    r"(?P<module>(?:model\.|model\.language_model\.|language_model\.model\.)layers\."
    r"(?P<layer>\d+)\.(?P<parent>\w+)\.(?P<proj>\w+))"
    r"\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[\w-]+))?\.weight$"
)
# Config entries that change what the adapter computes and that we do not implement.
_UNSUPPORTED_FLAGS = {
    "use_dora": "DoRA (use_dora)",
    "lora_bias": "LoRA bias (lora_bias)",
    "use_qalora": "QA-LoRA (use_qalora)",
}
_UNSUPPORTED_LISTS = {
    "modules_to_save": "modules_to_save (fully trained extra modules)",
    "trainable_token_indices": "trainable_token_indices",
    "layer_replication": "layer_replication",
    "target_parameters": "target_parameters",
    "alora_invocation_tokens": "aLoRA (alora_invocation_tokens)",
}


def _match_pattern(patterns: dict[str, Any], module: str, default):
    """PEFT's rank/alpha pattern lookup: the first pattern that matches a suffix of `module`."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_rank(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _check_patterns(folder: str, cfg: dict[str, Any]) -> None:
    """rank_pattern / alpha_pattern: objects of valid regexes to ranks >= 1 / finite alphas
    (an invalid regex would otherwise fail as a bare re.error, naming neither folder nor key)."""
    for key, valid, what in (
        ("rank_pattern", _is_rank, "an int >= 1"),
        ("alpha_pattern", _is_number, "a finite number"),
    ):
        patterns = cfg.get(key) or {}
        if not isinstance(patterns, dict):
            raise AdapterError(
                f"PEFT adapter {folder!r}: {ADAPTER_CONFIG} {key} must be an object "
                f"(regex -> value), got {type(patterns).__name__}"
            )
        for pattern, value in patterns.items():
            try:
                re.compile(rf"(.*\.)?({pattern})$")
            except re.error as e:
                raise AdapterError(
                    f"PEFT adapter {folder!r}: {ADAPTER_CONFIG} {key} has an invalid regex "
                    f"{pattern!r}: {e}"
                ) from e
            if not valid(value):
                raise AdapterError(
                    f"PEFT adapter {folder!r}: {ADAPTER_CONFIG} {key}[{pattern!r}]={value!r} "
                    f"must be {what}"
                )


def _read_adapter_config(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, ADAPTER_CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PEFT adapter {folder!r}: missing {ADAPTER_CONFIG}")
    where = f"PEFT adapter {folder!r}: unreadable {ADAPTER_CONFIG}"
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise AdapterError(f"{where}: {e}") from e
    try:
        cfg = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise AdapterError(
            f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"
        ) from e
    except RecursionError as e:
        raise AdapterError(f"{where}: nested too deeply to parse as JSON") from e
    except ValueError as e:  # json.JSONDecodeError, or an integer beyond int_max_str_digits
        raise AdapterError(f"{where}: {e}") from e
    if not isinstance(cfg, dict):
        raise AdapterError(f"PEFT adapter {folder!r}: {ADAPTER_CONFIG} is not a JSON object")
    peft_type = cfg.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise AdapterError(f"PEFT adapter {folder!r}: peft_type {peft_type!r} is not LORA")
    problems = [what for k, what in _UNSUPPORTED_FLAGS.items() if cfg.get(k)]
    problems += [what for k, what in _UNSUPPORTED_LISTS.items() if cfg.get(k)]
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias={cfg['bias']!r} (only 'none')")
    if problems:
        raise AdapterError(
            f"PEFT adapter {folder!r}: unsupported feature(s): {', '.join(problems)}"
        )
    if "r" not in cfg or "lora_alpha" not in cfg:
        raise AdapterError(f"PEFT adapter {folder!r}: {ADAPTER_CONFIG} lacks 'r' or 'lora_alpha'")
    r, alpha = cfg["r"], cfg["lora_alpha"]
    if not _is_rank(r) or not _is_number(alpha):
        raise AdapterError(
            f"PEFT adapter {folder!r}: {ADAPTER_CONFIG} needs an int r >= 1 and a finite "
            f"lora_alpha, got r={r!r}, lora_alpha={alpha!r}"
        )
    _check_patterns(folder, cfg)
    targets = cfg.get("target_modules")
    for key in ("target_modules", "exclude_modules"):
        value = cfg.get(key)
        if isinstance(value, str):
            try:
                re.compile(value)
            except re.error as e:
                raise AdapterError(
                    f"PEFT adapter {folder!r}: {ADAPTER_CONFIG} {key} is an invalid regex "
                    f"{value!r}: {e}"
                ) from e
        elif value is not None and not (
            isinstance(value, list) and all(isinstance(t, str) for t in value)
        ):
            raise AdapterError(
                f"PEFT adapter {folder!r}: {ADAPTER_CONFIG} {key} must be module names or a "
                f"regex, got {value!r}"
            )
    layers = cfg.get("layers_to_transform")
    if layers is not None and not (
        (isinstance(layers, int) and not isinstance(layers, bool))
        or (isinstance(layers, list) and all(isinstance(i, int) for i in layers))
    ):
        raise AdapterError(
            f"PEFT adapter {folder!r}: {ADAPTER_CONFIG} layers_to_transform must be layer "
            f"indices, got {layers!r}"
        )
    if isinstance(targets, list):
        # Any listed module we do not model would be silently dropped: refuse instead.
        bad = [t for t in targets if t.split(".")[-1] not in PROJ_NAMES]
        if bad:
            raise AdapterError(
                f"PEFT adapter {folder!r}: target_modules {bad} are not decoder "
                f"projections (supported: {list(PROJ_NAMES)})"
            )
    return cfg


def _listed(names: list[str], module: str) -> bool:
    """PEFT's name match: `module` is one of `names` or ends with '.<name>'."""
    return module in names or any(module.endswith(f".{name}") for name in names)


def _targeted(cfg: dict[str, Any], module: str) -> bool:
    """Whether PEFT puts a LoRA layer on `module` ('model.layers.3.self_attn.q_proj'), by
    peft's `check_target_module_exists`: not in exclude_modules; in target_modules (a regex:
    full match, or 'all-linear'; names: the module or a '.'-suffix of it, on the layers of
    layers_to_transform when given). An adapter without target_modules is not judged."""
    exclude, targets = cfg.get("exclude_modules"), cfg.get("target_modules")
    if isinstance(exclude, str) and re.fullmatch(exclude, module):
        return False
    if isinstance(exclude, list) and _listed(exclude, module):
        return False
    if targets is None or targets == _ALL_LINEAR:
        return True
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    if not _listed(targets, module):
        return False
    layers = cfg.get("layers_to_transform")
    if layers is None or layers == []:
        return True
    index = int(re.match(r".*?\.[^.]*\.(\d+)\.", module).group(1))
    return index == layers if isinstance(layers, int) else index in layers


def _check_modules(folder: str, cfg: dict[str, Any], modules: Iterable[str]) -> None:
    """Refuses factors of modules the config's target_modules do not cover (PEFT would drop
    them: hs_jax and PEFT would run different adapters), naming them; warns about listed
    module names no factor is for (PEFT gives them a zero update: nothing is lost)."""
    modules = sorted(set(modules))
    untargeted = [m for m in modules if not _targeted(cfg, m)]
    if untargeted:
        shown = ", ".join(untargeted[:3])
        if len(untargeted) > 3:
            shown += f" and {len(untargeted) - 3} more"
        raise AdapterError(
            f"PEFT adapter {folder!r}: {ADAPTER_WEIGHTS} holds factors of {len(untargeted)} "
            f"module(s) that {ADAPTER_CONFIG} does not target (target_modules="
            f"{cfg.get('target_modules')!r}): {shown}; PEFT would drop them, so correct "
            "target_modules or remove those tensors"
        )
    targets = cfg.get("target_modules")
    if isinstance(targets, list):
        unused = [t for t in targets if not any(_listed([t], m) for m in modules)]
        if unused:
            logging.warning(
                "PEFT adapter %r: %s target_modules lists %s, but %s holds no factors for "
                "them (they add nothing)", folder, ADAPTER_CONFIG, unused, ADAPTER_WEIGHTS,
            )  # fmt: skip


def check_peft_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """The checked adapter_config.json of a PEFT folder that also holds its weights file.

    Needs no model, so a launcher can refuse a broken folder before loading one; the weights
    themselves are checked by `load_peft_adapter`. Raises FileNotFoundError / AdapterError
    naming the folder.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise FileNotFoundError(f"PEFT adapter folder {folder!r} {what}")
    cfg = _read_adapter_config(folder)
    if not os.path.isfile(os.path.join(folder, ADAPTER_WEIGHTS)):
        other = [f for f in os.listdir(folder) if f.startswith("adapter_model")]
        hint = f" (found {other}; only safetensors is read)" if other else ""
        raise FileNotFoundError(f"PEFT adapter {folder!r}: missing {ADAPTER_WEIGHTS}{hint}")
    return cfg


def load_peft_adapter(
    folder: str | os.PathLike, config: GemmaConfig, *, dtype=jnp.float32, name: str | None = None
) -> LoraStack:
    """One PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) as a 1-expert stack.

    Factors are transposed to the model's orientation and b is multiplied by PEFT's scale
    (lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora; per-module rank_pattern and
    alpha_pattern honoured). Modules adapted with different ranks are zero-padded to the
    largest. Raises FileNotFoundError / AdapterError naming the folder, key and problem; a
    factor with NaN or infinite values, and factors of a module target_modules does not cover
    (PEFT would drop them), are refused, naming the tensors.
    """
    folder = os.fspath(folder)
    cfg = check_peft_folder(folder)
    weights = os.path.join(folder, ADAPTER_WEIGHTS)
    try:
        tensors = read_safetensors(weights)  # numpy, bfloat16 as ml_dtypes
    except (ValueError, RecursionError) as e:  # RecursionError: a deeply nested JSON header
        raise AdapterError(f"PEFT adapter {folder!r}: cannot read {ADAPTER_WEIGHTS}: {e}") from e

    factors: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    modules: dict[tuple[int, str], str] = {}
    for key, value in tensors.items():
        m = _PEFT_KEY.match(key)
        if m is None:
            raise AdapterError(
                f"PEFT adapter {folder!r}: key {key!r} is not a LoRA factor of a decoder "
                "projection (unsupported module or feature)"
            )
        layer, proj = int(m.group("layer")), m.group("proj")
        if proj not in PROJ_NAMES or _PARENT[proj] != m.group("parent"):
            raise AdapterError(
                f"PEFT adapter {folder!r}: key {key!r} targets module "
                f"'{m.group('parent')}.{proj}', which the model does not have "
                f"(supported: {list(PROJ_NAMES)})"
            )
        if layer >= config.n_layers:
            raise AdapterError(
                f"PEFT adapter {folder!r}: key {key!r} has layer {layer}, but the model has "
                f"{config.n_layers} layers"
            )
        value = np.asarray(value, np.float32)
        if value.ndim != 2:
            raise AdapterError(
                f"PEFT adapter {folder!r}: key {key!r} has shape {value.shape}, expected 2-D"
            )
        _check_finite(folder, key, value)
        slot = factors.setdefault((layer, proj), {})
        if m.group("ab") in slot:
            raise AdapterError(f"PEFT adapter {folder!r}: key {key!r} duplicates a factor")
        slot[m.group("ab")] = value
        modules[(layer, proj)] = m.group("module")
    if not factors:
        raise AdapterError(f"PEFT adapter {folder!r}: {ADAPTER_WEIGHTS} holds no LoRA factors")
    _check_modules(folder, cfg, modules.values())

    r_default, alpha_default = cfg["r"], cfg["lora_alpha"]
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    entries: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
    for (layer, proj), slot in sorted(factors.items()):
        where = f"PEFT adapter {folder!r}: layer {layer} {proj}"
        if set(slot) != {"A", "B"}:
            missing = "lora_B" if "A" in slot else "lora_A"
            raise AdapterError(f"{where}: missing {missing}")
        a, b = slot["A"], slot["B"]  # PEFT: lora_A [r, d_in], lora_B [d_out, r]
        d_in, d_out = proj_dims(config, proj)
        r = a.shape[0]
        if a.shape != (r, d_in) or b.shape != (d_out, r):
            raise AdapterError(
                f"{where}: lora_A {a.shape} / lora_B {b.shape} contradict the model config "
                f"(expected [r, {d_in}] and [{d_out}, r])"
            )
        module = modules[(layer, proj)]
        r_cfg = _match_pattern(rank_pattern, module, r_default)
        if r != r_cfg:
            raise AdapterError(f"{where}: factors have rank {r}, adapter_config.json says {r_cfg}")
        alpha = _match_pattern(alpha_pattern, module, alpha_default)
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        with np.errstate(over="ignore"):
            b_scaled = b.T * scale  # [r, d_out]
        _check_finite(folder, f"{module}.lora_B scaled by {scale:g}", b_scaled)
        entries[(layer, proj)] = (a.T, b_scaled)  # [d_in, r], [r, d_out]

    rank = max(a.shape[1] for a, _ in entries.values())
    layers: list[dict[str, dict[str, jax.Array]]] = [{} for _ in range(config.n_layers)]
    for (layer, proj), (a, b) in entries.items():
        a = np.pad(a, ((0, 0), (0, rank - a.shape[1])))
        b = np.pad(b, ((0, rank - b.shape[0]), (0, 0)))
        layers[layer][proj] = {
            "a": jnp.asarray(a[None], dtype),  # [1, d_in, r]
            "b": jnp.asarray(b[None], dtype),  # [1, r, d_out]
        }
    label = name if name is not None else os.path.basename(os.path.normpath(folder))
    return LoraStack(layers=tuple(layers), names=(label,), ranks=(rank,))


def _check_finite(folder: str, key: str, value: np.ndarray) -> None:
    """Refuses a factor with NaN or infinite values (it would turn every output it touches
    into NaN mid-search), naming the tensor and the counts."""
    if np.isfinite(value).all():
        return
    nan = int(np.isnan(value).sum())
    inf = int(np.isinf(value).sum())
    raise AdapterError(
        f"PEFT adapter {folder!r}: {ADAPTER_WEIGHTS} tensor {key!r} holds {nan} NaN and {inf} "
        f"infinite value(s) of {value.size}; the adapter is unusable"
    )


def unique_names(folders: Sequence[str | os.PathLike]) -> list[str]:
    """One distinct expert name per folder, deterministically: the folder's base name; where
    base names collide, as many parent folders as tell them apart, joined by '_'
    ('A/expert_0', 'B/expert_0' -> 'A_expert_0', 'B_expert_0'); a folder listed twice gets
    '_2', '_3', ... on its later copies. Names become folder names on export, so two experts
    never share one."""
    parts = [os.path.normpath(os.path.abspath(os.fspath(f))).split(os.sep) for f in folders]
    depth = [1] * len(parts)
    while True:
        names = ["_".join(p[-d:]).strip("_") or "expert" for p, d in zip(parts, depth, strict=True)]
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            groups.setdefault(name, []).append(i)
        grown = False
        for members in groups.values():
            if len({tuple(parts[j]) for j in members}) > 1:  # different folders, one name
                for j in members:
                    if depth[j] < len(parts[j]):
                        depth[j] += 1
                        grown = True
        if not grown:
            break
    out: list[str] = []
    for name in names:
        k, unique = 1, name
        while unique in out or (unique != name and unique in names):
            k += 1
            unique = f"{name}_{k}"
        out.append(unique)
    return out


def load_peft_pool(
    folders: Sequence[str | os.PathLike], config: GemmaConfig, *, dtype=jnp.float32
) -> LoraStack:
    """Several PEFT folders as one stack (expert i = folders[i]); ranks zero-padded. Experts
    are named by `unique_names`."""
    if not folders:
        raise ValueError("load_peft_pool needs at least one adapter folder")
    names = unique_names(folders)
    adapters = [
        load_peft_adapter(f, config, dtype=dtype, name=name)
        for f, name in zip(folders, names, strict=True)
    ]
    return stack_adapters(adapters, dtype=dtype)


# ----------------------------------------------------------------------------- PEFT export


def _export_rank(stack: LoraStack, i: int) -> int:
    """Smallest rank that keeps every stored value of expert i (at least its own rank).

    Components past the expert's own rank are zero right after import, but a swarm step may
    fill them (it mixes in experts of larger rank), so they are kept whenever non-zero.
    """
    used = 0
    for layer in stack.layers:
        for entry in layer.values():
            a = np.asarray(entry["a"][i])  # [d_in, r]
            b = np.asarray(entry["b"][i])  # [r, d_out]
            nonzero = np.flatnonzero(np.any(a != 0, axis=0) | np.any(b != 0, axis=1))
            if nonzero.size:
                used = max(used, int(nonzero[-1]) + 1)
    return max(1, min(stack.rank, max(used, stack.ranks[i] if stack.ranks else 0)))


def export_peft_adapter(
    stack: LoraStack,
    i: int,
    folder: str | os.PathLike,
    *,
    base_model_name_or_path: str | None = None,
    layers_prefix: str = "model.layers",
) -> str:
    """Write expert i as a PEFT LoRA folder that transformers + peft load and run.

    lora_alpha = r, so PEFT's scale is 1 and the stored (scale-folded) factors are written
    as they are. The rank is trimmed to the expert's own rank (exact: padding is zero) unless
    later components hold non-zero values. Every adapted projection name is written for every
    layer (zeros where this stack has none), so PEFT finds no missing keys. `layers_prefix`
    is the decoder-layer path in the torch model ('model.language_model.layers' for Gemma 3
    multimodal checkpoints). Returns the folder.
    """
    from safetensors.numpy import save_file

    i = _check_index(stack, i)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    r = _export_rank(stack, i)
    targets = stack.targets
    tensors = {}
    for li, layer in enumerate(stack.layers):
        for proj in targets:
            entry = layer.get(proj)
            if entry is None:
                ref = next(lay[proj] for lay in stack.layers if proj in lay)
                d_in, d_out = ref["a"].shape[1], ref["b"].shape[2]
                a, b = np.zeros((d_in, r), np.float32), np.zeros((r, d_out), np.float32)
            else:
                a = np.asarray(entry["a"][i, :, :r], np.float32)  # [d_in, r]
                b = np.asarray(entry["b"][i, :r, :], np.float32)  # [r, d_out]
            base = f"base_model.model.{layers_prefix}.{li}.{_PARENT[proj]}.{proj}"
            tensors[f"{base}.lora_A.weight"] = np.ascontiguousarray(a.T)  # [r, d_in]
            tensors[f"{base}.lora_B.weight"] = np.ascontiguousarray(b.T)  # [d_out, r]
    save_file(tensors, os.path.join(folder, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": r,
        "target_modules": list(targets),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    with open(os.path.join(folder, ADAPTER_CONFIG), "w") as f:
        json.dump(adapter_config, f, indent=2)
    return folder
