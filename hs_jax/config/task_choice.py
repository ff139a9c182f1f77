"""The task a config names, read from `config.task`'s name, path, type and token budget in one
place: a registered task by name, or a task file by path; the type a file's dataset does not
settle; a budget that overrides the task's own."""

from __future__ import annotations

import dataclasses

import ml_collections

from hs_jax import tasks

GENERATED = "nlgraph_gen"  # the one task generated in memory (no file needed)


@dataclasses.dataclass(frozen=True)
class TaskChoice:
    """name: a registered task (`tasks.TASKS`) or a label. path: its JSON file ('' = the
    generated task, written to workdir/task.json). type: the task type when the file's dataset
    is not registered ('' = from the registry). max_new_tokens: the node calls' budget (0 = the
    task's own)."""

    name: str
    path: str = ""
    type: str = ""
    max_new_tokens: int = 0

    @classmethod
    def of(cls, c: ml_collections.ConfigDict) -> TaskChoice:
        """The task section's name, path, type and budget: the one reader of those fields."""
        t = c.task
        return cls(str(t.name), str(t.path or ""), str(t.type or ""), int(t.max_new_tokens or 0))

    @property
    def generated(self) -> bool:
        return self.name == GENERATED

    @property
    def label(self) -> str:
        """How a comparison names the task: its file, else its name."""
        return self.path or self.name

    @property
    def registered(self) -> tasks.TaskSpec | None:
        return tasks.TASKS.get(self.name)

    @property
    def known_type(self) -> str | None:
        """The task type known from the config alone (None when the task file will tell)."""
        if self.type:
            return self.type
        if not self.path and self.registered is not None:
            return self.registered.type
        return None
