"""The expert pool a config names, read from `config.experts` in one place.

`PoolSource.of(config)` is what everything after the door asks about the pool: its kind
('train', 'random', 'peft', 'full'), the configured size, rank and target modules, where a
trained pool is kept, the PEFT or model folders it is given as, and how many experts it will
hold before anything is loaded (`size`). The fine-tuning settings are `config.schema.
sft_config`'s.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import ml_collections

from hs_jax.experts.lora import ADAPTER_CONFIG

KINDS = ("train", "random", "peft", "full")
POOL_SUBDIR = "experts"  # <workdir>/experts: a trained (or exported random) pool by default


def peft_folders(peft_dirs: str) -> list[str]:
    """The adapter folders `experts.peft_dirs` names: its comma-separated folders, or the
    sub-folders holding an adapter_config.json when it names one folder that is no adapter.
    None found is a FileNotFoundError naming `peft_dirs` (the door reports it as a bad field)."""
    dirs = [d for d in str(peft_dirs or "").split(",") if d]
    if len(dirs) == 1 and not os.path.exists(os.path.join(dirs[0], ADAPTER_CONFIG)):
        dirs = sorted(str(p.parent) for p in Path(dirs[0]).glob(f"*/{ADAPTER_CONFIG}"))
    if not dirs:
        raise FileNotFoundError(f"no PEFT adapters found in {peft_dirs!r}")
    return dirs


def model_folders(model_dirs: str) -> list[str]:
    """The HF model folders `experts.model_dirs` names (source='full'), in order."""
    return [d for d in str(model_dirs or "").split(",") if d]


@dataclasses.dataclass(frozen=True)
class PoolSource:
    """kind: 'train' (fine-tuned here), 'random' (smoke tests), 'peft' (adapter folders) or
    'full' (HF model folders). n / rank / targets / random_scale: the pool 'train' and
    'random' make. pool_dir: where a trained pool is kept ('' = <workdir>/experts).
    train_examples / train_steps / last_layers: the fine-tuning's data and scope.
    allow_train_overlap: score items a pool was trained on anyway. peft_dirs / model_dirs: the
    folders a given pool is in, as the config names them."""

    kind: str
    n: int
    rank: int
    targets: tuple[str, ...]
    random_scale: float
    pool_dir: str
    train_examples: int
    train_steps: int
    last_layers: int
    allow_train_overlap: bool
    peft_dirs: str
    model_dirs: str

    @classmethod
    def of(cls, c: ml_collections.ConfigDict) -> PoolSource:
        """The experts section of a (resolved, checked) config: the one reader of its fields."""
        e = c.experts
        return cls(
            kind=str(e.source), n=e.n, rank=e.rank, targets=tuple(e.targets),
            random_scale=e.random_scale, pool_dir=str(e.pool_dir or ""),
            train_examples=e.train_examples, train_steps=e.train_steps,
            last_layers=e.last_layers, allow_train_overlap=bool(e.allow_train_overlap),
            peft_dirs=str(e.peft_dirs or ""), model_dirs=str(e.model_dirs or ""),
        )  # fmt: skip

    @property
    def trained(self) -> bool:
        return self.kind == "train"

    @property
    def full(self) -> bool:
        return self.kind == "full"

    @property
    def given(self) -> bool:
        """A pool that exists as folders ('peft', 'full'), not one built here."""
        return self.kind in ("peft", "full")

    def folder(self, workdir: str | os.PathLike) -> Path:
        """Where a trained (or exported random) pool lives: pool_dir, else workdir/experts."""
        return Path(self.pool_dir) if self.pool_dir else Path(workdir) / POOL_SUBDIR

    def peft_folders(self) -> list[str]:
        return peft_folders(self.peft_dirs)

    def model_folders(self) -> list[str]:
        return model_folders(self.model_dirs)

    def given_as(self) -> tuple[str, str]:
        """(what kind of folders, the config's value) of a given pool."""
        return ("PEFT", self.peft_dirs) if self.kind == "peft" else ("HF model", self.model_dirs)

    @property
    def size(self) -> int | None:
        """The number of experts the pool will hold, known before anything is loaded: the
        PEFT folders found, the model folders listed, else n (None when it cannot be told)."""
        if self.kind == "peft":
            try:
                return len(self.peft_folders())
            except FileNotFoundError:
                return None
        if self.kind == "full":
            return len(self.model_folders()) or None
        n = self.n
        return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None


def pool_size(c: ml_collections.ConfigDict) -> int | None:
    """`PoolSource.size` of a config (what a method's `applies` asks before anything loads)."""
    return PoolSource.of(c).size
