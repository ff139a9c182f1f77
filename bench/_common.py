"""Helpers shared by the bench scripts: the machine header of every table, timing, the
machine's matmul and bandwidth peaks, FLOP counts of Gemma tokens, and writing one benchmark's
marked section of bench/RESULTS.md without touching the others.

jax is imported inside the functions that need it: bench/generate.py's parent process only
drives workers and never loads it.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


# ------------------------------------------------------------------------------------------
# The machine.


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what `platform` knows)."""
    return _cpuinfo().get("model name") or platform.processor() or "unknown"


def isa_flags() -> str:
    """Which of ISA_FLAGS /proc/cpuinfo lists, e.g. 'avx2 avx512f avx512_bf16, no amx_bf16'."""
    flags = set(_cpuinfo().get("flags", "").split())
    if not flags:
        return "ISA flags unknown"
    have = [f for f in ISA_FLAGS if f in flags]
    lack = [f for f in ISA_FLAGS if f not in flags]
    return " ".join(have) + (f", no {' '.join(lack)}" if lack else "")


def transparent_hugepages() -> str:
    """The bracketed (active) choice of /sys/kernel/mm/transparent_hugepage/enabled."""
    try:
        text = _THP.read_text()
    except OSError:
        return "unknown"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else text.strip()


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
    """One line: date, CPU model, cores, ISA flags, transparent huge pages, Python and package
    versions (jax with its backend), and the load average when it is called."""
    jax = sys.modules.get("jax")  # its backend only where the caller already uses jax
    vers = []
    for name, version in versions(*modules).items():
        if name == "jax" and jax is not None:
            version += f" ({jax.default_backend()})"
        vers.append(f"{name} {version}")
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{date}; {cpu_model()}, {os.cpu_count()} cores (nproc), {isa_flags()}, transparent "
        f"huge pages {transparent_hugepages()}; Python {platform.python_version()}, "
        f"{', '.join(vers)}; load average {load}"
    )


def command() -> str:
    """This run's command line as `python -m bench.<script> ARGS`."""
    return " ".join([f"python -m bench.{Path(sys.argv[0]).stem}", *sys.argv[1:]])


def header(title: str, description: str, *modules: str, command_line: str | None = None) -> str:
    """The opening of every bench table: title, what is measured, the command, the machine."""
    return "\n".join(
        [
            f"## {title}",
            "",
            description,
            "",
            f"Command: `{command_line or command()}`",
            "",
            f"Machine: {machine_line(*modules)}",
        ]
    )


def publish(
    name: str, title: str, description: str, table: Sequence[str], *modules: str, write: bool
) -> str:
    """A table's text (`header`, a blank line, the table's lines), printed and, with `write`,
    put in section `name` of bench/RESULTS.md; returned."""
    text = "\n".join([header(title, description, *modules), "", *table])
    print(text)
    if write:
        write_section(name, text)
    return text


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


# ------------------------------------------------------------------------------------------
# Timing and peaks. Best of N everywhere: a shared machine only ever slows a run down.


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb(pid: int) -> float | None:
    """Resident memory of a live process (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_measured(
    argv: Sequence[str], env: dict[str, str], log: Path, sample: Callable[[], object] | None = None
) -> dict:
    """Runs `argv` (stdout and stderr into `log`) and samples its resident memory every half
    second: {'seconds', 'peak_mb' (its ru_maxrss), 'samples': [(seconds, MB, sample())]}.
    A failing command is a SystemExit naming the log."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        samples = []
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss = _rss_mb(proc.pid)
            if rss is not None:
                samples.append((time.perf_counter() - start, rss, sample() if sample else None))
            time.sleep(0.5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv[:3])} failed ({proc.returncode}); see {log}")
    return {
        "seconds": time.perf_counter() - start,
        "peak_mb": usage.ru_maxrss / 1024,
        "samples": samples,
    }


def fresh_workdirs(base: str, prefix: str, names: Sequence[str]) -> dict[str, Path]:
    """One workdir per name under `base` ('' = a new temp dir), none of which may exist yet (a
    benchmark that compares runs must not resume an earlier one)."""
    root = Path(base or tempfile.mkdtemp(prefix=prefix))
    dirs = {name: root / name for name in names}
    for d in dirs.values():
        if d.exists():
            raise SystemExit(f"{d} exists: give --workdir a fresh folder")
    root.mkdir(parents=True, exist_ok=True)
    return dirs


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(wall seconds, result) of one call; `fn` must block until its work is done."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def times(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of `fn` (which must block until its work is done)."""
    return [timed(fn)[0] for _ in range(repeats)]


def best_time(fn: Callable, *args, repeats: int = 5) -> float:
    """Best wall seconds of `fn(*args)` (a jax function) over `repeats` calls after a warm-up."""
    import jax

    jax.block_until_ready(fn(*args))
    return min(times(lambda: jax.block_until_ready(fn(*args)), repeats))


