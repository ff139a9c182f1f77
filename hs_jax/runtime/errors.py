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
``config.`` (hs_jax.pipeline.runner and hs_jax.config name the config field first); and any
exception raised while the command line is parsed (an unknown ``--config.<field>``, a config file
that does not load).

Two more stops are reported in one line, though they are not mistakes in the input:

- a write the file system refuses (:func:`write_failure`): no space left (ENOSPC), a disk
  quota (EDQUOT), a file over the size limit (EFBIG, ``ulimit -f``) or a read-only file system
  (EROFS), wherever it happens, orbax's and tensorstore's writer threads included (their error
  is looked for through ``__cause__``, ``__context__``, exception groups and tensorstore's
  ``[os_error_code=...]`` messages). The line names the file and what it belongs to, e.g.
  ``launch.main: no space left on device writing <workdir>/search/3/... (checkpoint step 3);
  free space and run the same command to resume``; orbax's own log of the same error (an ERROR
  line with a traceback, from its writer thread) is not shown. Exit status 1.
- an interrupt (SIGINT, Ctrl-C): ``launch.main: interrupted (SIGINT); run the same command to
  resume from the last checkpoint`` and exit status 130 (128 + SIGINT, the shell's convention
  for a process stopped by SIGINT), so scripts can tell it from an error.

This module imports nothing heavy (no jax), so `hs_jax.config` can raise its errors cheaply.
"""

from __future__ import annotations

import errno
import logging as std_logging
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import PurePath
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
    "hs_jax.experts.lora": ("AdapterError",),
    "hs_jax.models.convert": ("CheckpointError",),
    "hs_jax.models.gguf_io": ("GGUFError",),
    "hs_jax.store.checkpointing": ("ConfigMismatchError", "NoUsableCheckpointError"),
}
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _package_error_types() -> Iterator[type]:
    for module_name, names in _PACKAGE_ERRORS.items():
        module = sys.modules.get(module_name)
        for name in names:
            cls = getattr(module, name, None)
            if isinstance(cls, type):
                yield cls


def _input_error(e: BaseException) -> bool:
    if isinstance(e, (UserError, *_PATH_ERRORS)):
        return True
    if isinstance(e, tuple(_package_error_types())):
        return True
    return isinstance(e, ValueError) and str(e).startswith("config.")


def is_user_error(e: BaseException) -> bool:
    """Whether `e` is reported in one line: a mistake in the user's input, or a write the file
    system refused (see the module docstring)."""
    return _input_error(e) or write_failure(e) is not None


# ----------------------------------------------------------------------------- refused writes

# errno -> the line's text ({where}: ' writing <path> (<what>)') and what to do.
_WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on device{where}; free space and run the same command to resume",
    errno.EDQUOT: (
        "disk quota exceeded{where}; free space (or raise the quota) and run the same command "
        "to resume"
    ),
    errno.EFBIG: (
        "file too large{where}: over the file size limit (ulimit -f); raise it and run the same "
        "command to resume"
    ),
    errno.EROFS: (
        "read-only file system{where}; use a writable location (a finished run is only read, "
        "and is returned from a read-only one)"
    ),
}
# Matched in the text of errors that carry no errno (tensorstore's, raised as ValueError).
# "File too large" is left out: too common a phrase to mean EFBIG for sure.
_WRITE_STRERRORS = {os.strerror(n): n for n in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)}
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_QUOTED_PATH = re.compile(r'"(/[^"]+)"')
# Frame locals that may hold the file being written when the OSError does not name it
# (`f.write` raises ENOSPC without a filename): the innermost frame's first match is taken.
_PATH_LOCALS = ("path", "filename", "tmp", "self")
# What a file in a workdir is, by name (hs_jax.store.workdir, hs_jax.pipeline.report,
# hs_jax.comparison.compare).
_FILE_ROLES = {
    ".lock": "the workdir's lock file",
    "run.json": "the run's record",
    "results.json": "the run's results",
    "task.json": "the generated task file",
    "archive.jsonl": "the archive of scored systems",
    "test_prompts.jsonl": "the test prompts",
    "best_dag.png": "a picture",
    "curves.png": "a picture",
    "cells.json": "the comparison's cells",
    "table.md": "the comparison's table",
}
_FOLDER_ROLES = {
    "best_experts": "the best system's exported experts",
    "experts": "the trained expert pool",
    "pools": "a comparison's shared expert pool",
    "data_merge": "the data-merge baseline's adapter",
    "previous": "the previous run, moved aside",
    "search": "the checkpoints",
}
# `<stem>.hs-tmp-<pid><suffix>` / `<name>.hs-tmp-old-<pid>`: hs_jax.store.workdir.TMP_MARK names.
_STAGED = re.compile(r"\.hs-tmp-(?:old-)?\d+")
# `search/<step>` or orbax's staging name for it, `search/<step>.orbax-checkpoint-tmp...`.
_STEP = re.compile(r"(\d+)(?:\.orbax-checkpoint-tmp.*)?$")


def _linked(e: BaseException) -> Iterator[BaseException]:
    """`e` and every exception linked to it (cause, context, a group's members, an exception
    passed as an argument), each once, nearest first."""
    seen: set[int] = set()
    todo = [e]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [x for x in (e.__cause__, e.__context__) if x is not None]
        todo += [x for x in getattr(e, "exceptions", ()) if isinstance(x, BaseException)]
        todo += [x for x in e.args if isinstance(x, BaseException)]


def _write_errno(e: BaseException) -> int | None:
    if isinstance(e, OSError):
        return e.errno if e.errno in _WRITE_ERRNOS else None
    text = str(e)
    code = _OS_ERROR_CODE.search(text)
    if code is not None and int(code.group(1)) in _WRITE_ERRNOS:
        return int(code.group(1))
    return next((n for s, n in _WRITE_STRERRORS.items() if s in text), None)


def _frame_path(e: BaseException) -> str | None:
    """The file a frame of `e`'s traceback was writing, innermost frame first."""
    frames = []
    tb = e.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for name in _PATH_LOCALS:
            value = frame.f_locals.get(name)
            if isinstance(value, os.PathLike):
                return os.fsdecode(os.fspath(value))
            if name != "self" and isinstance(value, str) and os.path.isabs(value):
                return value
    return None


