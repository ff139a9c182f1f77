"""Expert pools: build n LoRA experts from one base model by supervised fine-tuning, or load them.

All n experts are trained together in one jitted step: each batch row carries the id of the
expert whose data slice it came from, and the model's per-row LoRA gather routes the row
through that expert only, so one forward/backward pass trains every expert on its own slice
(gradients of different experts never mix). The loss covers only answer tokens, and the tied
262k-word output head is evaluated only at those positions (it is most of the model's cost).

A pool trained here records what each expert learned from: `TRAINING_RECORD` in the expert's
PEFT folder holds the sha256 of every training question's normalised text (not the prompts),
so a run can tell, before it loads a model, whether it would score an expert on questions the
expert was trained on (`hs_jax.setup.assembly.check_train_overlap`).

A pool is written whole or not at all (`write_pool`): every expert's folder is staged in a
temporary folder next to it (`hs_jax.store.workdir.temp_path`), `POOL_RECORD` (the completion
record: the experts and their PEFT files' sizes) is written last, and the folder is renamed
into place. A pool is present only when its record is and agrees with the files (`pool_ready`);
a folder without one (a writer killed in an older hs_jax, a damaged pool) is moved aside,
never deleted, to `<folder>.incomplete-<UTC time>` and the pool rebuilt. A complete pool an
older hs_jax wrote (every expert folder loads: its config parses, its weights file is whole)
is adopted: its record is written and it is used as it is.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import shutil
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

from hs_jax.experts import lora
from hs_jax.models.gemma import abstract_model
from hs_jax.models.gemma_config import GemmaConfig
from hs_jax.models.tokenizer import bos_of
from hs_jax.runtime import distributed
from hs_jax.store import workdir as workdir_lib
from hs_jax.tasks.nlgraph_gen import question_hash

# What an expert hs_jax trained was trained on, next to its PEFT files (`training_record`).
TRAINING_RECORD = "hs_jax_training.json"
TRAINING_RECORD_FORMAT = 1
# The completion record of a pool folder hs_jax wrote: written last, so its presence means the
# pool is whole (`write_pool`, `pool_ready`).
POOL_RECORD = "hs_jax_pool.json"
POOL_RECORD_FORMAT = 1
# A pool folder that was not whole is moved aside to `<folder><INCOMPLETE_MARK><UTC time>`.
INCOMPLETE_MARK = ".incomplete-"


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
    """Token ids [bos, prompt..., answer..., eos] and the index where the answer starts; no
    BOS for a tokenizer that adds none (Qwen), as the engine's prompts have none."""
    prompt = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    answer = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    answer = [*answer, tokenizer.eos_token_id]
    bos = bos_of(tokenizer)
    head = [] if bos is None else [bos]
    room = max_len - len(head) - len(answer)
    if room < 1:
        raise ValueError(f"answer of {len(answer)} tokens does not fit max_len={max_len}")
    prompt = prompt[-room:]  # keep the end of a long prompt: the question sits there
    return [*head, *prompt, *answer], len(head) + len(prompt)


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


def _pool_files(directory: Path, names: Sequence[str]) -> dict[str, int]:
    """'<expert>/<file>' -> size in bytes, for the PEFT files of every expert (what loads;
    a training record may be removed, or damaged, without making the pool another one:
    `read_training_record` judges it)."""
    return {
        f"{name}/{file}": (directory / name / file).stat().st_size
        for name in names
        for file in (lora.ADAPTER_CONFIG, lora.ADAPTER_WEIGHTS)
    }


