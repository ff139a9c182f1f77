"""One source of defaults: the config's search, PSO and fine-tuning sections hold exactly the
defaults of the dataclasses that check them (search.SearchConfig, pso.PSOConfig,
experts.SFTConfig), apart from the protocol-dependent fields left open for `resolve`; and the
fine-tuning config is built and checked at the door, before anything is loaded or written."""

import dataclasses
import runpy
from pathlib import Path

import pytest

from hs_jax import config as config_lib
from hs_jax.config import schema
from hs_jax.engine import call_plan
from hs_jax.experts.pool import SFTConfig
from hs_jax.pipeline import door
from hs_jax.runtime import sharding
from hs_jax.runtime.errors import ConfigError
from hs_jax.setup import assembly
from hs_jax.swarm import pso, search

ROOT = Path(__file__).resolve().parents[1]
# Left open (None or '') in the config; `resolve` fills in the protocol's value.
OPEN_SEARCH = {"top_p", "schedule", "decode"}
OPEN_PSO = {"init_velocity", "restart_rule", "restart_patience", "patience"}


def _tiny():
    return runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()


def test_search_section_holds_search_config_defaults_field_by_field():
    section = config_lib.base_config().search
    for f in dataclasses.fields(search.SearchConfig):
        if f.name in ("seed", "roles_pso", "weights_pso"):
            continue  # seed: config.seed; the PSO sections below
        if f.name in OPEN_SEARCH:
            assert section[f.name] in (None, ""), f.name
        else:
            assert section[f.name] == f.default, f.name
    names = {f.name for f in dataclasses.fields(search.SearchConfig)} - {"seed"}
    assert set(section.keys()) == names  # no field the dataclass does not know


@pytest.mark.parametrize("swarm", ["roles_pso", "weights_pso"])
def test_pso_sections_hold_pso_config_defaults_field_by_field(swarm):
    section = config_lib.base_config().search[swarm]
    for f in dataclasses.fields(pso.PSOConfig):
        if f.name in OPEN_PSO:
            assert section[f.name] in (None, ""), f.name
        else:
            assert section[f.name] == f.default, f.name
    assert set(section.keys()) == {f.name for f in dataclasses.fields(pso.PSOConfig)}


def test_experts_section_holds_sft_config_defaults_field_by_field():
    section = config_lib.base_config().experts
    for f in dataclasses.fields(SFTConfig):
        if f.name != "seed":  # config.seed
            assert section[{"steps": "train_steps"}.get(f.name, f.name)] == f.default, f.name


def test_the_resolved_default_config_builds_the_dataclass_defaults():
    """Under the default protocol every open field resolves to the dataclass's default."""
    c = door.resolve(config_lib.base_config())
    assert schema.search_config(c) == search.SearchConfig(seed=c.seed)
    assert schema.sft_config(c) == SFTConfig(seed=c.seed)


def test_bad_fine_tuning_fields_are_named_at_the_door():
    c = _tiny()
    c.experts.source = "train"
    c.experts.learning_rate = -1.0
    c.experts.train_steps = 0
    c.experts.last_layers = -2
    with pytest.raises(ConfigError) as info:
        door.check(door.resolve(c))
    message = str(info.value)
    assert message.startswith("3 bad config values:")
    assert "config.experts.learning_rate=-1.0: SFTConfig.learning_rate must be a finite" in message
    assert "config.experts.train_steps=0: SFTConfig.steps must be" in message  # config's name
    assert "config.experts.last_layers=-2: SFTConfig.last_layers must be an int >= 0" in message
    c.experts.learning_rate, c.experts.train_steps, c.experts.last_layers = 2e-3, 40, 0
    door.check(door.resolve(c))


def test_bad_learning_rate_fails_before_anything_is_written(tmp_path):
    import hs_jax

    c = _tiny()
    c.experts.source = "train"
    c.experts.learning_rate = -1.0
    with pytest.raises(ConfigError, match=r"config\.experts\.learning_rate=-1\.0: "):
        hs_jax.run(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_engine_buckets_come_from_the_config_and_default_to_the_planners():
    c = door.resolve(_tiny())
    assert config_lib.base_config().engine.length_buckets == call_plan.DEFAULT_LENGTH_BUCKETS
    c.engine.length_buckets = (48, 16)
    c.engine.batch_buckets = (16, 4)
    engine = assembly.make_engine(c, assembly.load_base(c), None, sharding.make_mesh())
    assert engine.buckets.length == (16, 48) and engine.buckets.batch == (4, 16)
