"""Training data never meets scored data: the generated task's train, dev and test questions
are disjoint by construction, for every seed and pool; a trained pool records (by hash) what
it was trained on; a run refuses, before its model loads, a pool whose records hold its dev or
test questions, unless config.experts.allow_train_overlap; results.json reports the overlap."""

import json
import runpy
import shutil
from pathlib import Path

import pytest

import hs_jax
from hs_jax import config as config_lib
from hs_jax import tasks
from hs_jax.experts.pool import TRAINING_RECORD, read_training_record
from hs_jax.models.gemma_config import tiny_config
from hs_jax.pipeline import door
from hs_jax.runtime.errors import ConfigError
from hs_jax.setup import assembly, identity
from hs_jax.store import workdir as workdir_lib

ROOT = Path(__file__).resolve().parents[1]
# The tiny configs' base model (a Gemma 3): its chat format is the one their prompts use.
_BASE = tiny_config("gemma3")
SEEDS = range(5)


def _set(c, overrides):
    """`c` with dotted fields ('task.gen.seed') set."""
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def _tiny(**overrides):
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.outputs.plots = False
    return _set(c, overrides)


def _items(c, workdir):
    """The run's dev and test items, read as the runner reads them (task.json written into
    `workdir` first)."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    spec, dev, test, _ = assembly.load_items(door.resolve(c), Path(workdir))
    return spec, dev, test


def _trained_questions(c, workdir):
    """Every question the pool of config `c` is trained on: its training slices, made by the
    function the runner uses, for the run's own dev and test items."""
    c = door.resolve(c)
    spec, dev, test = _items(c, workdir)
    _, slices = assembly._training_slices(c, spec, assembly.protocol_for(c, spec, _BASE), dev, test)
    questions = [example.question for piece in slices for example in piece]
    assert all(questions) and len(questions) == c.experts.n * c.experts.train_examples
    return set(questions)


@pytest.mark.parametrize(
    "types, n", [(("connectivity", "cycle", "shortest_path"), 4), (tasks.QUESTION_TYPES, 5)]
)
def test_every_seeds_scored_items_are_disjoint_from_every_seeds_pool(tmp_path, types, n):
    """Before the splits, a pool trained for seed 0 held 7-10 of the 200 test questions of
    seeds 1 and 2. Now no pool of seeds 0..4 holds any dev or test question of seeds 0..4."""
    settings = {
        "model.spec": "tiny", "experts.source": "train", "experts.n": n,
        "experts.train_examples": 24, "task.gen.n_dev": 12, "task.gen.n_test": 200,
        "task.gen.types": types,
    }  # fmt: skip
    trained, scored = {}, {}
    for seed in SEEDS:
        c = _set(config_lib.base_config(), {**settings, "seed": seed})
        door.check(door.resolve(c))
        trained[seed] = _trained_questions(c, tmp_path / f"seed_{seed}")
        _, dev, test = _items(c, tmp_path / f"seed_{seed}")
        scored[seed] = {item.question for item in [*dev, *test]}
        assert len(scored[seed]) == 212
        assert {tasks.split_of(q) for q in trained[seed]} == {"train"}
        assert {tasks.split_of(item.question) for item in dev} == {"dev"}
        assert {tasks.split_of(item.question) for item in test} == {"test"}
    for pool_seed in SEEDS:
        for run_seed in SEEDS:
            assert not trained[pool_seed] & scored[run_seed], (pool_seed, run_seed)


def test_task_gen_seed_gives_every_seed_the_same_items(tmp_path):
    same = [identity.task_source(_tiny(seed=s, **{"task.gen.seed": 7}), tmp_path) for s in (0, 1)]
    assert same[0].data == same[1].data  # byte for byte: one task file sha256, one singles key
    data = json.loads(same[0].data)
    assert data["generation"]["task"]["gen"]["seed"] == 7 and "seed" not in data["generation"]
    assert data["generation"]["splits"] == tasks.SPLIT_RULE
    alone = tasks.generate_dataset(3, 3, seed=7, config=identity.gen_config(_tiny()))
    assert [i["question"] for i in data["test"]] == [i["question"] for i in alone["test"]]
    own = [identity.task_source(_tiny(seed=s), tmp_path) for s in (0, 1)]
    assert own[0].data != own[1].data  # -1 (the default): each seed its own items
    assert json.loads(own[0].data)["generation"]["seed"] == 0
    # Every seed's run scores the same items.
    for s in (0, 1):
        _, _, test = _items(_tiny(seed=s, **{"task.gen.seed": 7}), tmp_path / f"run_{s}")
        assert [i.question for i in test] == [i["question"] for i in alone["test"]]


