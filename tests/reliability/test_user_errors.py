"""Every user error is one line naming the field or file, before anything is loaded.

The launchers run as subprocesses: a bad config value, flag, task file, model path or generate
flag exits 1 with `<launcher>: <message>` on stderr, no traceback (unless --verbose), and before
the task or the model loads. In-process, fuzzed inputs go through the checks the launchers rely
on: config values (`check_config`), task files (`load_task`), PEFT folders
(`load_peft_adapter`) and adjacency matrices (`g_decode`); each either works or fails with the
documented error naming what is wrong, never with another exception.
"""

import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hs_jax.experts import lora
from hs_jax.models.gguf_io import PYPI_MODEL_NAME
from hs_jax.pipeline.door import check as check_config
from hs_jax.pipeline.door import resolve
from hs_jax.swarm import graph
from hs_jax.tasks import TASK_TYPES, TaskDataError, get_spec, load_task

ROOT = Path(__file__).resolve().parents[2]
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Generous: each failing launcher takes ~2 s alone; loading the 270M model alone takes longer.
FAST_S = 15.0
# hs_jax.run logs this after reading the task, just before it loads the model.
TASK_LOADED = " test items from "


def _launch(*argv):
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    return proc, time.perf_counter() - start


def _assert_one_line_error(proc, wall, launcher, *expected):
    """Exit 1, `<launcher>: ...` naming everything in `expected`, no traceback, fast."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out, out
    assert TASK_LOADED not in out, out
    lines = proc.stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(f"{launcher}: "))
    # The error's own lines: its first line, then any indented continuation lines.
    block = [lines[first]]
    block += [line for line in lines[first + 1 :] if line.startswith("  ")]
    message = "\n".join(block)
    for text in expected:
        assert text in message, out
    assert wall < FAST_S, f"{wall:.1f} s: {out}"
    return message


def _non_utf8_task(tmp_path):
    path = tmp_path / "latin1.json"
    text = json.dumps({"dev": [{"question": "café?", "answer": "Yes"}]}, ensure_ascii=False)
    path.write_bytes(text.encode("latin-1"))
    return path


MAIN_CASES = {
    "negative seed": (["--config.seed=-1"], ["config.seed=-1"]),
    "checkpoint_every 0": (
        ["--config.search.checkpoint_every=0"],
        ["config.search.checkpoint_every=0"],
    ),
    "rank 0": (["--config.experts.rank=0"], ["config.experts.rank=0"]),
    "all problems in one error": (
        ["--config.seed=-1", "--config.search.max_to_keep=0", "--config.search.n_graphs=0"],
        ["3 bad config values", "config.seed=-1", "config.search.max_to_keep=0", "n_graphs=0"],
    ),
    "unknown field": (
        ["--config.search.n_graph=2"],
        ["--config.search.n_graph", "no such config field", '"n_graphs"'],
    ),
    "missing config file": (["--config=configs/nothere.py"], ["configs/nothere.py"]),
    "missing peft folder": (
        ["--config.experts.source=peft", "--config.experts.peft_dirs=/no/such/pool"],
        ["config.experts.peft_dirs", "/no/such/pool"],
    ),
    "non-UTF-8 task file": (None, ["latin1.json", "not UTF-8 text (byte 0xe9 at offset"]),
}


@pytest.mark.parametrize("case", sorted(MAIN_CASES))
def test_main_reports_a_user_error_in_one_line(case, tmp_path):
    args, expected = MAIN_CASES[case]
    if args is None:  # the task file case
        args = [f"--config.task.path={_non_utf8_task(tmp_path)}", "--config.task.type=exact_match"]
    proc, wall = _launch(
        "launch.main", "--config=configs/tiny.py", f"--workdir={tmp_path / 'w'}", *args
    )
    _assert_one_line_error(proc, wall, "launch.main", *expected)


def test_make_experts_reports_a_user_error_in_one_line(tmp_path):
    proc, wall = _launch(
        "launch.make_experts",
        "--config=configs/tiny.py",
        f"--workdir={tmp_path}",
        "--config.experts.n=0",
        "--config.experts.learning_rate=-1.0",
        "--config.experts.source=train",
    )
    _assert_one_line_error(
        proc, wall, "launch.make_experts", "config.experts.n=0", "config.experts.learning_rate"
    )


GENERATE_CASES = {
    "no prompt": ([], ["--prompt"]),
    "empty prompt": (["--prompt=hi", "--prompt="], ["--prompt number 2 of 2 is empty"]),
    "max_new_tokens 0": (["--prompt=hi", "--max_new_tokens=0"], ["--max_new_tokens=0"]),
    "expert_id count": (
        ["--prompt=a", "--prompt=b", "--expert_id=-1"],
        ["1 --expert_id values for 2 prompts"],
    ),
    "missing model": (["--prompt=hi", "--model=/no/such/model.gguf"], ["/no/such/model.gguf"]),
    "missing expert folder": (["--prompt=hi", "--experts=/no/such/expert"], ["/no/such/expert"]),
}


@pytest.mark.parametrize("case", sorted(GENERATE_CASES))
def test_generate_reports_a_user_error_before_the_model_loads(case):
    args, expected = GENERATE_CASES[case]
    proc, wall = _launch("launch.generate", *args)
    _assert_one_line_error(proc, wall, "launch.generate", *expected)


def test_verbose_shows_the_traceback(tmp_path):
    proc, _ = _launch(
        "launch.main",
        "--config=configs/tiny.py",
        f"--workdir={tmp_path}",
        "--config.seed=-1",
        "--verbose",
    )
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "config.seed=-1" in proc.stderr


def test_a_badly_typed_flag_value_is_absls_short_usage_error(tmp_path):
    """absl itself refuses a value of the wrong type: two lines, naming the flag."""
    proc, _ = _launch(
        "launch.main", "--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.seed=abc"
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2
    assert "--config.seed=abc" in proc.stderr


def test_a_bug_keeps_its_traceback_and_user_errors_are_recognised():
    """An unexpected exception is not dressed up as a user error."""
    script = (
        "from hs_jax.runtime.errors import run_main\n"
        "def main(argv):\n"
        "    raise RuntimeError('a bug')\n"
        "run_main(main)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "RuntimeError: a bug" in proc.stderr

    from hs_jax.runtime.errors import UserError, format_error, is_user_error

    assert is_user_error(TaskDataError("f.json: bad")) and is_user_error(FileNotFoundError("x"))
    assert is_user_error(ValueError("config.seed=-1: bad"))
    assert not is_user_error(ValueError("operands could not be broadcast"))
    assert not is_user_error(KeyError("x")) and not is_user_error(RuntimeError("x"))
    text = format_error("launch.x", UserError("2 problems:\n  config.a=1: no\n  config.b=2: no"))
    assert text == "launch.x: 2 problems:\n  config.a=1: no\n  config.b=2: no"


# ----------------------------------------------------------------------------- config fuzz


def _tiny():
    import runpy

    return runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()


def _ints(low=None, high=None):
    return st.integers(min_value=low, max_value=high)


def _floats(min_value=None, max_value=None):
    return st.floats(min_value, max_value, allow_nan=False, allow_infinity=False)


_NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
_BELOW_ONE = _ints(high=0)
_TRAIN = {"experts.source": "train"}
_BUCKETS = st.lists(_ints(1, 4096), min_size=1, max_size=6).map(tuple)
_BAD_BUCKETS = (
    st.just(())
    | st.tuples(_ints(1, 64), _BELOW_ONE)
    | st.tuples(_ints(1, 64), st.sampled_from([1.5, "8", None, True]))
)
# field -> (bad values, good values or None, fields the check needs set first).
CONFIG_FIELDS = {
    "seed": (_ints(high=-1) | _ints(low=2**63), _ints(0, 2**63 - 1), {}),
    "search.checkpoint_every": (_BELOW_ONE, _ints(1, 10**6), {}),
    "search.max_to_keep": (_BELOW_ONE, _ints(1, 10**6), {}),
    "search.n_graphs": (_BELOW_ONE, _ints(1, 64), {}),
    "search.n_assignments": (_BELOW_ONE, _ints(1, 64), {}),
    "search.max_iterations": (_BELOW_ONE, _ints(1, 1000), {}),
    "search.patience": (_BELOW_ONE, _ints(1, 1000), {}),
    "search.top_p": (
        _floats(max_value=-1e-9) | _floats(min_value=1 + 1e-9) | _NON_FINITE,
        _floats(min_value=0, max_value=1),
        {},
    ),
    "search.dropout_role": (
        _floats(max_value=-1e-9) | _floats(min_value=1) | _NON_FINITE,
        _floats(min_value=0, max_value=0.99),
        {},
    ),
    "search.l1_lambda": (_floats(max_value=-1e-9) | _NON_FINITE, _floats(0, 1e6), {}),
    "search.adjacency_scale": (_floats(max_value=0) | _NON_FINITE, _floats(1e-6, 1e6), {}),
    "search.roles_pso.step_decay": (
        _floats(max_value=0) | _floats(min_value=1 + 1e-9),
        _floats(min_value=1e-6, max_value=1),
        {},
    ),
    "search.weights_pso.phi_v": (_floats(max_value=-1e-9), _floats(0, 10), {}),
    "experts.n": (_BELOW_ONE, _ints(1, 64), {}),
    "experts.rank": (_BELOW_ONE, _ints(1, 512), {}),
    "experts.train_steps": (_BELOW_ONE, _ints(1, 10**5), _TRAIN),
    "experts.batch_per_expert": (_BELOW_ONE, _ints(1, 512), _TRAIN),
    "experts.max_len": (_BELOW_ONE, _ints(1, 10**5), _TRAIN),
    "experts.learning_rate": (_floats(max_value=0) | _NON_FINITE, _floats(1e-9, 10), _TRAIN),
    "experts.peft_dirs": (st.just("/no/such/folder"), None, {"experts.source": "peft"}),
    "task.gen.n_dev": (_BELOW_ONE, _ints(1, 1000), {}),
    "task.gen.n_test": (_BELOW_ONE, _ints(1, 1000), {}),
    "task.gen.node_range": (
        st.tuples(_ints(-10, 3), _ints(-10, 40)) | st.tuples(_ints(5, 40), _ints(4, 4)),
        st.tuples(_ints(4, 12), _ints(0, 8)).map(lambda t: (t[0], t[0] + t[1])),
        {},
    ),
    "task.dev_limit": (_ints(high=-1), _ints(0, 10**6), {}),
    "task.type": (
        st.text(min_size=1).filter(lambda s: s not in TASK_TYPES),
        st.sampled_from(["", "exact_match"]),
        {},
    ),
    "task.scoring": (
        st.text(min_size=1).filter(lambda s: s not in ("hs_jax", "authors")),
        st.sampled_from(["", "hs_jax", "authors"]),
        {},
    ),
    "engine.max_batch": (_BELOW_ONE, _ints(1, 16), {}),
    "engine.max_prompt_len": (_BELOW_ONE, _ints(1, 10**6), {}),
    "engine.length_buckets": (_BAD_BUCKETS, _BUCKETS, {}),
    "engine.batch_buckets": (
        _BAD_BUCKETS | _BUCKETS.map(lambda b: tuple(min(x, 15) for x in b)),  # below max_batch
        _BUCKETS.map(lambda b: (*b, 16)),
        {"engine.max_batch": 16},
    ),
    "model.spec": (st.just(""), st.sampled_from(["tiny", PYPI_MODEL_NAME]), {}),
    "mesh.data": (_ints(high=0).filter(lambda v: v != -1), _ints(1, 8) | st.just(-1), {}),
    "mesh.model": (_BELOW_ONE, _ints(1, 8), {}),
    "mesh.expert": (_BELOW_ONE, st.sampled_from([1, 2, 3]), {}),  # 2: the pool of 3 padded
    "num_processes": (_ints(high=-1), _ints(0, 4096), {}),
    "process_id": (_ints(high=-2), st.just(-1) | _ints(0, 10**6), {}),
    "coordinator_address": (
        st.sampled_from(["localhost", "host:port", ":8476", "a b:8476", "h:123456"]),
        st.sampled_from(["", "localhost:8476", "10.0.0.2:8476", "[::1]:8476"]),
        {},
    ),
    "protocol": (st.text().filter(lambda s: s not in ("hs_jax", "authors")), None, {}),
}


def _config_with(field, value, setup):
    c = _tiny()
    for path, v in {**setup, field: value}.items():
        *parents, leaf = path.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


def _names(message: str, field: str) -> bool:
    """`config.<field>=` or, for sections checked by a dataclass, `config.<section>: ...<leaf>`."""
    section, _, leaf = field.rpartition(".")
    return f"config.{field}=" in message or (f"config.{section}: " in message and leaf in message)


@FUZZ
@given(data=st.data(), field=st.sampled_from(sorted(CONFIG_FIELDS)))
def test_fuzzed_bad_config_value_is_named(data, field):
    bad, _, setup = CONFIG_FIELDS[field]
    value = data.draw(bad, label=field)
    with pytest.raises(ValueError) as info:
        check_config(resolve(_config_with(field, value, setup)))
    assert _names(str(info.value), field), str(info.value)


@FUZZ
@given(
    data=st.data(),
    field=st.sampled_from(sorted(f for f, v in CONFIG_FIELDS.items() if v[1] is not None)),
)
def test_fuzzed_good_config_value_passes(data, field):
    _, good, setup = CONFIG_FIELDS[field]
    check_config(resolve(_config_with(field, data.draw(good, label=field), setup)))


def test_every_bad_field_is_named_in_one_error():
    c = _tiny()
    c.seed = -3
    c.search.checkpoint_every = 0
    c.experts.rank = 0
    c.engine.max_prompt_len = 0
    c.search.dropout_weight = 1.5
    with pytest.raises(ValueError) as info:
        check_config(resolve(c))
    message = str(info.value)
    assert message.startswith("5 bad config values:")
    for field in ("seed", "search.checkpoint_every", "experts.rank", "engine.max_prompt_len"):
        assert f"config.{field}=" in message
    assert "dropout_weight must be in [0, 1), got 1.5" in message


# ----------------------------------------------------------------------------- task files fuzz

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)
_LETTER = st.sampled_from(["A", "B", "C", "", "AB", "a", "1"])
_ITEM = st.fixed_dictionaries(
    {},
    optional={
        "question": st.text(max_size=12) | _JSON,
        "answer": _LETTER | st.text(max_size=4) | _JSON,
        "choices": st.dictionaries(_LETTER, st.text(max_size=4) | _JSON, max_size=4) | _JSON,
        "context_chunks": st.lists(st.text(max_size=4) | _JSON, max_size=3) | _JSON,
        "id": st.integers() | st.text(max_size=4) | _JSON,
        "domain": st.text(max_size=4) | _JSON,
        "type": st.text(max_size=4) | _JSON,
    },
)
# Mostly well-formed items, so that loads succeed too and a single bad field is found.
_GOOD_ITEM = st.fixed_dictionaries(
    {
        "question": st.text(min_size=1, max_size=12),
        "answer": st.sampled_from(["A", "B"]),
        "choices": st.just({"A": "one", "B": "two"}),
    },
    optional={"id": st.integers() | st.text(max_size=4), "domain": st.text(max_size=4)},
)
_SPLIT = st.lists(_GOOD_ITEM | _ITEM, max_size=4) | _JSON
_GOOD_SPLIT = st.lists(_GOOD_ITEM, min_size=1, max_size=3)
_TASK = (
    st.fixed_dictionaries(
        {"dev": _GOOD_SPLIT | _SPLIT, "test": _GOOD_SPLIT | _SPLIT},
        optional={"dataset": st.text(max_size=8) | _JSON, "icl_prompt": st.text(max_size=8)},
    )
    | st.fixed_dictionaries(
        {},
        optional={
            "dataset": st.text(max_size=8) | _JSON,
            "dev": _SPLIT,
            "test": _SPLIT,
            "icl_prompt": st.text(max_size=8) | _JSON,
        },
    )
    | _JSON
)


def _garble(text: str, how: str, where: int) -> bytes:
    raw = text.encode("utf-8")
    if how == "non-utf8":
        at = where % (len(raw) + 1)
        return raw[:at] + b"\xff\xfe" + raw[at:]
    if how == "deep":
        return b"[" * 200_000 + b"]" * 200_000
    if how == "truncated":
        return raw[: where % max(len(raw), 1)]
    if how == "huge int":
        return b'{"dev": [{"question": "q", "answer": "a", "id": ' + b"9" * 5000 + b"}]}"
    return raw


@FUZZ
@given(
    task=_TASK,
    how=st.sampled_from(["plain"] * 6 + ["non-utf8", "deep", "truncated", "huge int"]),
    where=st.integers(0, 10**6),
    spec=st.sampled_from(["mmlu", "gsm8k", "abstain", "qasper"]),
    split=st.sampled_from(["dev", "test"]),
)
def test_fuzzed_task_file_loads_or_names_the_file(task, how, where, spec, split):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "task.json"
        path.write_bytes(_garble(json.dumps(task), how, where))
        try:
            items = load_task(path, split, spec=spec)
        except TaskDataError as e:
            assert str(e).startswith(str(path)), e
            return
    assert items
    for item in items:
        assert isinstance(item.question, str) and item.question.strip()
        assert isinstance(item.answer, str) and item.answer.strip()
        if get_spec(spec).has_choices:
            assert item.answer in item.choices and len(item.choices) >= 2


def test_task_file_errors_name_the_file(tmp_path):
    latin1 = '{"dev": [{"question": "café", "answer": "x"}]}'
    cases = {
        "latin1.json": (
            latin1.encode("latin-1"),
            f"not UTF-8 text (byte 0xe9 at offset {latin1.index('é')})",
        ),
        "deep.json": (b"[" * 100_000, "nested too deeply"),
        "bignum.json": (b'{"dev": ' + b"1" * 5000 + b"}", "cannot parse as JSON"),
    }
    for name, (raw, why) in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(TaskDataError) as info:
            load_task(tmp_path / name, "dev", spec="gsm8k")
        assert str(info.value).startswith(f"{tmp_path / name}: {why}"), info.value


# ----------------------------------------------------------------------------- PEFT folders fuzz


_REGEX = st.sampled_from(["(", "[q", "*", "q_proj(", "(?P<x", "a{2,1}", "q_proj", ".*"])
_BAD_CONFIG_VALUES = {
    "r": st.sampled_from([0, -1, "2", None, 1.5, True, [2]]),
    "lora_alpha": st.sampled_from(["x", None, math.nan, math.inf, [1], True]),
    "rank_pattern": st.dictionaries(_REGEX | st.text(max_size=5), _JSON, min_size=1, max_size=2)
    | _JSON,
    "alpha_pattern": st.dictionaries(_REGEX | st.text(max_size=5), _JSON, min_size=1, max_size=2)
    | _JSON,
    "target_modules": st.lists(st.text(max_size=6) | _JSON, max_size=3) | _JSON,
    "peft_type": _JSON | st.sampled_from(["IA3", "lora"]),
    "use_dora": _JSON,
}
_DAMAGE = ["config value"] * 3 + [
    "config bytes",
    "config not object",
    "delete config",
    "delete weights",
    "weights bytes",
    "no folder",
]


@FUZZ
@given(
    data=st.data(),
    damage=st.sampled_from(_DAMAGE),
    key=st.sampled_from(sorted(_BAD_CONFIG_VALUES)),
    raw=st.binary(max_size=64) | st.sampled_from([b"\xff{}", b"[" * 100_000, b"{"]),
)
def test_fuzzed_peft_folder_loads_or_names_the_folder(adapter, data, damage, key, raw):
    config, good = adapter
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "adapter"
        shutil.copytree(good, folder)
        cfg_path, weights = folder / lora.ADAPTER_CONFIG, folder / lora.ADAPTER_WEIGHTS
        if damage == "config value":
            cfg = json.loads(cfg_path.read_text())
            cfg[key] = data.draw(_BAD_CONFIG_VALUES[key], label=key)
            cfg_path.write_text(json.dumps(cfg))
        elif damage == "config bytes":
            cfg_path.write_bytes(raw)
        elif damage == "config not object":
            cfg_path.write_text(json.dumps(data.draw(_JSON, label="config")))
        elif damage == "delete config":
            cfg_path.unlink()
        elif damage == "delete weights":
            weights.unlink()
        elif damage == "weights bytes":
            weights.write_bytes(raw)
        else:
            shutil.rmtree(folder)
        try:
            stack = lora.load_peft_adapter(folder, config)
        except (ValueError, FileNotFoundError) as e:
            assert repr(str(folder)) in str(e), e
            return
    assert stack.n_experts == 1 and stack.rank >= 1


def test_invalid_rank_pattern_regex_names_the_folder_and_the_pattern(adapter):
    config, good = adapter
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "adapter"
        shutil.copytree(good, folder)
        cfg = json.loads((folder / lora.ADAPTER_CONFIG).read_text())
        cfg["rank_pattern"] = {"q_proj(": 4}
        (folder / lora.ADAPTER_CONFIG).write_text(json.dumps(cfg))
        with pytest.raises(lora.AdapterError, match=r"adapter.*rank_pattern.*'q_proj\('"):
            lora.load_peft_adapter(folder, config)


# ----------------------------------------------------------------------------- g_decode fuzz

_ENTRIES = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.sampled_from(
    [0.0, -0.0, 1e308, -1e308, 5e-324, 1e300]
)
_FINITE = st.floats(-1e308, 1e308) | st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324])
_SQUARE = st.integers(1, 6).flatmap(
    lambda n: (
        hnp.arrays(np.float64, (n, n), elements=_FINITE)
        | hnp.arrays(np.float64, (n, n), elements=_ENTRIES)
    )
)
_ANY_SHAPE = hnp.arrays(
    st.sampled_from([np.float64, np.float32, np.int64, np.bool_]),
    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)


@FUZZ
@given(
    a=_SQUARE | _SQUARE | _ANY_SHAPE,
    top_p=st.floats(0, 1) | st.sampled_from([0.0, 1.0, 0.0, 1.0, -0.1, 1.5, math.nan]),
    seed=st.integers(0, 2**32 - 1),
)
def test_fuzzed_adjacency_decodes_or_fails_clearly(a, top_p, seed):
    square = a.ndim == 2 and a.shape[0] == a.shape[1] >= 1
    usable = square and np.isfinite(a.astype(np.float64)).all() and 0 <= top_p <= 1
    try:
        dag = graph.g_decode(a, np.random.default_rng(seed), top_p=top_p)
    except ValueError as e:
        assert not usable, f"refused a usable matrix: {e}"
        assert "adjacency" in str(e) or "top_p" in str(e), e
        return
    assert usable, "decoded a matrix it should refuse"
    n = a.shape[0]
    assert dag.n == n and 0 <= dag.end < n and dag.is_in_tree() and len(dag.edges) == n - 1
