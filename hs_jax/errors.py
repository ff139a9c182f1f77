"""User errors, and how the launchers report them: one line, no traceback.

A user error is a mistake in what the user gave (a config value, a command-line flag, a task
file, a PEFT folder, a model or checkpoint path) whose message already says where and why. A
traceback adds nothing for the user and buries that message under 20-50 lines, so the
launchers run their `main` through :func:`run_main`, which prints such an error as

    launch.main: config.seed=-1: must be an int in [0, 2**63)

on stderr and exits with status 1; a message that is multi-line by design (a list of bad
fields) keeps its later lines, indented. ``--verbose`` (a boolean flag that `run_main` defines)
re-raises instead, so the full traceback is shown. Any other exception is a bug and keeps its
traceback.

What counts as a user error (:func:`is_user_error`): :class:`UserError` and its subclasses;
the package's own input errors (TaskDataError, AdapterError, CheckpointError, GGUFError,
ConfigMismatchError, NoUsableCheckpointError); missing or unreadable paths (FileNotFoundError,
NotADirectoryError, IsADirectoryError, PermissionError); a ValueError whose message starts with
``config.`` (hs_jax.runner and hs_jax.config name the config field first); and any exception
raised while the command line is parsed (an unknown ``--config.<field>``, a config file that
does not load).

This module imports nothing heavy (no jax), so `hs_jax.config` can raise its errors cheaply.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any


class UserError(ValueError):
    """A mistake in the user's input; the message names the field, flag or file, and why."""


class ConfigError(UserError):
    """Bad config values: one ``config.<field>=<value>: <why>`` line per problem."""


# The package's input-error classes by defining module. They are looked up in sys.modules, not
# imported: an instance can only exist once its module has been imported, and importing
# checkpointing (orbax) or lora (jax) just to test an exception would cost seconds.
_PACKAGE_ERRORS = {
    "hs_jax.tasks.data": ("TaskDataError",),
    "hs_jax.lora": ("AdapterError",),
    "hs_jax.models.convert": ("CheckpointError",),
    "hs_jax.models.gguf_io": ("GGUFError",),
    "hs_jax.checkpointing": ("ConfigMismatchError", "NoUsableCheckpointError"),
}
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _package_error_types() -> Iterator[type]:
    for module_name, names in _PACKAGE_ERRORS.items():
        module = sys.modules.get(module_name)
        for name in names:
            cls = getattr(module, name, None)
            if isinstance(cls, type):
                yield cls


def is_user_error(e: BaseException) -> bool:
    """Whether `e` is a mistake in the user's input (see the module docstring)."""
    if isinstance(e, (UserError, *_PATH_ERRORS)):
        return True
    if isinstance(e, tuple(_package_error_types())):
        return True
    return isinstance(e, ValueError) and str(e).startswith("config.")


def _text(e: BaseException) -> str:
    """The exception's message; a KeyError's str() is the repr of its message, so unwrap it."""
    while isinstance(e, KeyError | AttributeError) and len(e.args) == 1:
        inner = e.args[0]
        if isinstance(inner, BaseException):
            e = inner
            continue
        return str(inner)
    return str(e)


def _unknown_field(e: BaseException, argv: list[str]) -> str | None:
    """'--config.search.n_graph: no such config field ...' when `e` is ml_collections' refusal
    of an override naming a field the config does not have; else None."""
    if not isinstance(e, KeyError | AttributeError):
        return None
    first, *rest = _text(e).splitlines() or [""]
    key = first.strip().strip("'\"")
    for arg in argv[1:]:
        flag = arg.split("=", 1)[0]
        if flag.startswith("--") and "." in flag and key in flag.lstrip("-").split("."):
            return "\n".join([f"{flag}: no such config field {key!r}", *rest])
    return None


def format_error(launcher: str, e: BaseException, argv: list[str] | None = None) -> str:
    """`launcher: <first line>`; the later lines of a multi-line message (a list of bad fields)
    follow, indented by two spaces (their own relative indentation kept)."""
    argv = sys.argv if argv is None else argv
    text = _unknown_field(e, argv) or _text(e).strip() or type(e).__name__
    first, *rest = [line for line in text.splitlines() if line.strip()]
    rest = textwrap.indent(textwrap.dedent("\n".join(rest)), "  ").splitlines()
    return "\n".join([f"{launcher}: {first}", *rest])


def config_value(holder) -> Any:
    """The value of a `config_flags` flag (a FlagHolder).

    config_flags defers a config file that fails to load (missing, unreadable): the value is a
    stand-in that raises an OSError, listing every path tried, on its first attribute read.
    That read happens here, and its error becomes a UserError naming the flag and the reason.
    """
    value = holder.value
    try:
        getattr(value, "to_dict", None)
    except OSError as e:
        lines = [line.strip() for line in str(e.__cause__ or e).splitlines() if line.strip()]
        raise UserError(f"--{holder.name}: cannot load the config file: {lines[-1]}") from e
    return value


def _argv_verbose(argv: list[str]) -> bool:
    """--verbose as the raw command line says (flag parsing may have failed); last one wins."""
    verbose = False
    for arg in argv[1:]:
        name, _, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name == "verbose":
            verbose = value.lower() not in ("false", "0", "f", "no")
        elif arg.startswith("-") and name == "noverbose":
            verbose = False
    return verbose


def launcher_name(main: Callable) -> str:
    """'launch.main' for a `main` run as `python -m launch.main`, else its module or script."""
    module = getattr(main, "__module__", None) or "__main__"
    if module != "__main__":
        return module
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None and spec.name else os.path.basename(sys.argv[0])


def run_main(main: Callable[[list[str]], Any]) -> None:
    """`absl.app.run(main)`, reporting a user error in one line and exiting 1 (module docstring).

    Defines the boolean flag --verbose (show the traceback of a user error too), once. First of
    all, before anything starts JAX, sets the host allocator to reuse XLA's CPU buffers unless
    ``HS_JAX_HOST_MALLOC=glibc`` (hs_jax.host_memory).
    """
    from absl import app, flags

    from hs_jax import host_memory

    host_memory.reuse_freed_memory()

    if "verbose" not in flags.FLAGS:
        flags.DEFINE_boolean(
            "verbose", False, "On a user error (bad config, flag or file) show the traceback."
        )
    try:
        app.run(main)
    except Exception as e:
        parsing = not flags.FLAGS.is_parsed()
        verbose = _argv_verbose(sys.argv) if parsing else flags.FLAGS.verbose
        if verbose or not (parsing or is_user_error(e)):
            raise
        print(format_error(launcher_name(main), e), file=sys.stderr, flush=True)
        sys.exit(1)