@pytest.mark.parametrize("value", [-2, 2**63])
def test_task_gen_seed_is_checked_at_the_door(value):
    with pytest.raises(ConfigError) as e:
        door.check(door.resolve(_tiny(**{"task.gen.seed": value})))
    message = str(e.value)
    assert message.startswith(f"config.task.gen.seed={value}: must be -1") and "\n" not in message
    door.check(door.resolve(_tiny(**{"task.gen.seed": 0})))


def test_a_task_json_of_another_gen_seed_or_from_before_the_splits_is_refused(tmp_path):
    c = _tiny(**{"task.gen.seed": 7})
    source = identity.task_source(c, tmp_path)
    assembly.write_task(door.resolve(c), source)
    assert identity.task_source(c, tmp_path).data == source.data  # reused as it is
    with pytest.raises(workdir_lib.WorkdirError, match=r"task\.gen\.seed: saved 7, now 8"):
        identity.task_source(_tiny(**{"task.gen.seed": 8}), tmp_path)
    data = json.loads(source.data)
    del data["generation"]["splits"]
    (tmp_path / "task.json").write_text(json.dumps(data))
    with pytest.raises(workdir_lib.WorkdirError, match="before generated questions were split"):
        identity.task_source(c, tmp_path)


def test_allow_train_overlap_changes_no_results_so_not_the_identity():
    assert "experts.allow_train_overlap" in identity.FREE_FIELDS
    a = identity.static_identity(door.resolve(_tiny()))
    b = identity.static_identity(door.resolve(_tiny(**{"experts.allow_train_overlap": True})))
    assert a == b
    with pytest.raises(TypeError):  # a bool field: ml_collections refuses another type
        _tiny(**{"experts.allow_train_overlap": "yes"})


# ----------------------------------------------------------------------------- records


TRAIN = {
    "experts.source": "train", "experts.train_steps": 1, "experts.train_examples": 4,
    "experts.batch_per_expert": 1, "experts.max_len": 128,
}  # fmt: skip