def _error_path(e: BaseException) -> str | None:
    if isinstance(e, OSError):
        for name in (e.filename, e.filename2):
            if name is not None:
                return os.fsdecode(name)
    # tensorstore: '... Failed writing: "/the/file": Failed to write ... [os_error_code=28] ...'
    quoted = _QUOTED_PATH.findall(str(e).split("os_error_code")[0])
    return quoted[-1] if quoted else None


def _role(path: str) -> str | None:
    """What the file at `path` is part of: 'checkpoint step 3', 'the run's results', ..."""
    parts = PurePath(path).parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "search" and i + 1 < len(parts):
            step = _STEP.match(parts[i + 1])
            if step is not None:
                return f"checkpoint step {int(step.group(1))}"
    if parts and parts[-1] in _FILE_ROLES:
        return _FILE_ROLES[parts[-1]]
    return next((_FOLDER_ROLES[p] for p in reversed(parts) if p in _FOLDER_ROLES), None)


def write_failure(e: BaseException) -> str | None:
    """One line for a write the file system refused (full, over quota or the size limit,
    read-only), naming the file and what it belongs to, when `e` is one or wraps one; else
    None. Nothing else is recognised: a bug that merely mentions a full disk stays a bug."""
    linked = list(_linked(e))
    code = next((c for x in linked if (c := _write_errno(x)) is not None), None)
    if code is None:
        return None
    path = next((p for x in linked if (p := _error_path(x)) is not None), None)
    if path is None:
        path = next((p for x in linked if (p := _frame_path(x)) is not None), None)
    where = ""
    if path is not None:  # a staged file by the name it is staged for
        path = _STAGED.sub("", path)
        role = _role(path)
        where = f" writing {path}" + (f" ({role})" if role else "")
    return _WRITE_ERRNOS[code].format(where=where)


