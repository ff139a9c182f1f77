"""Checks of a whole config before anything is loaded: every bad field named in one error.

`find_problems(c)` lists them (one `config.<field>=<value>: <why>` line each); `check_config`
raises them as one ConfigError. The method's own checks (is it registered, does it apply) are
added by the run's door (`hs_jax.pipeline.door.check`), which knows the method registry.
"""

from __future__ import annotations

import math
import os
import re

import ml_collections

from hs_jax.config.model_source import tiny_family_of
from hs_jax.config.pool_source import model_folders, peft_folders
from hs_jax.config.schema import SFT_NAMES, sft_fields
from hs_jax.config.task_choice import GENERATED
from hs_jax.experts.lora import ADAPTER_CONFIG, PROJ_NAMES
from hs_jax.experts.pool import SFTConfig
from hs_jax.models.gguf_io import PYPI_MODEL_NAME
from hs_jax.runtime.errors import ConfigError
from hs_jax.swarm import pso, search
from hs_jax.tasks import TASK_TYPES, GraphGenConfig
from hs_jax.tasks.protocol import PROTOCOLS

_HOST_PORT = re.compile(r"[^\s:\[\]]+:\d{1,5}|\[[0-9A-Fa-f:.]+\]:\d{1,5}")


def _problems_of(
    cls, values: dict, section: str, defaults: dict | None = None, names: dict | None = None
) -> list[str]:
    """What `cls(**values)` would refuse, as `config.<section>: ...` lines, one per bad field.

    The dataclass stays the one definition of valid values. It stops at its first problem, so
    every field is first tried alone on top of valid `defaults`; a rule spanning several fields
    (which no single field breaks) is reported once, from the whole set. With `names` (a
    field's name in the config where it differs from the dataclass's) a bad field's line is
    `config.<section>.<its config name>=<value>: ...`, as for the fields checked by hand.
    """
    defaults = defaults or {}
    problems = []
    for name, value in values.items():
        try:
            cls(**{**defaults, name: value})
        except (TypeError, ValueError) as e:
            if names is not None:
                problems.append(f"config.{section}.{names.get(name, name)}={value!r}: {e}")
                continue
            shown = str(e).endswith((f"got {value!r}", f"got {value}"))
            problems.append(f"config.{section}: {e}" + ("" if shown else f" ({name}={value!r})"))
    if not problems:
        try:
            cls(**{**defaults, **values})
        except (TypeError, ValueError) as e:
            problems.append(f"config.{section}: {e}")
    return problems


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_int_list(v) -> bool:
    """A non-empty tuple or list of ints >= 1 (a shape bucket list)."""
    return isinstance(v, tuple | list) and bool(v) and all(_is_int(b) and b >= 1 for b in v)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _has_adapters(peft_dirs: str) -> bool:
    try:
        return bool(peft_folders(peft_dirs))
    except FileNotFoundError:
        return False


def baselines_problems(b: ml_collections.ConfigDict) -> list[str]:
    """`config.baselines.<field>=<value>: <why>` for each bad self-consistency field."""
    problems = []

    def bad(field, why):
        problems.append(f"config.baselines.{field}={b[field]!r}: {why}")

    for field, low in (("sc_samples", 0), ("sc_max_samples", 1)):
        if not _is_int(b[field]) or b[field] < low:
            bad(field, f"must be an int >= {low}")
    if not _is_number(b.sc_tokens) or b.sc_tokens < 0:
        bad("sc_tokens", "must be a finite number >= 0 (generated tokens per item; 0 = none)")
    if not _is_number(b.sc_temperature) or b.sc_temperature <= 0:
        bad("sc_temperature", "must be a finite number > 0 (the samples must differ)")
    if not _is_number(b.sc_top_p) or not 0 < b.sc_top_p <= 1:
        bad("sc_top_p", "must be a number in (0, 1]")
    return problems


def check_config(c: ml_collections.ConfigDict, more: list[str] = ()) -> None:
    """Raises ConfigError with `find_problems(c)` and `more` (one line each) when there are any."""
    found = find_problems(c) + list(more)
    if len(found) == 1:
        raise ConfigError(found[0])
    if found:
        lines = "\n".join(f"  {p}" for p in found)
        raise ConfigError(f"{len(found)} bad config values:\n{lines}")


