"""The GAT edge model (hs_jax.methods.gnn) against a numpy reference, its labels and its
training."""

import numpy as np
import pytest

from hs_jax.methods import gnn


def _np_gat(h, mask, w, w_res, a_dst, a_src):
    """The attention formula written out per node pair (the module docstring's)."""
    z = h @ w
    n = len(h)
    out = np.zeros((n, w.shape[1]))
    for i in range(n):
        e = np.full(n, -np.inf)
        for j in range(n):
            if mask[i, j]:
                s = float(a_dst[:, 0] @ z[i] + a_src[:, 0] @ z[j])
                e[j] = s if s > 0 else gnn.LEAKY_SLOPE * s
        alpha = np.exp(e - e.max())
        alpha /= alpha.sum()
        out[i] = sum(alpha[j] * z[j] for j in range(n)) + h[i] @ w_res
    return out


def _layer_params(layer):
    return (
        np.asarray(layer.w.kernel.value),
        np.asarray(layer.res.kernel.value),
        np.asarray(layer.a_dst.value),
        np.asarray(layer.a_src.value),
    )


MASK = np.array([[1, 1, 0], [1, 1, 1], [0, 0, 1]], bool)  # node 2 sees itself only


def test_gat_layer_matches_numpy_reference_on_three_nodes():
    from flax import nnx

    layer = gnn.GATLayer(4, 5, rngs=nnx.Rngs(params=3))
    h = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    got = np.asarray(layer(h, MASK))
    want = _np_gat(h.astype(np.float64), MASK, *_layer_params(layer))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_edge_gat_matches_numpy_reference():
    from flax import nnx

    model = gnn.EdgeGAT(5, 8, rngs=nnx.Rngs(params=1))
    x = gnn.node_features(np.array([0.2, 0.6, 0.4]), np.array([0, 2, 1]))
    z1 = _np_gat(x.astype(np.float64), MASK, *_layer_params(model.gat1))
    z1 = np.where(z1 > 0, z1, np.expm1(z1))  # ELU
    z = _np_gat(z1, MASK, *_layer_params(model.gat2))
    k1, b1 = np.asarray(model.head1.kernel.value), np.asarray(model.head1.bias.value)
    k2, b2 = np.asarray(model.head2.kernel.value), np.asarray(model.head2.bias.value)
    want = np.array(
        [[(np.maximum(np.concatenate([z[i], z[j]]) @ k1 + b1, 0) @ k2 + b2)[0]
          for j in range(3)] for i in range(3)]
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(model(x, MASK)), want, rtol=1e-4, atol=1e-5)


def test_node_features():
    x = gnn.node_features(np.array([0.2, 0.6, 0.4]), np.array([0, 2, 1]))
    np.testing.assert_allclose(
        x,
        [[1, 0, 0, 0.2, 0.0], [0, 0, 1, 0.4, 0.5], [0, 1, 0, 0.6, 1.0]],
        rtol=1e-6,
    )


def test_edge_targets_by_hand():
    pairs = np.triu_indices(3, 1)  # (0,1), (0,2), (1,2)
    masks = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1], [0, 0, 1], [1, 1, 1]], bool)
    u = np.array([0.9, 0.1, 0.8, 0.2, np.nan])  # median 0.5; the NaN sample is left out
    labels, weights = gnn.edge_targets(masks, u, pairs, 3)
    want_labels = np.zeros((3, 3))
    want_labels[0, 1], want_labels[0, 2], want_labels[1, 2] = 1 / 2, 1 / 2, 2 / 3
    want_weights = np.zeros((3, 3))
    want_weights[0, 1], want_weights[0, 2], want_weights[1, 2] = 2 / 7, 2 / 7, 3 / 7
    np.testing.assert_allclose(labels, want_labels, rtol=1e-6)
    np.testing.assert_allclose(weights, want_weights, rtol=1e-6)


def test_training_fits_a_separable_toy_dataset_and_is_seeded():
    n = 4
    x = gnn.node_features(np.array([0.1, 0.5, 0.3, 0.2]), np.array([0, 3, 2, 1]))
    mask = np.ones((n, n), bool)
    rows, cols = np.triu_indices(n, 1)
    target = np.array([1, 0, 1, 0, 1, 0], np.float32)
    labels = np.zeros((n, n), np.float32)
    weights = np.zeros((n, n), np.float32)
    labels[rows, cols], weights[rows, cols] = target, 1.0
    trained = gnn.train(x, mask, labels, weights, seed=0, steps=200, learning_rate=0.02)
    assert trained.losses[-1] < 0.1 * trained.losses[0]
    probs = trained.probs(x, mask)[rows, cols]
    assert ((probs > 0.5) == target.astype(bool)).all(), probs
    again = gnn.train(x, mask, labels, weights, seed=0, steps=200, learning_rate=0.02)
    np.testing.assert_array_equal(again.losses, trained.losses)


def test_weighted_bce_ignores_zero_weights():
    logits = np.array([[0.0, 3.0], [-2.0, 100.0]], np.float32)
    labels = np.array([[1.0, 1.0], [0.0, 0.0]], np.float32)
    weights = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    want = (np.log(2.0) + np.log1p(np.exp(-2.0))) / 2
    assert float(gnn.weighted_bce(logits, labels, weights)) == pytest.approx(want, rel=1e-5)
