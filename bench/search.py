"""One role step and one weight step of the demo setting: hs_jax's wave executor vs node by node,
and each against the compute floor of the tokens it ran.

The setting is the config's (default configs/demo.py: its model, task items, protocol, N, M,
token budget and engine buckets, through `hs_jax.setup.assembly`'s loaders); the experts are a
trained PEFT pool (--pool_dir, e.g. the demo run's workdir/experts) or, without one, random
LoRA experts. Same engine, model, experts, items and systems for both executors; only the order
of work differs. The node-by-node executor is the authors' order (each system, each node in
topological order, one generate call over the items), with the models kept in memory (the
authors also reload them from disk, which is not counted here). Each executor runs the workload
once to compile its shapes, then --repeats times (the fastest is kept), each with an empty
output cache.

Floor: the FLOPs of every prompt and generated token the engine reports for the timed run
(`GenerationResult.prompt_tokens`, `num_tokens`; `bench/_common.py` counts them) over the
float32 rate of a 2048^3 matmul timed in the same process. The timed runs' per-call prompt
lengths and token counts are left in $TMPDIR/hs_jax_bench_search_calls.json.

  python -m bench.search --pool_dir=runs/demo/experts   # writes the 'search' section
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from bench import _common
from hs_jax.engine import call_plan
from hs_jax.engine.engine import Engine
from hs_jax.engine.executor import Executor, Generation, System, run_node_by_node
from hs_jax.experts import lora
from hs_jax.runtime import host_allocator
from hs_jax.setup import assembly
from hs_jax.swarm import graph, jfk

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "The run's config.")
_POOL = flags.DEFINE_string("pool_dir", "", "A trained PEFT pool (default: random LoRA experts).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed runs per step and executor (best is used).")
_WRITE = flags.DEFINE_bool("write", True, "Write the section of bench/RESULTS.md.")
_FINE = flags.DEFINE_bool(
    "fine_buckets", True, "Also run hs_jax's executor on an engine with fine shape buckets."
)

# Shape buckets that leave little padding (every 16 tokens to 512, batches in steps of about
# 1.4x from 1), at the price of more shapes to compile: what padding costs, measured.
FINE_LENGTH_BUCKETS = call_plan.FINE_LENGTH_BUCKETS
FINE_BATCH_BUCKETS = call_plan.FINE_BATCH_BUCKETS


class CountingGenerate:
    """The executors' generate function over `Engine.generate`, keeping per call the rows'
    prompt lengths (BOS included, as run) and generated token counts."""

    def __init__(self, engine: Engine, max_new_tokens: int):
        self.engine, self.max_new_tokens = engine, max_new_tokens
        self.calls: list[tuple[list[int], list[int]]] = []

    def __call__(self, prompts: list[str], expert_ids: list[int]) -> Generation:
        out = self.engine.generate(prompts, expert_ids, max_new_tokens=self.max_new_tokens)
        lens = [len(p) for p in out.prompt_tokens]
        new = [int(n) for n in out.num_tokens]
        self.calls.append((lens, new))
        return Generation(texts=list(out.texts), prompt_tokens=sum(lens), generated_tokens=sum(new))

    def totals(self) -> dict[str, int]:
        return {
            "calls": len(self.calls),
            "rows": sum(len(lens) for lens, _ in self.calls),
            "prompt_tokens": sum(sum(lens) for lens, _ in self.calls),
            "new_tokens": sum(sum(new) for _, new in self.calls),
        }


def _experts(c, config):
    if _POOL.value:
        folders = sorted(str(p.parent) for p in Path(_POOL.value).glob("*/adapter_config.json"))
        if not folders:
            raise app.UsageError(f"no PEFT folders (*/adapter_config.json) in {_POOL.value}")
        return lora.load_peft_pool(folders, config)
    # Small random factors: outputs stay close to the base model's, as a fresh pool's would.
    return lora.init_lora_stack(
        config, c.experts.n, c.experts.rank, tuple(c.experts.targets), jax.random.key(c.seed),
        scheme="random", init_scale=0.002,
    )  # fmt: skip


def _fine_reading(rows, rate: float) -> str:
    """What the fine-bucket rows show: padding, wall / floor, shapes and first-run times."""
    per = lambda fn: " / ".join(fn(r) for r in rows)  # noqa: E731  (role / weight step)
    return (
        "'hs_jax, fine buckets' = the same executor on an engine with length buckets every 16 "
        f"tokens to 512 and batch buckets {', '.join(map(str, FINE_BATCH_BUCKETS))}: padding "
        "falls to "
        + per(lambda r: f"{r[5][1]['padded_flops'] / r[5][2]:.2f}x")
        + " and wall / floor to "
        + per(lambda r: f"{r[5][0] * rate / r[5][2]:.2f}x")
        + " (role / weight step; same end-node answers as the default buckets: "
        + per(lambda r: f"{r[5][3]}/{r[4]}")
        + "), but each step runs "
        + per(lambda r: f"{r[5][1]['shapes']}")
        + " distinct (batch, length) shapes instead of "
        + per(lambda r: f"{r[1][1]['shapes']}")
        + ", and its first run, which compiles them, takes "
        + per(lambda r: f"{r[5][1]['first_s']:.0f} s")
        + " against "
        + per(lambda r: f"{r[1][1]['first_s']:.0f} s")
        + " (the persistent compilation cache, engine.compilation_cache, removes that cost "
        "from every later run on the machine)."
    )


def main(argv):
    del argv
    allocator = host_allocator.reuse_freed_memory()  # as the launchers do (HS_JAX_HOST_MALLOC)
    c = _CONFIG.value
    config, params, tokenizer = assembly.load_base(c)
    experts = _experts(c, config)
    n = experts.n_experts

    def make_engine(**buckets) -> Engine:
        return Engine(
            config, params, tokenizer, experts=experts, max_batch=c.engine.max_batch,
            max_prompt_len=c.engine.max_prompt_len, **buckets,
        )  # fmt: skip

    engine = make_engine(batch_buckets=tuple(c.engine.batch_buckets))
    fine = (
        make_engine(batch_buckets=FINE_BATCH_BUCKETS, length_buckets=FINE_LENGTH_BUCKETS)
        if _FINE.value
        else None
    )
    workdir = Path(tempfile.mkdtemp(prefix="hs_bench_search_"))
    spec, items, _, _ = assembly.load_items(c, workdir)
    protocol = assembly.protocol_for(c, spec, config)
    # Per expert, the LoRA factors every token of its rows multiplies with (both factors).
    lora_params = lora.num_params(experts) // n
    rate = _common.matmul_rate(2048, "float32")

    top_p = 0.8 if c.search.top_p is None else c.search.top_p
    rng = np.random.default_rng(0)
    role = [
        System(graph.g_decode(rng.uniform(size=(n, n)), rng, top_p=top_p), tuple(range(n)))
        for _ in range(c.search.n_graphs)
    ]
    best = role[0].dag
    weight = [
        System(best, tuple(int(e) for e in a))
        for a in jfk.sample_assignments(n, n, c.search.n_assignments, rng)
    ]

    def waves(systems, generate):
        ex = Executor(
            generate, protocol.node_prompt, max_batch=c.engine.max_batch, order=protocol.order
        )
        return ex.run(systems, items).answers

    def node_by_node(systems, generate):
        return run_node_by_node(generate, protocol.node_prompt, systems, items).answers

    def planned(calls, engine):
        """(call, its planned device call) pairs: the engine's call planner re-run over the
        same prompt lengths (a LoRA stack runs all rows of a call in one group)."""
        for lens, new in calls:
            for pc in call_plan.plan_calls(
                lens, spec.max_new_tokens, engine.buckets, engine.cost_model
            ):
                yield new, pc

    def padded_flops(calls, engine) -> int:
        """FLOPs at the shapes the engine runs these calls at."""
        total = 0
        for lens, new in calls:
            for _, pc in planned([(lens, new)], engine):
                steps = max(new[i] for i in pc.rows)
                slots = pc.length + pc.new_tokens
                total += _common.padded_call_flops(
                    config, pc.batch, pc.length, slots, steps, lora_params
                )
        return total

    def measure(executor_fn, systems, engine=engine):
        """(wall seconds, token counts with the process's CPU seconds, FLOPs, answers) of the
        fastest of --repeats runs after one that compiles, each with an empty cache."""
        start = time.perf_counter()
        executor_fn(systems, CountingGenerate(engine, spec.max_new_tokens))  # compiles
        first = time.perf_counter() - start
        timed = []
        for _ in range(_REPEATS.value):
            generate = CountingGenerate(engine, spec.max_new_tokens)
            cpu, start = time.process_time(), time.perf_counter()
            answers = executor_fn(systems, generate)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            timed.append((wall, cpu, generate, answers))
        seconds, cpu, generate, answers = min(timed, key=lambda x: x[0])
        counts = {**generate.totals(), "cpu_s": cpu, "first_s": first}
        counts["padded_flops"] = padded_flops(generate.calls, engine)
        counts["shapes"] = len({(pc.batch, pc.length) for _, pc in planned(generate.calls, engine)})
        calls_log.append(generate.calls)
        flops = sum(
            sum(_common.generation_flops(config, lens, new, lora_params))
            for lens, new in generate.calls
        )
        return seconds, counts, flops, answers

    calls_log: list = []  # per timed run, per call: (prompt lengths, tokens generated)
    load_start = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = []
    for step, systems in (("role step", role), ("weight step", weight)):
        t_w, k_w, f_w, a_w = measure(waves, systems)
        t_n, k_n, f_n, a_n = measure(node_by_node, systems)
        same = sum(x == y for sa, sb in zip(a_w, a_n) for x, y in zip(sa, sb))
        total = sum(len(s) for s in a_w)
        fine_row = None
        if _FINE.value:
            t_f, k_f, f_f, a_f = measure(waves, systems, fine)
            same_f = sum(x == y for sa, sb in zip(a_w, a_f) for x, y in zip(sa, sb))
            fine_row = (t_f, k_f, f_f, same_f)
        rows.append((step, (t_w, k_w, f_w), (t_n, k_n, f_n), same, total, fine_row))
        print(
            f"{step}: waves {k_w['calls']} calls {t_w:.1f}s | node-by-node {k_n['calls']} calls "
            f"{t_n:.1f}s",
            flush=True,
        )
    rate = max(rate, _common.matmul_rate(2048, "float32"))
    shutil.rmtree(workdir, ignore_errors=True)
    cores = os.cpu_count() or 1

    table = [
        "| step | generate calls (hs_jax / node-by-node) | rows generated | wall s | "
        "fewer calls | less wall time | same answers |",
        "|---|---|---|---|---|---|---|",
    ]
    floor_table = [
        "| step | executor | rows | prompt tokens | generated tokens | GFLOP | floor s | wall s "
        "| wall / floor | CPU s / cores | CPU / cores / floor | padded GFLOP | wall / padded "
        "floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for step, (t_w, k_w, f_w), (t_n, k_n, f_n), same, total, fine_row in rows:
        table.append(
            f"| {step} | {k_w['calls']} / {k_n['calls']} | {k_w['rows']} / {k_n['rows']} | "
            f"{t_w:.1f} / {t_n:.1f} | {k_n['calls'] / k_w['calls']:.1f}x | {t_n / t_w:.1f}x | "
            f"{same}/{total} |"
        )
        runs = [("hs_jax", t_w, k_w, f_w), ("node-by-node", t_n, k_n, f_n)]
        if fine_row:
            runs.append(("hs_jax, fine buckets", *fine_row[:3]))
        for name, t, k, f in runs:
            floor_table.append(
                f"| {step} | {name} | {k['rows']} | {k['prompt_tokens']} | {k['new_tokens']} | "
                f"{f / 1e9:.0f} | {f / rate:.2f} | {t:.1f} | {t * rate / f:.2f}x | "
                f"{k['cpu_s'] / cores:.1f} | {k['cpu_s'] / cores * rate / f:.2f}x | "
                f"{k['padded_flops'] / 1e9:.0f} | {t * rate / k['padded_flops']:.2f}x |"
            )
    mean_prompt = np.mean(
        [r[1][1]["prompt_tokens"] / r[1][1]["rows"] for r in rows]  # hs_jax's rows
    )
    description = (
        f"The config's setting (the demo's by default; task `{c.task.name}`): Gemma 3 270M "
        f"({config.param_dtype}), {n} LoRA experts "
        f"({'trained pool' if _POOL.value else 'random rank-8 q/k/v/o, std 0.002'}), "
        f"N={c.search.n_graphs} graphs (identity assignment), M={c.search.n_assignments} JFK "
        f"assignments on one graph, {len(items)} generated dev items, greedy, "
        f"{spec.max_new_tokens} new tokens per node, max batch {c.engine.max_batch}. hs_jax = "
        "waves of all ready (system, node, item) rows with the (expert, prompt) cache; "
        "node-by-node = the authors' order, models in memory. Times: the fastest of "
        f"{_REPEATS.value} runs after one that compiles, each with an empty cache (a shared "
        "machine only ever slows a run down; its CPU time is that run's). Load average at "
        f"the start of the steps {load_start} (the machine line gives it at the end). Host "
        f"allocator (`hs_jax.runtime.host_allocator`): {allocator}."
    )
    text = "\n".join(
        [
            _common.header(
                "Multi-LLM executor: one role step and one weight step",
                description,
                "jax",
                "numpy",
            ),
            "",
            *table,
            "",
            "Targets: >= 5x fewer generate calls and >= 3x less wall time. 'same answers' "
            "counts end-node answers equal in both orders (greedy; batch composition can move "
            "float32 rounding, so a near-tie may flip).",
            "",
            "Reading the numbers: the call ratio is N (or M) x nodes / DAG depth, so it grows "
            "with the swarm. The wall-time ratio follows the compute each order runs, not its "
            "calls (node-by-node / hs_jax: rows generated "
            + ", ".join(f"{r[0]} {r[2][1]['rows'] / r[1][1]['rows']:.2f}x" for r in rows)
            + "; FLOPs at the padded shapes "
            + ", ".join(
                f"{r[0]} {r[2][1]['padded_flops'] / r[1][1]['padded_flops']:.2f}x" for r in rows
            )
            + "): the wave executor never generates the rows its (expert, prompt) cache holds, "
            "and node-by-node's calls of one node over the items are cut by prompt-length "
            f"bucket into calls of a few rows, each padded to a batch bucket of at least "
            f"{min(c.engine.batch_buckets)} rows. Prefill of these prompts ({mean_prompt:.0f} "
            "tokens on average) is most of the work and compute-bound on a CPU, so more rows "
            "per call save little beyond that. Larger batches pay off where decoding is "
            "memory-bound (longer answers, accelerators).",
            "",
            "### Against the compute floor",
            "",
            "floor = FLOPs of every prompt and generated token of the timed run, as the engine "
            "reports them (`GenerationResult.prompt_tokens`, BOS included, and `num_tokens`), "
            f"over the float32 rate of a jitted 2048^3 matmul timed in the same process (best "
            f"{rate / 1e9:.0f} GFLOP/s, before and after the steps). Per token through the "
            "layers (every prompt token and every generated token fed back; the last is not): "
            f"2 x ({_common.layer_params(config) / 1e6:.1f}M layer matmul params + "
            f"{lora_params / 1e3:.0f}K LoRA factors of the row's expert) + attention 2 x 2 x "
            "heads x head_dim x its context length per layer (causal, capped by the window on "
            "local layers); per generated token the tied head's 2 x "
            f"{config.vocab_size} x {config.d_model}. Not counted: the rows' padding to length "
            "and batch buckets, the norms and elementwise work, tokenising, the executor's "
            "Python; the greedy head runs as a bfloat16 screen, counted at the float32 rate. "
            "'CPU s / cores' = this process's CPU time (all its threads) over the timed run "
            f"divided by the {cores} cores: on a shared machine the wall time also holds the "
            "time other jobs had the cores, the CPU time does not (it does hold XLA's worker "
            "threads spinning while they wait). 'padded GFLOP' = the same count at the shapes "
            "the engine runs: its call planner (`hs_jax.engine.call_plan.plan_calls`, the engine's "
            "buckets) re-run over the same prompt lengths, every row of a call padded to its "
            "batch bucket and length bucket, the prefill attending over all its positions and "
            "each decode step over all cache slots; 'wall / padded floor' is what is left once "
            "padding is paid for. Target: within 1.5x of the floor.",
            "",
            *floor_table,
            "",
            "Reading: hs_jax's steps take "
            + " / ".join(f"{r[1][0] * rate / r[1][2]:.2f}x" for r in rows)
            + " (role / weight step) the floor of the tokens they run; padding to the engine's "
            "buckets multiplies the work by "
            + " / ".join(f"{r[1][1]['padded_flops'] / r[1][2]:.2f}x" for r in rows)
            + ", leaving "
            + " / ".join(f"{r[1][0] * rate / r[1][1]['padded_flops']:.2f}x" for r in rows)
            + " over the padded floor for what the count leaves out (norms, softmax and other "
            "elementwise work, tokenising, the executor's Python) and for matmuls below the "
            "2048^3 rate.",
            *([_fine_reading(rows, rate)] if _FINE.value else []),
        ]
    )
    print(text)
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "hs_jax_bench_search_calls.json"
    log.write_text(json.dumps(calls_log))
    if _WRITE.value:
        _common.write_section("search", text)


if __name__ == "__main__":
    app.run(main)