def find_problems(c: ml_collections.ConfigDict) -> list[str]:
    """Every bad field of `c`, one line each, found before anything is loaded.

    Checks the values that would otherwise break deep inside a run (after the model has loaded
    or the pool has trained) or quietly do something else; the door's `resolve` has filled in
    the protocol's fields. One `config.<field>=<value>: <why>` line per problem (the search and
    PSO sections: `config.search: <why>`, the message of the dataclass that checks them; the
    fine-tuning fields of experts.source='train' are checked by experts.pool.SFTConfig, the
    config `schema.sft_config` builds), so a config is fixed in one go.
    """

    problems: list[str] = []

    def bad(field, value, why):
        problems.append(f"config.{field}={value!r}: {why}")

    def at_least(field, value, low):
        if not _is_int(value) or value < low:
            bad(field, value, f"must be an int >= {low}")

    if not _is_int(c.seed) or not 0 <= c.seed < 2**63:
        bad("seed", c.seed, "must be an int in [0, 2**63)")
    if c.protocol not in PROTOCOLS:
        bad("protocol", c.protocol, f"expected one of {PROTOCOLS}")
    at_least("budget", c.budget, 0)
    problems += baselines_problems(c.baselines)
    if c.seeds:
        parts = str(c.seeds).split(",")
        if not all(p.strip().isdigit() for p in parts):
            bad("seeds", c.seeds, "expected a comma list of ints >= 0, e.g. '0,1,2'")

    if not c.model.spec:
        bad(
            "model.spec",
            c.model.spec,
            f"give a GGUF file, an HF directory, 'tiny' or the PyPI model name {PYPI_MODEL_NAME!r}",
        )
    else:
        try:
            tiny_family_of(str(c.model.spec))
        except ValueError as e:
            bad("model.spec", c.model.spec, str(e).split(" in ")[0])
    if c.model.param_dtype not in ("", "float32", "bfloat16"):
        bad("model.param_dtype", c.model.param_dtype, "expected '', 'float32' or 'bfloat16'")

    generated = not c.task.path and c.task.name == GENERATED
    if not c.task.path and not generated:
        bad(
            "task.path",
            c.task.path,
            f"task {c.task.name!r} needs a data file (only 'nlgraph_gen' is generated)",
        )
    elif c.task.path and not os.path.isfile(c.task.path):
        why = "is not a file" if os.path.exists(c.task.path) else "no such task file"
        bad("task.path", c.task.path, why)
    if c.task.type not in ("", *TASK_TYPES):
        bad("task.type", c.task.type, f"expected '' or one of {TASK_TYPES}")
    for field in ("dev_limit", "test_limit", "max_new_tokens"):
        at_least(f"task.{field}", c.task[field], 0)
    if c.task.scoring not in ("", *PROTOCOLS):
        bad("task.scoring", c.task.scoring, f"expected one of {PROTOCOLS}")
    if generated or c.experts.source == "train":  # the generator's knobs are read
        for field in ("n_dev", "n_test"):
            at_least(f"task.gen.{field}", c.task.gen[field], 1)
        if not _is_int(c.task.gen.seed) or not -1 <= c.task.gen.seed < 2**63:
            why = "must be -1 (config.seed) or an int in [0, 2**63)"
            bad("task.gen.seed", c.task.gen.seed, why)
        node_range, types = c.task.gen.node_range, c.task.gen.types
        if not (
            isinstance(node_range, tuple | list)
            and len(node_range) == 2
            and all(_is_int(v) for v in node_range)
        ):
            bad("task.gen.node_range", node_range, "must be (lo, hi): two ints, 4 <= lo <= hi")
        else:
            try:
                GraphGenConfig(node_range=tuple(node_range))
            except ValueError as e:
                bad("task.gen.node_range", node_range, str(e))
        try:
            GraphGenConfig(types=tuple(types))
        except (TypeError, ValueError) as e:
            bad("task.gen.types", types, str(e))

    source = c.experts.source
    if source not in ("train", "peft", "random", "full"):
        bad("experts.source", source, "expected 'train', 'peft', 'random' or 'full'")
    if source == "full":
        listed = model_folders(c.experts.model_dirs)
        missing = [d for d in listed if not os.path.isdir(d)]
        if not listed:
            bad("experts.model_dirs", c.experts.model_dirs, "experts.source='full' needs folders")
        elif missing:
            bad("experts.model_dirs", c.experts.model_dirs, f"no such folder(s): {missing}")
        elif no_config := [d for d in listed if not os.path.isfile(os.path.join(d, "config.json"))]:
            bad("experts.model_dirs", c.experts.model_dirs, f"no config.json in {no_config}")
    if source == "peft":
        if not c.experts.peft_dirs:
            bad("experts.peft_dirs", c.experts.peft_dirs, "experts.source='peft' needs folders")
        else:
            listed = [d for d in c.experts.peft_dirs.split(",") if d]
            missing = [d for d in listed if not os.path.isdir(d)]
            if missing:
                bad("experts.peft_dirs", c.experts.peft_dirs, f"no such folder(s): {missing}")
            elif not _has_adapters(c.experts.peft_dirs):
                bad(
                    "experts.peft_dirs",
                    c.experts.peft_dirs,
                    f"no {ADAPTER_CONFIG} in the folder or its sub-folders",
                )
    if source in ("train", "random"):
        at_least("experts.n", c.experts.n, 1)
    if source == "random":  # 'train' checks it with the fine-tuning config below
        at_least("experts.rank", c.experts.rank, 1)
    targets = tuple(c.experts.targets)
    unknown = [t for t in targets if t not in PROJ_NAMES]
    if unknown or not targets:
        bad(
            "experts.targets",
            c.experts.targets,
            f"unknown projections {unknown}" if unknown else f"needs at least one of {PROJ_NAMES}",
        )
    if source == "train":
        if c.task.name != GENERATED:
            bad(
                "experts.source",
                source,
                "'train' builds pools only for the generated task "
                "(task.name='nlgraph_gen'); for other tasks use 'peft' and experts.peft_dirs",
            )
        at_least("experts.train_examples", c.experts.train_examples, 1)
        # The fine-tuning config the pool will be trained with (sft_config).
        problems += _problems_of(SFTConfig, sft_fields(c), "experts", names=SFT_NAMES)
    if not isinstance(c.experts.allow_train_overlap, bool):
        bad("experts.allow_train_overlap", c.experts.allow_train_overlap, "must be True or False")
    if source == "random" and (
        not _is_number(c.experts.random_scale) or c.experts.random_scale < 0
    ):
        bad("experts.random_scale", c.experts.random_scale, "must be a finite number >= 0")

    s = c.search.to_dict()
    pso_sections = ("roles_pso", "weights_pso")
    for name in pso_sections:
        problems += _problems_of(pso.PSOConfig, s[name], f"search.{name}")
    top = {k: v for k, v in s.items() if k not in pso_sections}
    # Fields SearchConfig takes without checking them.
    for field in ("checkpoint_every", "max_to_keep"):
        at_least(f"search.{field}", top[field], 1)
    for field in ("l1_lambda", "adjacency_scale"):
        value = top[field]
        if not _is_number(value) or value < 0 or (field == "adjacency_scale" and value == 0):
            bad(
                f"search.{field}",
                value,
                "must be a finite number " + (">= 0" if field == "l1_lambda" else "> 0"),
            )
    if top["prune_tau"] is not None and not _is_number(top["prune_tau"]):
        bad("search.prune_tau", top["prune_tau"], "must be None or a finite number")
    # decode='authors' needs top_p 0 (a rule across two fields): each is tried alone with the
    # other's valid partner, and the pair once, together.
    partner = {"top_p": 0.0} if top.get("decode") == "authors" else None
    problems += _problems_of(search.SearchConfig, top, "search", defaults=partner)

    at_least("engine.max_batch", c.engine.max_batch, 1)
    at_least("engine.max_prompt_len", c.engine.max_prompt_len, 1)
    for name in ("batch_buckets", "length_buckets"):
        buckets = c.engine[name]
        if not _is_int_list(buckets):
            bad(f"engine.{name}", buckets, "must be a non-empty list of ints >= 1")
        elif name == "batch_buckets" and _is_int(c.engine.max_batch):
            if max(buckets) < c.engine.max_batch:
                bad("engine.batch_buckets", buckets, "the largest must be >= max_batch")
    if not _is_int(c.mesh.data) or not (c.mesh.data == -1 or c.mesh.data >= 1):
        bad("mesh.data", c.mesh.data, "must be -1 (all devices) or an int >= 1")
    at_least("mesh.model", c.mesh.model, 1)
    at_least("mesh.expert", c.mesh.expert, 1)
    # A pool that does not divide mesh.expert is padded with inert particles (swarm.pso).

    if not isinstance(c.distributed, bool):
        bad("distributed", c.distributed, "must be True or False")
    if not isinstance(c.coordinator_address, str) or (
        c.coordinator_address and not _HOST_PORT.fullmatch(c.coordinator_address)
    ):
        bad("coordinator_address", c.coordinator_address, "must be '' or 'host:port'")
    at_least("num_processes", c.num_processes, 0)
    if not _is_int(c.process_id) or c.process_id < -1:
        bad("process_id", c.process_id, "must be -1 (detected) or an int >= 0")
    elif _is_int(c.num_processes) and c.num_processes and c.process_id >= c.num_processes:
        bad("process_id", c.process_id, f"must be < num_processes={c.num_processes}")

    return problems
