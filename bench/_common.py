"""Helpers shared by the bench scripts: machine description, timing, peak memory, and writing
one benchmark's marked section of bench/RESULTS.md without touching the others.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions(*modules: str) -> dict[str, str]:
    """Installed version of each named module ('n/a' when it does not import)."""
    out = {}
    for name in modules:
        try:
            out[name] = __import__(name).__version__
        except Exception:  # a missing optional package is reported, not fatal
            out[name] = "n/a"
    return out


def machine_line(*modules: str) -> str:
    """One line: date, CPUs, CPU model, Python and package versions, current load average."""
    vers = ", ".join(f"{k} {v}" for k, v in versions(*modules).items())
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{date}; {os.cpu_count()} CPUs (nproc), {cpu_model()}, Python "
        f"{platform.python_version()}, {vers}; load average {load}"
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(wall seconds, result) of one call; `fn` must block until its work is done."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def write_section(name: str, text: str, path: Path = RESULTS) -> None:
    """Puts `text` between '<!-- {name}:start -->' and '<!-- {name}:end -->' in `path`.

    Replaces that section if present, appends it otherwise (creating the file with a
    '# Benchmarks' title); everything outside the markers is kept byte for byte.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.strip()}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(new)
