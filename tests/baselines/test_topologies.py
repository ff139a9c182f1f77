"""The fixed structures the role baselines build (hs_jax.methods.topologies), edge by edge."""

import pytest

from hs_jax.methods import topologies
from hs_jax.swarm.graph import Dag


def test_chain_puts_the_order_on_nodes_of_a_fixed_chain():
    dag, assignment = topologies.chain([2, 0, 1])
    assert dag.edges == ((0, 1), (1, 2)) and dag.end == 2 and dag.n == 3
    assert assignment == (2, 0, 1)
    single, a = topologies.chain([4])
    assert single == Dag(1, (), 0) and a == (4,)


def test_star_is_one_to_middle_to_one():
    dag, assignment = topologies.star([3, 1, 0, 2])
    assert dag.edges == ((0, 1), (0, 2), (1, 3), (2, 3)) and dag.end == 3
    assert assignment == (3, 1, 0, 2)
    dag, _ = topologies.star([0, 1, 2])
    assert dag.edges == ((0, 1), (1, 2)) and dag.end == 2
    with pytest.raises(ValueError, match="at least 3 nodes"):
        topologies.star([0, 1])


def test_dense_has_every_forward_edge():
    dag = topologies.dense(4)
    assert dag.edges == ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)) and dag.end == 3
    assert topologies.dense(1) == Dag(1, (), 0)
    with pytest.raises(ValueError):
        topologies.dense(0)


def test_without_edges_removes_only_existing_edges():
    dag = topologies.without_edges(topologies.dense(3), [(0, 2)])
    assert dag.edges == ((0, 1), (1, 2)) and dag.end == 2 and dag.n == 3
    with pytest.raises(ValueError, match=r"\(2, 0\)"):
        topologies.without_edges(dag, [(2, 0)])


def test_reaching_end_drops_and_renumbers_cut_off_nodes():
    # 1 -> 2 feeds nothing once 2 -> 3 is gone: only 0 -> 3 runs.
    dag = Dag(4, ((0, 3), (1, 2)), 3)
    sub, kept = topologies.reaching_end(dag)
    assert kept == (0, 3) and sub == Dag(2, ((0, 1),), 1)
    system = topologies.keep_reaching(dag, (7, 8, 9, 5))
    assert system == (Dag(2, ((0, 1),), 1), (7, 5))
    # A system whose every node reaches the end is returned as it is.
    full = topologies.dense(3)
    assert topologies.keep_reaching(full, (2, 1, 0)) == (full, (2, 1, 0))
    with pytest.raises(ValueError):
        topologies.keep_reaching(full, (0, 1))