def matmul_rate(n: int = 2048, dtype: str = "float32", repeats: int = 5) -> float:
    """Best FLOP/s of a jitted [n, n] @ [n, n] matmul (float32 accumulation) in this process."""
    import jax
    import jax.numpy as jnp

    key = jax.random.key(0)
    a = jax.random.normal(key, (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.float32).astype(dtype)
    mm = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    return 2 * n**3 / best_time(mm, a, b, repeats=repeats)


def bandwidth(n_bytes: int = 1 << 29, repeats: int = 7) -> dict[str, float]:
    """Best bytes/s of three streaming kernels over arrays far larger than the caches: a numpy
    copy (1 read + 1 write), a jitted scale x * s and a jitted triad x + s * y (x donated, so
    XLA updates it in place: 1 read + 1 write, and 2 reads + 1 write)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    n = n_bytes // 4
    a = np.ones(n, np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)
    out = {"numpy copy": 2 * n_bytes / min(times(lambda: np.copyto(b, a), repeats))}
    a = b = None  # freed before the jax arrays
    x, y = jnp.ones(n, jnp.float32), jnp.ones(n, jnp.float32)
    kernels = {
        "jax scale": (jax.jit(lambda x, y: x * 0.5, donate_argnums=0), 2),
        "jax triad": (jax.jit(lambda x, y: x + 0.5 * y, donate_argnums=0), 3),
    }
    for name, (fn, arrays) in kernels.items():
        x = jax.block_until_ready(fn(x, y))
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            x = jax.block_until_ready(fn(x, y))
            best = min(best, time.perf_counter() - start)
        out[name] = arrays * n_bytes / best
    return out


# ------------------------------------------------------------------------------------------
# FLOPs of Gemma tokens. `c` is a GemmaConfig or anything with its fields.


def layer_params(c) -> int:
    """Matmul weights of all decoder layers: q, k, v, o and the gated MLP."""
    d, q, kv = c.d_model, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    return c.n_layers * (d * q + 2 * d * kv + q * d + 3 * d * c.ffn_dim)


def head_params(c) -> int:
    """The tied output head's weights, vocab x d_model."""
    return c.vocab_size * c.d_model


def attention_flops(c, context: int) -> int:
    """QK^T and PV of one query over `context` keys in every layer (local layers cap it at the
    sliding window): 2 products x 2 FLOPs x heads x head_dim x keys per layer."""
    total = 0
    for kind in c.layer_types:
        keys = min(context, c.sliding_window) if kind == "local" else context
        total += 2 * 2 * c.n_heads * c.head_dim * keys
    return total


def row_flops(c, prompt_len: int, new_tokens: int, extra_params: int = 0) -> tuple[int, int]:
    """(FLOPs of the generated tokens, FLOPs of the rest of the prefill) of one row.

    Generated token t (0-based) of a row with prompt length L comes out of a forward pass of one
    position attending to L + t keys: the last prompt position for t = 0, generated token t - 1
    fed back for t >= 1 (the last token is never fed back). Each costs 2 x (layer params + head
    + `extra_params`, e.g. the row's LoRA factors) + attention. The prefill also runs the L - 1
    earlier prompt positions through the layers (position p attends to p + 1 keys; no head).
    """
    layers = 2 * (layer_params(c) + extra_params)
    per_token = layers + 2 * head_params(c)
    gen = sum(per_token + attention_flops(c, prompt_len + t) for t in range(new_tokens))
    prefill = sum(layers + attention_flops(c, p + 1) for p in range(prompt_len - 1))
    return gen, prefill


def generation_flops(
    c, prompt_lens: Sequence[int], new_tokens: Sequence[int], extra_params: int = 0
) -> tuple[int, int]:
    """`row_flops` summed over rows: (generated tokens' FLOPs, the rest of the prefill's)."""
    gen = prefill = 0
    for length, n in zip(prompt_lens, new_tokens, strict=True):
        g, p = row_flops(c, int(length), int(n), extra_params)
        gen, prefill = gen + g, prefill + p
    return gen, prefill


def padded_call_flops(
    c, batch: int, length: int, slots: int, steps: int, extra_params: int = 0
) -> int:
    """FLOPs of one device call at the shapes it runs: `batch` rows (padding rows included) of
    `length` prompt positions (each attending to all `length`, masked, as the prefill computes
    them; the head at the last one), then `steps - 1` decode steps of every row over all
    `slots` cache slots (local layers capped at the window) with the head."""
    layers = 2 * (layer_params(c) + extra_params)
    prefill = batch * (length * (layers + attention_flops(c, length)) + 2 * head_params(c))
    step = batch * (layers + 2 * head_params(c) + attention_flops(c, slots))
    return prefill + max(steps - 1, 0) * step


# ------------------------------------------------------------------------------------------
# The greedy head in a decode loop (bench/decode.py, bench/step_budget.py).

HEAD_STEPS = 8


def head_loop(graphdef, screened: bool, steps: int = HEAD_STEPS):
    """A jitted loop of `steps` greedy steps of an `Embedder` (split into `graphdef` and state)
    feeding each chosen token back, so the head runs inside a while loop as in the sampler:
    `(state, screen, h) -> (tokens [steps, B], every step certified)`. `screened` chooses
    `Embedder.screened_greedy` (bfloat16 screen + float32 certificate) over `Embedder.greedy`.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    def run(state, screen, h):
        emb = nnx.merge(graphdef, state)
        w = jnp.eye(h.shape[1], dtype=h.dtype) * 0.5

        def body(i, carry):
            h, toks, ok = carry
            if screened:
                tok, used_plain = emb.screened_greedy(h, screen)
                ok = ok & ~used_plain
            else:
                tok = emb.greedy(h)
            h = jnp.tanh(h @ w) * 20.0 + emb.embedding[...][tok]
            return h, toks.at[i].set(tok), ok

        toks = jnp.zeros((steps, h.shape[0]), jnp.int32)
        return jax.lax.fori_loop(0, steps, body, (h, toks, jnp.bool_(True)))[1:]

    return jax.jit(run)
