"""A small graph attention network that scores the edges of a multi-LLM DAG (the GNN baseline).

The paper's GNN baseline (Appendix B, after G-Designer) encodes the expert pool with a graph
attention network (GAT) and learns link prediction: which edges between two experts lead to a
higher utility f. Here the nodes are the experts in a fixed order, attention runs over a given
neighbourhood mask (the baseline uses the complete graph with self-loops), and an edge head
scores every ordered pair (i, j); `hs_jax.methods.dynamic_role` keeps only i < j.

One GAT layer (Velickovic et al. 2018, one head):

    z      = h W                                          # [n, d_out]
    e[i,j] = LeakyReLU(a_dst . z[i] + a_src . z[j])       # i attends to neighbour j
    alpha  = softmax_j(e[i, j] over mask[i, j])           # rows sum to 1
    out[i] = sum_j alpha[i, j] z[j] + h[i] W_res

The residual term (DGL's `residual=True`) matters here: on the complete graph a_dst . z[i] is
the same for every j, so it nearly cancels in the softmax (GAT's 'static attention'), every row
of alpha is almost the same and without the residual all nodes would get one embedding.

Training (`train`) minimises a weighted binary cross-entropy against soft per-edge labels
(`edge_targets`) with optax adam for a fixed number of steps, the whole loop one jitted
`lax.scan`, so it is a pure, seeded function of its inputs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

LEAKY_SLOPE = 0.2  # the GAT paper's negative slope


class GATLayer(nnx.Module):
    """One single-head graph attention layer: [n, d_in] node states -> [n, d_out]."""

    def __init__(self, d_in: int, d_out: int, *, rngs: nnx.Rngs):
        self.w = nnx.Linear(d_in, d_out, use_bias=False, rngs=rngs)
        self.res = nnx.Linear(d_in, d_out, use_bias=False, rngs=rngs)
        init = nnx.initializers.lecun_normal()
        self.a_dst = nnx.Param(init(rngs.params(), (d_out, 1)))
        self.a_src = nnx.Param(init(rngs.params(), (d_out, 1)))

    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        z = self.w(h)  # [n, d_out]
        e = (z @ self.a_dst.value) + (z @ self.a_src.value).T  # [n, n]: e[i, j]
        e = jax.nn.leaky_relu(e, LEAKY_SLOPE)
        e = jnp.where(mask, e, -jnp.inf)
        alpha = jax.nn.softmax(e, axis=-1)  # [n, n]; every row needs one neighbour (self)
        return alpha @ z + self.res(h)


class EdgeGAT(nnx.Module):
    """Two GAT layers (ELU between them) and an MLP edge head on [z_i, z_j]: [n, n] logits."""

    def __init__(self, d_in: int, hidden: int = 16, *, rngs: nnx.Rngs):
        self.gat1 = GATLayer(d_in, hidden, rngs=rngs)
        self.gat2 = GATLayer(hidden, hidden, rngs=rngs)
        self.head1 = nnx.Linear(2 * hidden, hidden, rngs=rngs)
        self.head2 = nnx.Linear(hidden, 1, rngs=rngs)

    def embed(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        return self.gat2(jax.nn.elu(self.gat1(x, mask)), mask)  # [n, hidden]

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        z = self.embed(x, mask)
        n = z.shape[0]
        pairs = jnp.concatenate(
            [jnp.broadcast_to(z[:, None], (n, n, z.shape[1])),
             jnp.broadcast_to(z[None, :], (n, n, z.shape[1]))],
            axis=-1,
        )  # [n, n, 2 * hidden]: (z_i, z_j)  # fmt: skip
        return self.head2(jax.nn.relu(self.head1(pairs)))[..., 0]  # [n, n] edge logits


def node_features(single_dev: np.ndarray, order: np.ndarray) -> np.ndarray:
    """[n, n_experts + 2] features of the nodes of an expert order: the expert's one-hot id,
    its single-expert dev utility, its position in the order scaled to [0, 1]."""
    single_dev = np.asarray(single_dev, np.float32)
    order = np.asarray(order, int)
    n, n_experts = len(order), len(single_dev)
    onehot = np.eye(n_experts, dtype=np.float32)[order]
    utility = single_dev[order][:, None]
    position = (np.arange(n, dtype=np.float32) / max(n - 1, 1))[:, None]
    return np.concatenate([onehot, utility, position], axis=1)


def edge_targets(
    edge_masks: np.ndarray, utilities: np.ndarray, pairs: tuple[np.ndarray, np.ndarray], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Soft labels and loss weights [n, n] for link prediction from scored sample DAGs.

    edge_masks: [S, P] whether sample s holds pair p = (pairs[0][p], pairs[1][p]); utilities:
    [S]. The label of an edge is the fraction of the samples holding it that scored above the
    median of all samples; its weight is how many samples hold it over the total, so the loss
    is the mean binary cross-entropy over every (sample, edge it holds) with the label 'this
    sample beat the median'. Non-finite utilities are left out; edges no sample holds weigh 0.
    """
    edge_masks = np.asarray(edge_masks, bool)
    u = np.asarray(utilities, float)
    keep = np.isfinite(u)
    edge_masks, u = edge_masks[keep], u[keep]
    labels = np.zeros((n, n), np.float32)
    weights = np.zeros((n, n), np.float32)
    if not len(u):
        return labels, weights
    above = (u > np.median(u)).astype(np.float64)  # [S]
    counts = edge_masks.sum(axis=0)  # [P]
    wins = (edge_masks * above[:, None]).sum(axis=0)
    held = counts > 0
    labels[pairs[0][held], pairs[1][held]] = wins[held] / counts[held]
    total = max(counts.sum(), 1)
    weights[pairs[0], pairs[1]] = counts / total
    return labels, weights