def _write_pool_record(directory: Path, names: Sequence[str]) -> None:
    record = {
        "format": POOL_RECORD_FORMAT,
        "experts": list(names),
        "files": _pool_files(directory, names),
        "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    workdir_lib.write_json(directory / POOL_RECORD, record)


def pool_problem(directory: str | os.PathLike, names: Sequence[str]) -> str | None:
    """Why `directory` does not hold the complete pool of experts `names` (None when it does):
    no completion record (`POOL_RECORD`), an unreadable one, an expert it does not list, or a
    file it lists that is missing or of another size. Reads no weights."""
    path = Path(directory) / POOL_RECORD
    try:
        record = workdir_lib.read_json(path)
    except workdir_lib.WorkdirError as e:
        return str(e)
    if record is None:
        return f"no completion record ({POOL_RECORD})"
    if (
        not isinstance(record, dict)
        or record.get("format") != POOL_RECORD_FORMAT
        or not isinstance(record.get("experts"), list)
        or not isinstance(record.get("files"), dict)
    ):
        return f"{path} is not a pool record of format {POOL_RECORD_FORMAT}"
    missing = [name for name in names if name not in record["experts"]]
    if missing:
        return f"{path} does not list the experts {missing}"
    for rel, size in record["files"].items():
        if rel.split("/", 1)[0] not in names:
            continue
        file = Path(directory) / rel
        if not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size != size:
            return f"{file} has {file.stat().st_size} bytes, the record says {size}"
    return None


def _older_pool_problem(directory: Path, names: Sequence[str]) -> str | None:
    """Why the expert folders of a pool without a completion record are not a whole pool an
    older hs_jax wrote (None when they are: each folder's adapter config parses and its
    weights file holds every byte its header announces)."""
    from hs_jax.models.safetensors_io import read_safetensors

    for name in names:
        folder = directory / name
        try:
            lora.check_peft_folder(folder)
            read_safetensors(folder / lora.ADAPTER_WEIGHTS)
            read_training_record(folder)
        except (OSError, ValueError) as e:  # AdapterError, CheckpointError: ValueErrors
            return str(e).splitlines()[0]
    return None


def move_incomplete(directory: str | os.PathLike) -> Path:
    """Moves a pool folder that is not whole to `<folder>.incomplete-<UTC time>` beside it (a
    new name, never over anything); returns where it went."""
    directory = Path(directory)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    dest = directory.with_name(f"{directory.name}{INCOMPLETE_MARK}{stamp}")
    k = 1
    while dest.exists():
        k += 1
        dest = directory.with_name(f"{directory.name}{INCOMPLETE_MARK}{stamp}-{k}")
    os.replace(directory, dest)
    return dest


def _stale_stagings(directory: Path) -> list[Path]:
    """Staging folders of `directory` left by writers that are no longer running (this host's
    processes; a pool written on another host is not judged)."""
    stale = []
    prefix = f"{directory.name}{workdir_lib.TMP_MARK}"
    for path in directory.parent.glob(f"{directory.name}{workdir_lib.TMP_MARK}*"):
        pid = path.name[len(prefix) :]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            stale.append(path)
        except OSError:
            pass
    return stale


def pool_ready(directory: str | os.PathLike, names: Sequence[str]) -> bool:
    """Whether `directory` holds the complete pool of experts `names`, settling what is there:
    a folder with a good completion record is the pool; a folder without one whose experts
    are whole (a pool of an older hs_jax) gets its record and is the pool; any other folder
    is moved aside (`move_incomplete`, with a warning naming both places) and False returned,
    so the caller rebuilds it. Only call it for pools hs_jax writes (never a user's PEFT
    folders) and only from the process that writes them."""
    directory = Path(directory)
    for stale in _stale_stagings(directory):
        logging.warning(
            "%s: a pool staged by a process that is no longer running (killed while writing "
            "it); it is not used and can be deleted", stale,
        )  # fmt: skip
    if not directory.exists() and not directory.is_symlink():
        return False
    if directory.is_dir() and not directory.is_symlink() and not any(directory.iterdir()):
        return False  # an empty folder (made beforehand): nothing to keep, the pool replaces it
    problem = pool_problem(directory, names) if directory.is_dir() else "not a folder"
    if problem is None:
        return True
    if directory.is_dir() and not (directory / POOL_RECORD).exists():
        older = _older_pool_problem(directory, names)
        if older is None:
            _write_pool_record(directory, names)
            logging.info("%s: a complete pool of an older hs_jax; recorded as complete", directory)
            return True
        problem = f"{problem}; {older}"
    dest = move_incomplete(directory)
    logging.warning(
        "%s is not a complete expert pool (%s): moved aside to %s, the pool is built again",
        directory, problem, dest,
    )  # fmt: skip
    return False


def write_pool(
    directory: str | os.PathLike,
    stack: lora.LoraStack,
    names: Sequence[str],
    records: Sequence[dict[str, Any] | None] | None = None,
    *,
    base_model_name_or_path: str | None = None,
) -> list[str]:
    """Writes expert i of `stack` as the PEFT folder `directory/names[i]` (with its training
    record `records[i]` first, when given), all of them in one staged folder that is renamed
    into place once the completion record (`POOL_RECORD`) is written last; returns the
    folders. A folder already at `directory` is moved aside first unless it is a complete pool
    (a racing writer's: kept, this one dropped); an empty folder is replaced. The kill point
    'pool_write' (a test hook) follows each expert's folder."""
    directory = Path(directory)
    tmp = workdir_lib.temp_path(directory)
    _remove(tmp)  # this process id's staging name: an earlier process of the same id's
    tmp.mkdir(parents=True)
    try:
        for i, name in enumerate(names):
            folder = tmp / name
            folder.mkdir()
            if records is not None and records[i] is not None:
                workdir_lib.write_json(folder / TRAINING_RECORD, records[i])
            lora.export_peft_adapter(
                stack, i, folder, base_model_name_or_path=base_model_name_or_path
            )
            workdir_lib.kill_point("pool_write")  # test hook: after each expert's folder
        _write_pool_record(tmp, names)
        if pool_ready(directory, names):  # anything else there is moved aside
            logging.info("%s was completed by another process meanwhile; keeping it", directory)
        else:
            os.replace(tmp, directory)
    finally:
        _remove(tmp)
    return pool_folders(directory, names)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


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
    """The pool saved as PEFT folders `directory/<name>`; trained only when `directory` does
    not hold it whole (`pool_ready`: a half-written pool is moved aside first).

    Written by `write_pool`: each folder holds its training record (`TRAINING_RECORD`, from
    the slice's questions, labelled with `task`) before its adapter, and the pool's completion
    record comes last, so a pool that is present is whole and has its records when its
    examples carried their questions. A whole pool of an older hs_jax (no completion record,
    possibly no training records) is adopted and loads.

    Multi-process runs (`hs_jax.runtime.distributed`): process 0 looks at the folder and writes it;
    every process trains (the same pool, on its own devices), so none waits idle in a
    collective for the length of a training, and all load the folders process 0 wrote."""
    if distributed.on_primary(lambda: pool_ready(directory, names)):
        logging.info("loading the expert pool from %s", directory)
        return lora.load_peft_pool(pool_folders(directory, names), config)
    stack, _ = train_pool(config, params, tokenizer, slices, sft, names=names)
    records = [training_record(piece, task=task) for piece in slices]
    folders = distributed.on_primary(
        lambda: write_pool(
            directory, stack, names, records, base_model_name_or_path=base_model_name_or_path
        )
    )
    return lora.load_peft_pool(folders, config)
