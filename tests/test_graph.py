"""G-decode against an independent enumeration of its probabilities, and the Dag API."""

import json
import math

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from hs_jax.swarm import graph
from hs_jax.swarm.graph import Dag

# --- An independent reference of the decoding distribution, in plain Python floats. -----------


def _ref_top_p(weights, top_p):
    """Softmax-normalised weights -> top-p truncated distribution, as a dict index -> prob."""
    total = sum(weights)
    probs = [w / total for w in weights]
    ranked = sorted(range(len(probs)), key=lambda i: (-probs[i], i))
    kept, cum = [], 0.0
    for i in ranked:
        kept.append(i)
        cum += probs[i]
        if cum >= top_p:
            break
    z = sum(probs[i] for i in kept)
    return {i: probs[i] / z for i in kept}


def _ref_softmax_weights(logits):
    m = max(logits)
    return [math.exp(x - m) for x in logits]


def _ref_distribution(a, top_p):
    """All decoding paths of G-decode (graph.py's docstring), summed per resulting Dag."""
    n = len(a)
    deg = [sum(a[i][j] for j in range(n) if j != i) for i in range(n)]
    inv = [1.0 / x if x >= 1.0 else 2.0 - x for x in deg]
    dist = {}

    def walk(end, placed, remaining, edges, prob):
        if not remaining:
            key = (end, tuple(sorted(edges)))
            dist[key] = dist.get(key, 0.0) + prob
            return
        for u, pu in _ref_top_p(_ref_softmax_weights([deg[r] for r in remaining]), top_p).items():
            node = remaining[u]
            cands = sorted(placed)
            weights = _ref_softmax_weights([a[node][v] for v in cands])
            for v, pv in _ref_top_p(weights, top_p).items():
                walk(
                    end,
                    placed + [node],
                    [r for r in remaining if r != node],
                    edges + [(node, cands[v])],
                    prob * pu * pv,
                )

    for end, pe in _ref_top_p(_ref_softmax_weights(inv), top_p).items():
        walk(end, [end], [i for i in range(n) if i != end], [], pe)
    return {Dag(n, edges, end): p for (end, edges), p in dist.items()}


# Matrices for the distribution tests: negative entries, a zero row, a non-zero diagonal.
A3 = np.array([[0.0, 0.3, -0.4], [0.0, 0.0, 0.0], [1.5, 0.7, 2.0]])
A4 = np.array(
    [
        [0.0, 0.9, 0.2, 0.5],
        [0.1, 0.0, 1.8, 0.3],
        [0.6, 0.4, 0.0, 1.2],
        [2.1, -0.5, 0.8, 0.0],
    ]
)


@pytest.mark.parametrize("a", [A3, A4], ids=["n3", "n4"])
@pytest.mark.parametrize("top_p", [1.0, 0.8, 0.5, 0.0])
def test_exact_probabilities_match_reference(a, top_p):
    ref = _ref_distribution(a.tolist(), top_p)
    ours = graph.decode_distribution(a, top_p)
    assert set(ours) == set(ref)
    assert sum(ours.values()) == pytest.approx(1.0, abs=1e-12)
    for dag, p in ref.items():
        assert ours[dag] == pytest.approx(p, rel=1e-9, abs=1e-15)
        assert graph.dag_probability(a, dag, top_p) == pytest.approx(p, rel=1e-9, abs=1e-15)


def test_dag_probability_zero_outside_support():
    assert graph.dag_probability(A3, graph.chain(3), 0.0) in (0.0, 1.0)
    assert graph.dag_probability(A4, graph.star(2), 1.0) == 0.0  # not an in-tree
    assert graph.dag_probability(A4, graph.chain(3), 1.0) == 0.0  # wrong n


def _chi_square_pvalue(observed, expected):
    """Chi-square goodness of fit, rare DAGs pooled so every bin expects >= 5 samples."""
    big = expected >= 5
    expected = np.append(expected[big], expected[~big].sum())
    observed = np.append(observed[big], observed[~big].sum())
    if expected[-1] == 0:
        expected, observed = expected[:-1], observed[:-1]
    assert big.sum() >= 4
    return stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue


@pytest.mark.parametrize("a", [A3, A4], ids=["n3", "n4"])
@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_chi_square_sampling_matches_exact(a, top_p):
    exact = graph.decode_distribution(a, top_p)
    if top_p < 1.0:
        # The truncation must actually remove DAGs, or this case proves nothing new.
        assert len(exact) < len(graph.decode_distribution(a, 1.0))
    rng = np.random.default_rng(1234)
    n_samples = 10_000
    counts = dict.fromkeys(exact, 0)
    for _ in range(n_samples):
        dag = graph.g_decode(a, rng, top_p=top_p)
        assert dag in counts, f"{dag} has probability 0 under top_p={top_p}"
        counts[dag] += 1
    dags = list(exact)
    observed = np.array([counts[g] for g in dags], dtype=np.float64)
    expected = np.array([exact[g] for g in dags]) * n_samples
    assert _chi_square_pvalue(observed, expected) > 1e-3
    # Power check: the same samples reject the distribution of a slightly different matrix.
    wrong = np.array([graph.dag_probability(1.3 * a, g, top_p) for g in dags])
    assert _chi_square_pvalue(observed, wrong / wrong.sum() * n_samples) < 1e-6