class _HideReportedWriteFailures(std_logging.Filter):
    """Drops a log record whose exception is a refused write (orbax logs its writer thread's
    error with a traceback, then raises it in the caller): `run_main` reports it in one line.
    Kept with --verbose."""

    def __init__(self, verbose: Callable[[], bool]):
        super().__init__()
        self._verbose = verbose

    def filter(self, record: std_logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None or self._verbose():
            return True
        return write_failure(error) is None


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
    text = _unknown_field(e, argv)
    if text is None and not _input_error(e):
        text = write_failure(e)
    text = text or _text(e).strip() or type(e).__name__
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


# Launchers whose rerun resumes where an interrupted one stopped (their workdir's checkpoints).
_RESUMING = ("launch.main", "launch.compare")
EXIT_INTERRUPTED = 130  # 128 + SIGINT: the shell's status for a process stopped by Ctrl-C


def _interrupted(e: BaseException) -> bool:
    return any(isinstance(x, KeyboardInterrupt) for x in _linked(e))


def interrupted_line(launcher: str) -> str:
    """The line printed when SIGINT (Ctrl-C) stops `launcher`."""
    line = f"{launcher}: interrupted (SIGINT)"
    if launcher in _RESUMING:
        line += "; run the same command to resume from the last checkpoint"
    return line


def _stop_interrupted(launcher: str) -> None:
    """Prints the interrupt line and ends the process at once (`os._exit`, status 130).

    Not `sys.exit`: an interrupt that lands during a checkpoint save leaves orbax's writer
    threads running, and the interpreter's shutdown then prints their tracebacks ("cannot
    schedule new futures after interpreter shutdown") or aborts in C++ ("FATAL: exception
    not rethrown"). Nothing is lost by skipping it: what a run has committed is on disk
    (atomic renames, an fsynced archive), and an unfinished save is a killed writer's, which
    the next start sets right, as after SIGKILL."""
    print(interrupted_line(launcher), file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_INTERRUPTED)


def run_main(main: Callable[[list[str]], Any]) -> None:
    """`absl.app.run(main)`, reporting a user error in one line and exiting 1, an interrupt
    (SIGINT) in one line and exiting 130 (module docstring).

    Defines the boolean flag --verbose (show the traceback of these too), once. First of
    all, before anything starts JAX, sets the host allocator to reuse XLA's CPU buffers unless
    ``HS_JAX_HOST_MALLOC=glibc`` (hs_jax.runtime.host_allocator).
    """
    from absl import app, flags
    from absl import logging as absl_logging

    from hs_jax.runtime import host_allocator

    host_allocator.reuse_freed_memory()

    if "verbose" not in flags.FLAGS:
        flags.DEFINE_boolean(
            "verbose",
            False,
            "On a user error (bad config, flag or file), a refused write (full disk, read-only "
            "file system) or an interrupt (Ctrl-C), show the traceback.",
        )

    def verbose() -> bool:
        return flags.FLAGS.verbose if flags.FLAGS.is_parsed() else _argv_verbose(sys.argv)

    handler = absl_logging.get_absl_handler()
    if not any(isinstance(f, _HideReportedWriteFailures) for f in handler.filters):
        handler.addFilter(_HideReportedWriteFailures(verbose))
    try:
        app.run(main)
    except KeyboardInterrupt:
        if verbose():
            raise
        _stop_interrupted(launcher_name(main))
    except Exception as e:
        parsing = not flags.FLAGS.is_parsed()
        if verbose():
            raise
        if _interrupted(e):
            _stop_interrupted(launcher_name(main))
        if not (parsing or is_user_error(e)):
            raise
        print(format_error(launcher_name(main), e), file=sys.stderr, flush=True)
        sys.exit(1)