@pytest.fixture(scope="module")
def trained_pool(tmp_path_factory):
    """A tiny pool fine-tuned by make_pool (seed 0), checking as it is written that each
    folder's training record is in place before its adapter weights."""
    from hs_jax.experts import lora

    workdir = tmp_path_factory.mktemp("pool")
    export = lora.export_peft_adapter
    order = []

    def checked_export(stack, i, folder, **kwargs):
        order.append((Path(folder) / TRAINING_RECORD).exists())
        return export(stack, i, folder, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(lora, "export_peft_adapter", checked_export)
    try:
        folders = hs_jax.make_pool(_tiny(**TRAIN), workdir)
    finally:
        mp.undo()
    assert order == [True] * len(folders)
    return workdir, folders


def test_a_trained_pool_records_the_hashes_of_its_training_questions(trained_pool, tmp_path):
    workdir, folders = trained_pool
    c = door.resolve(_tiny(**TRAIN))
    spec, dev, test = _items(c, tmp_path)
    names, slices = assembly._training_slices(
        c, spec, assembly.protocol_for(c, spec, _BASE), dev, test
    )
    assert [Path(f).name for f in folders] == names
    for folder, piece in zip(folders, slices, strict=True):
        record = read_training_record(folder)
        assert record["format"] == 1 and record["task"] == "nlgraph_gen"
        assert record["split"] == "train" and record["n_examples"] == len(piece)
        assert record["question_sha256"] == sorted({tasks.question_hash(e.question) for e in piece})
        text = (Path(folder) / TRAINING_RECORD).read_text()
        assert "connected" not in text and "Answer" not in text  # hashes only, no prompts


def test_a_pool_trained_for_one_seed_is_clean_for_every_seed(trained_pool, tmp_path):
    """The reported bug: a pool trained for seed 0 reused (experts.pool_dir) by other seeds,
    with more test items."""
    workdir, folders = trained_pool
    for seed in SEEDS:
        c = _tiny(seed=seed, **TRAIN, **{"experts.pool_dir": str(workdir / "experts")})
        c.task.gen.n_test = 200
        _, dev, test = _items(c, tmp_path / f"seed_{seed}")
        overlap = assembly.check_train_overlap(door.resolve(c), tmp_path, dev, test)
        assert overlap == {"dev": 0, "test": 0, "checked": "records", "experts_with_record": 3}


def test_records_are_read_as_they_are_found(trained_pool, tmp_path):
    """An expert without a record is unknown; none with one: 'no record'; a damaged one is an
    error naming its file. A pool about to be trained is checked on its slices."""
    workdir, folders = trained_pool
    pool = tmp_path / "copy"
    for folder in folders:
        shutil.copytree(folder, pool / Path(folder).name)
    c = door.resolve(_tiny(**TRAIN, **{"experts.pool_dir": str(pool)}))
    _, dev, test = _items(c, tmp_path / "run")
    (pool / Path(folders[0]).name / TRAINING_RECORD).unlink()
    partial = assembly.check_train_overlap(c, tmp_path, dev, test)
    assert partial == {"dev": 0, "test": 0, "checked": "records", "experts_with_record": 2}
    for folder in folders[1:]:
        (pool / Path(folder).name / TRAINING_RECORD).unlink()
    none = assembly.check_train_overlap(c, tmp_path, dev, test)
    assert none == {"dev": None, "test": None, "checked": "no record", "experts_with_record": 0}
    (pool / Path(folders[1]).name / TRAINING_RECORD).write_text("{not json")
    with pytest.raises(ValueError, match=TRAINING_RECORD):
        assembly.check_train_overlap(c, tmp_path, dev, test)
    fresh = door.resolve(_tiny(**TRAIN, **{"experts.pool_dir": str(tmp_path / "none")}))
    before = assembly.check_train_overlap(fresh, tmp_path, dev, test)
    assert before == {"dev": 0, "test": 0, "checked": "records", "experts_with_record": 3}


# ----------------------------------------------------------------------------- whole runs


def test_a_tiny_random_run_reports_nothing_trained(tmp_path):
    results = hs_jax.run(_tiny(), tmp_path / "run")
    expected = {"dev": 0, "test": 0, "checked": "not trained", "experts_with_record": 0}
    assert results["train_overlap"] == expected
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["train_overlap"] == expected


def test_a_peft_pool_trained_on_a_test_question_is_refused_unless_allowed(tmp_path, monkeypatch):
    folders = hs_jax.make_pool(_tiny(), tmp_path / "pool")  # random experts as PEFT folders
    c = _tiny(**{"experts.source": "peft", "experts.peft_dirs": str(tmp_path / "pool/experts")})
    _, _, test = _items(c, tmp_path / "probe")
    record = {"format": 1, "task": "nlgraph_gen", "split": "train", "n_examples": 2}
    leaked = [tasks.question_hash(test[1].question), tasks.question_hash("another question")]
    workdir_lib.write_json(
        Path(folders[0]) / TRAINING_RECORD, {**record, "question_sha256": sorted(leaked)}
    )
    clean = [tasks.question_hash("a question"), tasks.question_hash("another question")]
    workdir_lib.write_json(Path(folders[1]) / TRAINING_RECORD, {**record, "question_sha256": clean})

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the overlap was refused")

    with monkeypatch.context() as m:
        m.setattr(assembly, "load_base", no_model)
        with pytest.raises(ConfigError) as e:
            hs_jax.run(c, tmp_path / "refused")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("config.experts.allow_train_overlap=False: 0 dev and 1 test items")
    assert folders[0] in message and folders[1] not in message
    assert not (tmp_path / "refused" / "run.json").exists()

    c.experts.allow_train_overlap = True
    results = hs_jax.run(c, tmp_path / "allowed")
    assert results["train_overlap"] == {
        "dev": 0, "test": 1, "checked": "records", "experts_with_record": 2,
    }  # fmt: skip