def test_top_p_zero_is_argmax_and_draws_nothing():
    # Out-degrees (diagonal ignored): [2.0, 7.0, 9.0] -> end 0; then 2 (largest) attaches to
    # the only placed node 0; then 1 picks argmax(A[1, [0, 2]]) = node 2.
    a = np.array([[5.0, 1.0, 1.0], [3.0, 0.0, 4.0], [4.0, 5.0, 0.0]])
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    dag = graph.g_decode(a, rng, top_p=0.0)
    assert dag == Dag(3, ((2, 0), (1, 2)), 0)
    assert rng.bit_generator.state == before
    assert graph.decode_distribution(a, 0.0) == {dag: 1.0}


def test_top_p_zero_ties_go_to_lowest_index():
    dag = graph.g_decode(np.zeros((4, 4)), np.random.default_rng(0), top_p=0.0)
    assert dag == Dag(4, ((1, 0), (2, 0), (3, 0)), 0)


def test_same_seed_same_dags():
    a = np.random.default_rng(3).uniform(size=(10, 10))
    runs = []
    for _ in range(2):
        rng = np.random.default_rng(7)
        runs.append([graph.g_decode(a, rng, 0.8) for _ in range(20)])
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 1


def test_top_p_probs_rule():
    p = np.array([0.1, 0.4, 0.2, 0.3])
    np.testing.assert_allclose(graph.top_p_probs(p, 0.7), [0, 4 / 7, 0, 3 / 7])
    np.testing.assert_allclose(graph.top_p_probs(p, 0.71), [0, 4 / 9, 2 / 9, 3 / 9])
    np.testing.assert_allclose(graph.top_p_probs(p, 0.0), [0, 1, 0, 0])
    np.testing.assert_allclose(graph.top_p_probs(p, 1.0), p)
    # Ties keep the lower index.
    np.testing.assert_allclose(graph.top_p_probs(np.full(4, 0.25), 0.5), [0.5, 0.5, 0, 0])


def test_inverse_out_degree_is_finite_and_decreasing():
    d = np.array([-1e308, -3.0, 0.0, 0.5, 1.0, 2.0, 1e308])
    inv = graph.inverse_out_degree(d)
    assert np.isfinite(inv).all()
    assert (np.diff(inv) < 0).all()
    assert inv[5] == 0.5  # the paper's 1/d where d >= 1


def test_out_degrees_ignore_diagonal_and_saturate():
    a = np.array([[1e308, 1e308, 1e308], [2.0, 9.0, -3.0], [-1e308, -1e308, 0.0]])
    d = graph.out_degrees(a)
    np.testing.assert_array_equal(d, [np.finfo(np.float64).max, -1.0, -np.finfo(np.float64).max])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_entries_raise(bad):
    a = np.zeros((3, 3))
    a[1, 2] = bad
    with pytest.raises(ValueError, match=r"adjacency\[1, 2\]"):
        graph.g_decode(a, np.random.default_rng(0))


def test_bad_shapes_and_top_p_raise():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="square"):
        graph.g_decode(np.zeros((2, 3)), rng)
    with pytest.raises(ValueError, match="square"):
        graph.g_decode(np.zeros((0, 0)), rng)
    with pytest.raises(ValueError, match="top_p"):
        graph.g_decode(np.zeros((2, 2)), rng, top_p=1.5)


_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
_mixed = st.one_of(
    _finite,
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e308, -1e308, 5e-324]),
    st.floats(-3, 3),
)


