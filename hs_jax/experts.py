"""Expert pools: build n LoRA experts from one base model by supervised fine-tuning, or load them.

All n experts are trained together in one jitted step: each batch row carries the id of the
expert whose data slice it came from, and the model's per-row LoRA gather routes the row
through that expert only, so one forward/backward pass trains every expert on its own slice
(gradients of different experts never mix). The loss covers only answer tokens, and the tied
262k-word output head is evaluated only at those positions (it is most of the model's cost).

A pool trained here records what each expert learned from: `TRAINING_RECORD` in the expert's
PEFT folder holds the sha256 of every training question's normalised text (not the prompts),
so a run can tell, before it loads a model, whether it would score an expert on questions the
expert was trained on (`hs_jax.run_setup.check_train_overlap`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from tqdm.auto import tqdm

from hs_jax import distributed, lora
from hs_jax import workdir as workdir_lib
from hs_jax.models.gemma import abstract_model
from hs_jax.models.gemma_config import GemmaConfig
from hs_jax.tasks.nlgraph_gen import question_hash

# What an expert hs_jax trained was trained on, next to its PEFT files (`training_record`).
TRAINING_RECORD = "hs_jax_training.json"
TRAINING_RECORD_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """Fine-tuning of one pool. Every expert gets `batch_per_expert` rows of its slice per step."""

    rank: int = 8
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    steps: int = 40
    batch_per_expert: int = 2
    learning_rate: float = 2e-3
    max_len: int = 256
    seed: int = 0
    # Adapt only the last k decoder layers (0 = all): the backward pass then stops at layer
    # L - k, which makes a step up to ~2x cheaper on a CPU.
    last_layers: int = 0

    def __post_init__(self):
        for name, low in (("rank", 1), ("steps", 1), ("batch_per_expert", 1), ("max_len", 1),
                          ("last_layers", 0)):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"SFTConfig.{name} must be an int >= {low}, got {value!r}")
        lr = self.learning_rate
        if not isinstance(lr, int | float) or isinstance(lr, bool) or not 0 < lr < math.inf:
            raise ValueError(f"SFTConfig.learning_rate must be a finite number > 0, got {lr!r}")


@dataclasses.dataclass(frozen=True)
class Example:
    """One fine-tuning pair; the loss covers `answer` (and the end-of-sequence token).

    `question` is the task question the prompt was made from: the pool's training record
    names it by hash ('' = not known, and then no record is written).
    """

    prompt: str
    answer: str
    question: str = ""


def training_record(
    examples: Sequence[Example], *, task: str | None, split: str = "train"
) -> dict[str, Any] | None:
    """The record of one expert's training data: format, task, split, the number of examples
    and the sorted sha256 of each distinct training question's normalised text
    (`hs_jax.tasks.question_hash`); never the prompts. None when an example does not carry
    its question: a partial record would claim a pool clean that is not known to be."""
    if not examples or not all(example.question for example in examples):
        return None
    return {
        "format": TRAINING_RECORD_FORMAT,
        "task": task,
        "split": split,
        "n_examples": len(examples),
        "question_sha256": sorted({question_hash(example.question) for example in examples}),
    }


def read_training_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The training record in an expert's folder, or None when it has none (a pool trained by
    an older hs_jax, or elsewhere: what it was trained on is unknown). A damaged record, or
    one of an unknown format, is an AdapterError naming the file."""
    path = Path(folder) / TRAINING_RECORD
    try:
        record = workdir_lib.read_json(path)
    except workdir_lib.WorkdirError as e:
        raise lora.AdapterError(f"{path}: damaged training record ({e})") from e
    if record is None:
        return None
    if (
        not isinstance(record, dict)
        or record.get("format") != TRAINING_RECORD_FORMAT
        or not isinstance(record.get("question_sha256"), list)
    ):
        raise lora.AdapterError(
            f"{path}: not a training record of format {TRAINING_RECORD_FORMAT} "
            "(written by another version of hs_jax?)"
        )
    return record


def _encode(tokenizer, example: Example, max_len: int) -> tuple[list[int], int]:
    """Token ids [bos, prompt..., answer..., eos] and the index where the answer starts."""
    prompt = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    answer = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    answer = [*answer, tokenizer.eos_token_id]
    room = max_len - 1 - len(answer)
    if room < 1:
        raise ValueError(f"answer of {len(answer)} tokens does not fit max_len={max_len}")
    prompt = prompt[-room:]  # keep the end of a long prompt: the question sits there
    return [tokenizer.bos_token_id, *prompt, *answer], 1 + len(prompt)


