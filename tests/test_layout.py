"""The package's layout (docs/ARCHITECTURE.md): every module in a wing, each wing importing only
itself and the wings below it, and no import circle between modules. The import graph is read
from the code itself (every `import`, at module level or inside a function, `TYPE_CHECKING`
blocks included), so a lazy import cannot hide an arrow that runs back up."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hs_jax"

# Bottom to top: a module may import its own wing and the wings before it.
WINGS = (
    "runtime",  # errors, processes, mesh, host allocator, CPU features
    "stats",  # bootstrap intervals and tests, Holm
    "models",  # Flax Gemma, loaders, tokenizer
    "store",  # workdir, lock, atomic writes, checkpoints
    "swarm",  # graph, PSO, JFK, the search loop, its history
    "tasks",  # task files, prompts, parsers, metrics
    "experts",  # LoRA stacks, PEFT, pool training, full-weight experts
    "engine",  # generation, systems, scoring
    "config",  # schema, presets, checks
    "setup",  # run identity, the assembled Setup
    "methods",  # the registry, 'hs', the baselines
    "pipeline",  # the door, the runner, the report, found systems
    "sweep",  # Optuna studies of runs, their spaces and summaries
    "comparison",  # cells and the table
    "analysis",  # reading finished workdirs
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The hs_jax modules `name` imports (a package's import is its __init__; `from pkg import
    sub` is the submodule when one exists)."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("hs_jax"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("hs_jax"):
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in known else module)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_is_in_a_wing():
    outside = [m for m in _modules() if m != "hs_jax" and _wing(m) not in WINGS]
    assert not outside, f"modules outside the wings {WINGS}: {outside}"
    assert {p.name for p in PACKAGE.glob("*.py")} == {"__init__.py"}


def test_no_import_runs_from_a_lower_wing_to_a_higher_one():
    rank = {w: i for i, w in enumerate(WINGS)}
    upward = [
        f"{a} ({_wing(a)}) imports {b} ({_wing(b)})"
        for a, deps in sorted(_graph().items())
        if a != "hs_jax"
        for b in sorted(deps)
        if b != "hs_jax" and rank[_wing(b)] > rank[_wing(a)]
    ]
    assert not upward, "imports that run up:\n" + "\n".join(upward)


def test_no_module_imports_the_package_root():
    """hs_jax/__init__.py is the users' face; a module inside imports the wing it needs."""
    back = [a for a, deps in sorted(_graph().items()) if a != "hs_jax" and "hs_jax" in deps]
    assert not back, f"modules importing hs_jax itself: {back}"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle():
    circle = _cycle(_graph())
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_checks_find_what_they_look_for():
    """The walker is not blind: a made-up upward arrow and a made-up circle are found."""
    graph = _graph()
    assert "hs_jax.swarm.graph" in graph["hs_jax.swarm.search"]  # a top-level import
    assert "hs_jax.engine.engine" in graph["hs_jax.analysis.roles"]  # one inside a function
    circle = _cycle({**graph, "hs_jax.swarm.graph": {"hs_jax.swarm.search"}})
    assert circle and circle[0] == circle[-1]


@pytest.mark.parametrize("wing", WINGS)
def test_each_wing_names_its_public_face(wing):
    init = PACKAGE / wing / "__init__.py"
    assert init.exists() and ast.get_docstring(ast.parse(init.read_text())), wing


# Config fields whose reading was gathered in one place of the config wing: nothing after
# the door reads them raw (`config/model_source.py`, `config/pool_source.py`).
ONE_READER = {
    "model.spec": "config/model_source.py",
    "model.tokenizer": "config/model_source.py",
    "model.param_dtype": "config/model_source.py",
    **{f"task.{name}": "config/task_choice.py" for name in ("name", "path", "type")},
    "task.max_new_tokens": "config/task_choice.py",
    **{f"mesh.{name}": "config/mesh_layout.py" for name in ("data", "model", "expert")},
    **{
        f"experts.{name}": "config/pool_source.py"
        for name in (
            "source",
            "n",
            "rank",
            "targets",
            "random_scale",
            "pool_dir",
            "train_examples",
            "train_steps",
            "last_layers",
            "allow_train_overlap",
            "peft_dirs",
            "model_dirs",
        )
    },  # fmt: skip
}


# What holds a run config where it is read: `c`, `config`, `setup.config`, `self.config`, ...
_CONFIG_NAMES = ("c", "config", "cfg", "run_config", "resolved")


def _is_config(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id in _CONFIG_NAMES
    return isinstance(node, ast.Attribute) and node.attr in ("config", "run_config")


def _config_reads(path: Path) -> set[str]:
    """'section.field' of every `<config>.<section>.<field>` read in a module (ast: strings,
    comments and assignments are not reads; `cell.task.name` is no config)."""
    reads = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Load)
            and isinstance(node.value, ast.Attribute)
            and _is_config(node.value.value)
        ):
            reads.add(f"{node.value.attr}.{node.attr}")
    return reads


def test_gathered_config_fields_are_read_in_one_place():
    """Besides the door's checks (`config/checks.py`) and the schema that declares them, no
    module reads a field of ONE_READER but its one reader."""
    wrong = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE))
        if rel in ("config/schema.py", "config/checks.py"):
            continue
        for field in sorted(_config_reads(path) & set(ONE_READER)):
            if rel != ONE_READER[field]:
                wrong.setdefault(field, []).append(rel)
    assert not wrong, f"config fields read outside their one reader: {wrong}"
    # The walker sees reads: the readers themselves are found.
    assert "model.spec" in _config_reads(PACKAGE / "config" / "checks.py")


# The door: where a config is declared, resolved and checked (every field may be read there).
DOOR = ("config/schema.py", "config/checks.py", "config/presets.py", "pipeline/door.py")


def test_every_config_field_is_read_by_one_module_after_the_door():
    """No field of the run config is interpreted in two places: past the door, each
    `<section>.<field>` of base_config() is read by at most one module."""
    from hs_jax.config import base_config

    fields = {
        f"{section}.{name}"
        for section, value in base_config().items()
        if hasattr(value, "keys")
        for name in value.keys()
    }
    readers: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE))
        if rel not in DOOR:
            for field in _config_reads(path) & fields:
                readers.setdefault(field, []).append(rel)
    shared = {f: r for f, r in readers.items() if len(r) > 1}
    assert not shared, f"config fields read by several modules after the door: {shared}"
    assert len(readers) > 20  # the walker sees the reads