def weighted_bce(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """sum(weights * BCE(sigmoid(logits), labels)) / sum(weights) (0 when nothing weighs)."""
    per = optax.sigmoid_binary_cross_entropy(logits, labels)
    return jnp.sum(weights * per) / jnp.maximum(jnp.sum(weights), 1e-12)


@dataclasses.dataclass(frozen=True)
class Trained:
    """A trained edge model: `probs()` are its sigmoid edge scores [n, n]; losses per step."""

    graphdef: nnx.GraphDef
    params: nnx.State
    losses: np.ndarray  # [steps]

    def logits(self, x, mask) -> np.ndarray:
        return np.asarray(nnx.merge(self.graphdef, self.params)(jnp.asarray(x), jnp.asarray(mask)))

    def probs(self, x, mask) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(x, mask).astype(np.float64)))


def train(
    x: np.ndarray,
    mask: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    *,
    seed: int,
    steps: int = 300,
    learning_rate: float = 1e-2,
    hidden: int = 16,
) -> Trained:
    """Fits an `EdgeGAT` (initialised from `seed`) to the labels with adam, `steps` full-batch
    steps in one jitted scan; returns the model and the loss before each step."""
    model = EdgeGAT(x.shape[1], hidden, rngs=nnx.Rngs(params=seed))
    graphdef, params = nnx.split(model, nnx.Param)
    opt = optax.adam(learning_rate)
    x, mask = jnp.asarray(x, jnp.float32), jnp.asarray(mask, bool)
    labels, weights = jnp.asarray(labels, jnp.float32), jnp.asarray(weights, jnp.float32)

    def loss_fn(p):
        return weighted_bce(nnx.merge(graphdef, p)(x, mask), labels, weights)

    def step(carry, _):
        p, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, opt_state = opt.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), loss

    @jax.jit
    def fit(p):
        (p, _), losses = jax.lax.scan(step, (p, opt.init(p)), None, length=steps)
        return p, losses

    params, losses = fit(params)
    return Trained(graphdef, params, np.asarray(losses))