@settings(max_examples=300, deadline=None)
@given(
    a=st.integers(1, 10).flatmap(lambda n: hnp.arrays(np.float64, (n, n), elements=_mixed)),
    top_p=st.one_of(st.sampled_from([0.0, 0.8, 1.0]), st.floats(0.0, 1.0)),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_finite_matrix_decodes_to_valid_in_tree(a, top_p, seed):
    n = a.shape[0]
    dag = graph.g_decode(a, np.random.default_rng(seed), top_p=top_p)
    assert dag.n == n and len(dag.edges) == n - 1
    assert dag.is_in_tree()
    assert dag.reaching_end == tuple(range(n))
    assert nx.is_directed_acyclic_graph(dag.to_networkx())
    for node in range(n):
        assert nx.has_path(dag.to_networkx(), node, dag.end)
    if n <= 5:
        assert graph.dag_probability(a, dag, top_p) > 0.0


@settings(max_examples=60, deadline=None)
@given(
    a=st.integers(1, 4).flatmap(lambda n: hnp.arrays(np.float64, (n, n), elements=_mixed)),
    top_p=st.floats(0.0, 1.0),
)
def test_distribution_sums_to_one_for_any_matrix(a, top_p):
    dist = graph.decode_distribution(a, top_p)
    assert sum(dist.values()) == pytest.approx(1.0, abs=1e-9)
    for dag, p in dist.items():
        assert graph.dag_probability(a, dag, top_p) == pytest.approx(p, rel=1e-9, abs=1e-300)


# --- Dag API. -----------------------------------------------------------------------------------

# 0 -> 2, 1 -> 2, 2 -> 4, 3 -> 4, 1 -> 4; node 5 is isolated (does not reach the end node 4).
G = Dag(6, ((2, 4), (0, 2), (1, 4), (3, 4), (1, 2)), 4)


def test_dag_structure():
    assert G.edges == ((0, 2), (1, 2), (1, 4), (2, 4), (3, 4))
    assert G.parents(4) == (1, 2, 3) and G.parents(2) == (0, 1) and G.parents(0) == ()
    assert G.children(1) == (2, 4)
    assert G.topological_order == (0, 1, 2, 3, 4, 5)
    assert G.levels == ((0, 1, 3, 5), (2,), (4,))
    assert G.entry_nodes == (0, 1, 3, 5)
    assert G.reaching_end == (0, 1, 2, 3, 4)
    assert not G.is_in_tree()
    order = G.topological_order
    for src, dst in G.edges:
        assert order.index(src) < order.index(dst)


def test_levels_use_longest_path():
    dag = Dag(4, ((0, 1), (1, 2), (0, 2), (2, 3)), 3)
    assert dag.levels == ((0,), (1,), (2,), (3,))
    assert graph.chain([3, 1, 0, 2]).topological_order == (3, 1, 0, 2)


@pytest.mark.parametrize(
    ("n", "edges", "end", "match"),
    [
        (3, ((0, 1), (1, 2), (2, 0)), 1, "end node"),
        (3, ((0, 1), (1, 0), (0, 2)), 2, "cycle"),
        (3, ((0, 3),), 2, "out of range"),
        (3, ((1, 1),), 2, "self-loop"),
        (3, ((0, 1), (0, 1)), 1, "duplicate"),
        (3, (), 3, "out of range"),
        (0, (), 0, "at least one"),
    ],
)
def test_dag_validation(n, edges, end, match):
    with pytest.raises(ValueError, match=match):
        Dag(n, edges, end)


def test_dag_equality_and_hash_independent_of_edge_order():
    other = Dag(6, tuple(reversed(G.edges)), 4)
    assert other == G and hash(other) == hash(G)
    assert other.stable_hash() == G.stable_hash()
    assert Dag(6, G.edges, 2 + 3).stable_hash() != Dag(6, G.edges[:-1], 4).stable_hash()
    # A fixed value: the same in every process, Python version and PYTHONHASHSEED.
    assert graph.chain(3).to_json() == '{"edges":[[0,1],[1,2]],"end":2,"n":3}'
    expected = "aaac7c01eb8849eb3cf30509530492eb3c83cc6311baa8714eb93652ea239e3c"
    assert graph.chain(3).stable_hash() == expected


def test_json_and_networkx_round_trip():
    for dag in [G, graph.chain(5), graph.star(3), graph.fan_in(2), Dag(1, (), 0)]:
        assert Dag.from_json(dag.to_json()) == dag
        assert json.loads(dag.to_json())["end"] == dag.end
        assert Dag.from_networkx(dag.to_networkx()) == dag
        g = dag.to_networkx()
        assert set(g.edges) == set(dag.edges) and g.graph["end"] == dag.end
    g = nx.DiGraph([(0, 1), (2, 1)])
    assert Dag.from_networkx(g) == Dag(3, ((0, 1), (2, 1)), 1)
    with pytest.raises(ValueError, match="sinks"):
        Dag.from_networkx(nx.DiGraph([(0, 1), (0, 2)]))


def test_fixed_structures():
    assert graph.chain(3) == Dag(3, ((0, 1), (1, 2)), 2)
    assert graph.chain([2, 0, 1]) == Dag(3, ((2, 0), (0, 1)), 1)
    s = graph.star(8)
    assert s.n == 10 and s.end == 9
    assert s.levels == ((0,), tuple(range(1, 9)), (9,))
    assert graph.fan_in(3).levels == ((0, 1, 2), (3,))
    assert graph.from_edges(3, np.array([[0, 2], [1, 2]]), np.int64(2)) == Dag(
        3, ((0, 2), (1, 2)), 2
    )
    with pytest.raises(ValueError, match="permutation"):
        graph.chain([0, 0, 1])


def test_prune_and_l1():
    a = np.array([[0.0, 0.05, 0.3], [-0.4, 0.0, 0.1], [0.2, 0.11, 0.0]])
    np.testing.assert_array_equal(
        graph.prune(a, 0.1), [[0.0, 0.0, 0.3], [0.0, 0.0, 0.0], [0.2, 0.11, 0.0]]
    )
    assert graph.l1_penalty(a, 0.5) == pytest.approx(0.5 * 1.16)
    batch = np.stack([a, 2 * a])
    np.testing.assert_allclose(graph.l1_penalty(batch, 1.0), [1.16, 2.32])
