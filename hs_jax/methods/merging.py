"""Static weight merging of LoRA experts: uniform soup, task arithmetic, DARE-TIES.

Pure host math (numpy) over a `lora.LoraStack` (leaves [E, ...], b already scaled as
hs_jax/lora.py folds PEFT's scale in) or over the dense weight deltas of its experts:

    delta_i = a_i @ b_i    # [d_in, d_out], what expert i adds to one projection's kernel

(the adapted projection is y = x @ W + (x @ a_i) @ b_i, so delta_i is exactly what the engine
adds). Zero-padded rank components contribute nothing to delta_i.

- `uniform_soup`: the mean of the a's and, separately, of the b's (as the authors merge LoRA
  experts); the product of the means is not the mean of the deltas, and is not meant to be.
- `task_arithmetic`: scale * sum of the deltas.
- `dare_ties`: DARE (drop each entry with probability p, rescale the kept ones by 1/(1-p)),
  TIES (keep each delta's top-`density` fraction by magnitude, elect a sign per entry by the
  summed values, i.e. the larger summed magnitude, average only the entries that agree with
  it: the disjoint mean), times a scale.
- `to_lora`: a dense merged delta back to rank-r factors by truncated SVD, so the engine can
  run it as one more LoRA expert. Exact when the delta's rank is <= r; otherwise the best
  rank-r approximation in Frobenius norm (Eckart-Young), and `merge_stack` reports its
  relative error per projection.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from hs_jax.experts import lora


def _host(stack: lora.LoraStack) -> list[dict[str, dict[str, np.ndarray]]]:
    return [
        {name: {ab: np.asarray(entry[ab], np.float32) for ab in ("a", "b")} for name, entry in
         layer.items()}
        for layer in stack.layers
    ]  # fmt: skip


def deltas(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Every expert's weight delta of one projection: a [E, d_in, r], b [E, r, d_out] ->
    [E, d_in, d_out]."""
    return np.einsum("eir,ero->eio", np.asarray(a, np.float32), np.asarray(b, np.float32))


def uniform_soup(stack: lora.LoraStack, *, name: str = "uniform_soup") -> lora.LoraStack:
    """One expert whose a and b factors are the experts' means (padded ranks included: a
    zero-padded component stays a component of the mean)."""
    layers = tuple(
        {
            proj: {ab: jnp.asarray(entry[ab].mean(axis=0, keepdims=True), stack.dtype)
                   for ab in ("a", "b")}
            for proj, entry in layer.items()
        }
        for layer in _host(stack)
    )  # fmt: skip
    return lora.LoraStack(layers=layers, names=(name,), ranks=(max(stack.ranks or (stack.rank,)),))


def task_arithmetic(d: np.ndarray, scale: float) -> np.ndarray:
    """scale * the sum of the deltas: [E, ...] -> [...]."""
    return float(scale) * np.sum(np.asarray(d, np.float32), axis=0)


def dare(d: np.ndarray, drop: float, rng: np.random.Generator) -> np.ndarray:
    """DARE: every entry of every delta dropped with probability `drop`, the kept ones
    rescaled by 1/(1 - drop) (so each entry keeps its expectation). drop=0 returns d."""
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"DARE drop rate must be in [0, 1), got {drop}")
    d = np.asarray(d, np.float32)
    if drop == 0.0:
        return d
    keep = rng.random(d.shape) >= drop
    return np.where(keep, d / (1.0 - drop), 0.0).astype(np.float32)