def encode_slices(tokenizer, slices: Sequence[Sequence[Example]], max_len: int):
    """Pads every example to one [rows, L] layout so the train step compiles once.

    Returns per-slice arrays: tokens [m, L], positions [m, L] (-1 on padding), loss_at [m, K]
    (index t whose next token is an answer token; -1 pads) and targets [m, K].
    """
    encoded = [[_encode(tokenizer, ex, max_len) for ex in sl] for sl in slices]
    if any(not sl for sl in encoded):
        raise ValueError("every expert needs at least one training example")
    length = max(len(ids) for sl in encoded for ids, _ in sl)
    length = min(max_len, -(-length // 16) * 16)
    k = max(len(ids) - start for sl in encoded for ids, start in sl)
    out = []
    for sl in encoded:
        m = len(sl)
        tokens = np.zeros((m, length), np.int32)
        positions = np.full((m, length), -1, np.int32)
        loss_at = np.full((m, k), -1, np.int32)
        targets = np.zeros((m, k), np.int32)
        for row, (ids, start) in enumerate(sl):
            tokens[row, : len(ids)] = ids
            positions[row, : len(ids)] = np.arange(len(ids))
            n_answer = len(ids) - start
            loss_at[row, :n_answer] = np.arange(start - 1, len(ids) - 1)
            targets[row, :n_answer] = ids[start:]
        out.append((tokens, positions, loss_at, targets))
    return out


def _loss(stack, graphdef, params, tokens, positions, expert_ids, loss_at, targets):
    model = nnx.merge(graphdef, params)
    mask = loss_at >= 0  # [B, K]
    logits, _ = model(
        tokens, positions, lora=stack, expert_ids=expert_ids, logits_at=jnp.maximum(loss_at, 0)
    )  # [B, K, V]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1)


@partial(jax.jit, static_argnames=("graphdef", "optimizer"), donate_argnames=("stack", "opt_state"))
def _train_step(stack, opt_state, graphdef, optimizer, params, batch):
    loss, grads = jax.value_and_grad(_loss)(stack, graphdef, params, *batch)
    updates, opt_state = optimizer.update(grads, opt_state, stack)
    return optax.apply_updates(stack, updates), opt_state, loss


def train_pool(
    config: GemmaConfig,
    params: nnx.State,
    tokenizer,
    slices: Sequence[Sequence[Example]],
    sft: SFTConfig = SFTConfig(),
    *,
    names: Sequence[str] | None = None,
) -> tuple[lora.LoraStack, np.ndarray]:
    """Fine-tunes one LoRA expert per slice; returns the stack and the loss per step.

    Deterministic: the LoRA init comes from jax.random.key(sft.seed) and the batches from
    numpy.random.default_rng(sft.seed).
    """
    n = len(slices)
    graphdef, _ = abstract_model(config)
    stack = lora.init_lora_stack(
        config, n, sft.rank, sft.targets, jax.random.key(sft.seed), scheme="peft", names=names
    )
    if sft.last_layers:
        first = max(0, config.n_layers - sft.last_layers)
        stack = stack.replace(
            layers=tuple({} if i < first else layer for i, layer in enumerate(stack.layers))
        )
    data = encode_slices(tokenizer, slices, sft.max_len)
    optimizer = optax.adam(sft.learning_rate)
    opt_state = optimizer.init(stack)
    rng = np.random.default_rng(sft.seed)
    expert_ids = np.repeat(np.arange(n, dtype=np.int32), sft.batch_per_expert)
    losses = []
    for _ in tqdm(range(sft.steps), desc=f"fine-tuning {n} experts", leave=False):
        rows = [rng.integers(0, len(d[0]), sft.batch_per_expert) for d in data]
        batch = tuple(
            np.concatenate([d[field][r] for d, r in zip(data, rows, strict=True)])
            for field in range(4)
        )
        tokens, positions, loss_at, targets = batch
        stack, opt_state, loss = _train_step(
            stack, opt_state, graphdef, optimizer, params,
            (tokens, positions, expert_ids, loss_at, targets),
        )  # fmt: skip
        losses.append(float(loss))
    logging.info(
        "pool fine-tuning: loss %.3f -> %.3f over %d steps", losses[0], losses[-1], len(losses)
    )
    return stack, np.asarray(losses)


def pool_folders(directory: str | os.PathLike, names: Sequence[str]) -> list[str]:
    return [os.path.join(os.fspath(directory), name) for name in names]


def pool_present(folders: Sequence[str]) -> bool:
    """Whether every expert's folder holds its adapter weights (written last, after its
    training record): then the pool is loaded, not trained."""
    return all(os.path.exists(os.path.join(f, lora.ADAPTER_WEIGHTS)) for f in folders)


def build_or_load_pool(
    directory: str | os.PathLike,
    config: GemmaConfig,
    params: nnx.State,
    tokenizer,
    slices: Sequence[Sequence[Example]],
    names: Sequence[str],
    sft: SFTConfig = SFTConfig(),
    *,
    base_model_name_or_path: str | None = None,
    task: str | None = None,
) -> lora.LoraStack:
    """The pool saved as PEFT folders `directory/<name>`; trained only when some are missing.

    Each folder is written whole under a temporary name and renamed into place: its training
    record (`TRAINING_RECORD`, from the slice's questions, labelled with `task`) first, then
    the adapter, so a folder that is present always has its record when its examples carried
    their questions. A present folder without a record (an older hs_jax) still loads.

    Multi-process runs (`hs_jax.distributed`): process 0 looks for the folders and writes them;
    every process trains (the same pool, on its own devices), so none waits idle in a
    collective for the length of a training, and all load the folders process 0 wrote."""
    folders = pool_folders(directory, names)
    if distributed.on_primary(lambda: pool_present(folders)):
        logging.info("loading the expert pool from %s", directory)
        return lora.load_peft_pool(folders, config)
    stack, _ = train_pool(config, params, tokenizer, slices, sft, names=names)

    def export() -> None:
        for i, folder in enumerate(folders):
            record = training_record(slices[i], task=task)
            with workdir_lib.atomic_path(folder) as tmp:
                tmp.mkdir(parents=True)
                if record is not None:
                    workdir_lib.write_json(tmp / TRAINING_RECORD, record)
                lora.export_peft_adapter(
                    stack, i, tmp, base_model_name_or_path=base_model_name_or_path
                )

    distributed.on_primary(export)
    return lora.load_peft_pool(folders, config)