def trim(d: np.ndarray, density: float) -> np.ndarray:
    """TIES trim: in each delta (leading axis = expert) only the ceil(density * size) entries
    of largest magnitude are kept, the rest set to 0. density=1 returns d."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"TIES density must be in (0, 1], got {density}")
    d = np.asarray(d, np.float32)
    if density == 1.0:
        return d
    flat = d.reshape(d.shape[0], -1)
    k = max(1, int(np.ceil(density * flat.shape[1])))
    top = np.argpartition(-np.abs(flat), k - 1, axis=1)[:, :k]  # [E, k]
    out = np.zeros_like(flat)
    np.put_along_axis(out, top, np.take_along_axis(flat, top, axis=1), axis=1)
    return out.reshape(d.shape)


def elect_sign(d: np.ndarray) -> np.ndarray:
    """TIES sign election: per entry, the sign with the larger summed magnitude over the
    experts, i.e. the sign of the sum (0 where the sum is 0). [E, ...] -> [...]."""
    return np.sign(np.sum(np.asarray(d, np.float32), axis=0))


def disjoint_mean(d: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """TIES disjoint mean: per entry, the mean over the experts whose (non-zero) value has the
    elected sign; 0 where none has. When every non-zero value agrees it is the mean over the
    experts with a non-zero value, and with no zeros the plain mean."""
    d = np.asarray(d, np.float32)
    agree = (np.sign(d) == sign[None]) & (d != 0)
    count = agree.sum(axis=0)
    total = np.where(agree, d, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)


def dare_ties(
    d: np.ndarray, *, drop: float, density: float, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """DARE, then TIES (trim, elect sign, disjoint mean), times scale: [E, ...] -> [...]."""
    d = trim(dare(d, drop, rng), density)
    return float(scale) * disjoint_mean(d, elect_sign(d))


def to_lora(delta: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank-`rank` factors (a [d_in, r], b [r, d_out]) with a @ b the truncated SVD of `delta`
    [d_in, d_out]; the singular values are split evenly (sqrt each side) so neither factor
    dwarfs the other. Exact (up to float rounding) when rank(delta) <= rank; zero-padded when
    rank exceeds min(d_in, d_out)."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    u, s, vt = np.linalg.svd(np.asarray(delta, np.float64), full_matrices=False)
    k = min(rank, s.size)
    root = np.sqrt(s[:k])
    a = np.zeros((delta.shape[0], rank))
    b = np.zeros((rank, delta.shape[1]))
    a[:, :k] = u[:, :k] * root
    b[:k] = root[:, None] * vt[:k]
    return a.astype(np.float32), b.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Merged:
    """A dense merge turned back into one LoRA expert, and how well its factors match it.

    errors: per adapted projection '<layer>.<proj>', ||a @ b - merged|| / ||merged|| (Frobenius;
    0 when the merged delta is 0): the cost of running the merge as a rank-r LoRA.
    """

    expert: lora.LoraStack
    errors: dict[str, float]

    def error_summary(self) -> dict[str, float]:
        e = np.asarray(list(self.errors.values()) or [0.0])
        return {"svd_rel_error_max": float(e.max()), "svd_rel_error_mean": float(e.mean())}


def merge_stack(
    stack: lora.LoraStack,
    merge: Callable[[np.ndarray], np.ndarray],
    *,
    rank: int | None = None,
    name: str = "merged",
) -> Merged:
    """One expert from `merge` ([E, d_in, d_out] deltas -> [d_in, d_out]) applied to every
    adapted projection in layer order, re-factored at `rank` (default: the largest expert
    rank) by `to_lora`."""
    rank = int(rank or max(stack.ranks or (stack.rank,)))
    layers, errors = [], {}
    for li, layer in enumerate(_host(stack)):
        out = {}
        for proj, entry in layer.items():
            merged = merge(deltas(entry["a"], entry["b"]))
            a, b = to_lora(merged, rank)
            norm = float(np.linalg.norm(merged))
            gap = float(np.linalg.norm(a.astype(np.float64) @ b - merged))
            errors[f"{li}.{proj}"] = gap / norm if norm > 0 else 0.0
            out[proj] = {
                "a": jnp.asarray(a[None], stack.dtype),  # [1, d_in, r]
                "b": jnp.asarray(b[None], stack.dtype),  # [1, r, d_out]
            }
        layers.append(out)
    return Merged(lora.LoraStack(layers=tuple(layers), names=(name,), ranks=(rank,)), errors)
