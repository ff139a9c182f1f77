"""SearchConfig.schedule='authors' (the authors' loop order) against 'hs_jax': which weights each
step scores, a step-by-step reference of the authors' rounds, the stopping rules, the authors'
restart rule of the PSO, resume, and where the two schedules agree and differ."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hs_jax.store import checkpointing
from hs_jax.swarm import graph, jfk, pso, search

N_EXPERTS, N_GRAPHS, N_ASSIGNMENTS = 4, 4, 3  # N != M: a call's length says which step it is
TARGET = graph.from_edges(4, [(0, 3), (1, 3), (2, 3)], end=3)


def _experts():
    rng = np.random.default_rng(3)
    return {
        "a": rng.normal(size=(N_EXPERTS, 3, 2)).astype(np.float32),
        "b": rng.normal(size=(N_EXPERTS, 5)).astype(np.float32),
    }


def _utility(systems, weights):
    """Edge overlap with TARGET minus half the norm of the expert at the end node: the weights
    change which graph of a role-step (identity assignment) scores best."""
    norm = sum(
        np.sqrt((np.asarray(leaf, np.float64) ** 2).reshape(N_EXPERTS, -1).sum(1))
        for leaf in jax.tree.leaves(weights)
    )
    return np.array(
        [len(set(d.edges) & set(TARGET.edges)) - 0.5 * norm[a[d.end]] for d, a in systems]
    )


def _cfg(**kw):
    base = dict(
        n_graphs=N_GRAPHS,
        n_assignments=N_ASSIGNMENTS,
        max_iterations=4,
        patience=10,
        schedule="authors",
        seed=2,
    )
    base.update(kw)
    return search.SearchConfig(**base)


def _run(cfg, score=_utility, **kw):
    return search.run_search(_experts(), score, cfg, progress=False, **kw)


def _fp(tree) -> tuple[bytes, ...]:
    """Exact fingerprint of a weight pytree (its leaves' bytes)."""
    return tuple(np.asarray(leaf).tobytes() for leaf in jax.tree.leaves(tree))


class Recorder:
    """Wraps a score function; records (step, fingerprint of the weights, utilities) per call."""

    def __init__(self, score=_utility):
        self.score = score
        self.calls = []

    def __call__(self, systems, weights):
        u = np.asarray(self.score(systems, weights), np.float64)
        step = "role" if len(systems) == N_GRAPHS else "weight"
        self.calls.append((step, _fp(weights), u))
        return u

    def fingerprints(self, step):
        return [f for s, f, _ in self.calls if s == step]


# ----------------------------------------------------------------------------- scored weights


def test_authors_role_round_scores_the_weights_of_the_previous_weight_round():
    rec = Recorder()
    r = _run(_cfg(), rec)
    assert r.iterations == 5 and r.stop_reason == "max_iterations"  # rounds 0..max_iterations
    assert [s for s, _, _ in rec.calls] == ["role", "weight"] * 5
    role, weight = rec.fingerprints("role"), rec.fingerprints("weight")
    # Round 0 scores the experts on both sides; round t's role-step sees the weights the
    # weight-step of round t - 1 scored; every weight-step scores freshly moved weights.
    assert role[0] == weight[0] == _fp(_experts())
    for t in range(1, 5):
        assert role[t] == weight[t - 1]
        assert weight[t] != weight[t - 1]
    assert _fp(r.weights.x) == weight[-1]  # told, not moved, after the last round
    assert [h["role"]["weight_moves"] for h in r.history] == [0, 0, 1, 2, 3]
    assert [h["weight"]["weight_moves"] for h in r.history] == [0, 1, 2, 3, 4]
    assert [h["role"]["moved"] for h in r.history] == [False] + [True] * 4
    assert [h["weight"]["moved"] for h in r.history] == [False] + [True] * 4
    assert int(r.roles.iteration) == 4 and int(r.weights.iteration) == 4
    # Each weight-step fills the best graph of its own round's role-step.
    for h in r.history:
        assert h["weight"]["dag"] == h["role"]["dags"][h["role"]["best_index"]]
    # The best system keeps the weights it was scored with, and is the best of all calls.
    hits = [f for _, f, u in rec.calls if np.nanmax(u) == r.best.utility]
    assert _fp(r.best.weights) in hits
    assert r.best.utility == max(float(np.nanmax(u)) for _, _, u in rec.calls)


def test_hs_jax_scores_both_steps_of_an_iteration_with_the_same_weights():
    rec = Recorder()
    r = _run(_cfg(schedule="hs_jax"), rec)
    assert r.iterations == 4 and [s for s, _, _ in rec.calls] == ["role", "weight"] * 4
    assert rec.fingerprints("role") == rec.fingerprints("weight")
    assert [h["role"]["weight_moves"] for h in r.history] == [0, 1, 2, 3]
    assert [h["weight"]["weight_moves"] for h in r.history] == [0, 1, 2, 3]


def test_authors_rounds_match_a_step_by_step_reference():
    """The authors' rounds written out with pso / graph / jfk (module docstring): round 0 tells
    both swarms without moving; round t moves, scores, tells the role swarm (weights as left by
    round t - 1), then moves, scores, tells the weight swarm on round t's best graph."""
    roles_cfg = pso.PSOConfig(restart_patience=0.5, patience=4, restart_rule="authors")
    weights_cfg = pso.PSOConfig(phi_w=0.05, step=0.5, init_velocity="random")
    cfg = _cfg(roles_pso=roles_cfg, weights_pso=weights_cfg, max_iterations=5)
    r = _run(cfg)

    key = jax.random.key(cfg.seed)
    key, k_adj, k_roles, k_weights = jax.random.split(key, 4)
    roles = pso.init(search.init_adjacency(k_adj, N_GRAPHS, N_EXPERTS), k_roles, roles_cfg)
    weights = pso.init(_experts(), k_weights, weights_cfg)
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    previous = None
    identity = tuple(range(N_EXPERTS))
    for t in range(cfg.max_iterations + 1):
        if t:
            key, k_role, k_weight = jax.random.split(key, 3)
        rng.random(2)  # the dropout uniforms
        if t:
            roles = pso.step(roles, k_role, roles_cfg)
        dags = [graph.g_decode(a, rng, cfg.top_p) for a in np.asarray(roles.x, np.float64)]
        u_role = _utility([(d, identity) for d in dags], weights.x)
        roles = pso.tell(roles, u_role)
        best_dag = dags[int(np.argmax(u_role))]
        if t:
            weights = pso.step(weights, k_weight, weights_cfg)
        assignments = jfk.sample_assignments(N_EXPERTS, N_EXPERTS, N_ASSIGNMENTS, rng)
        u_weight = _utility([(best_dag, tuple(a)) for a in assignments], weights.x)
        previous = jfk.jfk_scores(assignments, u_weight, N_EXPERTS, previous)
        weights = pso.tell(weights, previous)

        h = r.history[t]
        assert h["iteration"] == t
        assert h["role"]["dags"] == [d.to_dict() for d in dags]
        assert h["role"]["utilities"] == u_role.tolist()
        assert h["weight"]["assignments"] == assignments.tolist()
        assert h["weight"]["utilities"] == u_weight.tolist()
        assert h["role_global_best"] == float(roles.g_util)
        assert h["weight_global_best"] == float(weights.g_util)
    for a, b in ((r.roles, roles), (r.weights, weights)):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------- stopping


def _authors_stops(entries, patience):
    """The authors' stop check on a stop history (plain Python)."""
    return len(entries) > patience and len(set(entries[-patience:])) == 1


def _plateau(k: int):
    """Utility = min(round, k) for every system, the round counted from the role-step calls."""
    rounds = [-1]

    def score(systems, weights):
        if len(systems) == N_GRAPHS:
            rounds[0] += 1
        return np.full(len(systems), float(min(rounds[0], k)))

    return score


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_stop_rule_when_nothing_improves_after_round_0(patience):
    cfg = dict(max_iterations=20, patience=patience)
    a = _run(_cfg(**cfg), _plateau(0))
    # History entries [u0] * (patience + 1) are needed: more than `patience` entries.
    assert a.stop_reason == "patience" and a.iterations == patience + 1
    assert [h["role_global_best"] for h in a.history] == [0.0] * (patience + 1)
    h = [hh["role_global_best"] for hh in a.history]
    assert [_authors_stops(h[:i], patience) for i in range(1, len(h) + 1)] == [False] * (
        len(h) - 1
    ) + [True]
    # hs_jax: iteration 0 improves, then `patience` iterations without improvement.
    b = _run(_cfg(schedule="hs_jax", **cfg), _plateau(0))
    assert b.stop_reason == "patience" and b.iterations == patience + 1


@pytest.mark.parametrize("k", [1, 2])
def test_stop_rule_after_a_late_improvement(k):
    patience = 3
    cfg = dict(max_iterations=20, patience=patience)
    a = _run(_cfg(**cfg), _plateau(k))
    # Rounds 0..k improve the role swarm's global best, then patience - 1 rounds do not.
    assert a.stop_reason == "patience" and a.iterations == k + patience
    h = [hh["role_global_best"] for hh in a.history]
    assert h == [float(min(t, k)) for t in range(k + patience)]
    assert not any(_authors_stops(h[:i], patience) for i in range(1, len(h)))
    assert _authors_stops(h, patience)
    # hs_jax: the all-time best improves in iterations 0..k, then `patience` stalled iterations.
    b = _run(_cfg(schedule="hs_jax", **cfg), _plateau(k))
    assert b.stop_reason == "patience" and b.iterations == k + patience + 1


def test_max_iterations_counts_the_moving_rounds():
    a = _run(_cfg(max_iterations=3, patience=2), _plateau(10**6))
    assert a.stop_reason == "max_iterations" and a.iterations == 4
    assert [h["iteration"] for h in a.history] == [0, 1, 2, 3]
    b = _run(_cfg(schedule="hs_jax", max_iterations=3, patience=2), _plateau(10**6))
    assert b.stop_reason == "max_iterations" and b.iterations == 3


def test_patience_1_stops_after_round_1_even_while_improving():
    """The last 1 entry of a stop history is always "all equal": patience=1 stops as soon as
    the history has 2 entries, whatever they are."""
    a = _run(_cfg(max_iterations=10, patience=1), _plateau(10**6))
    assert a.stop_reason == "patience" and a.iterations == 2
    assert [h["role_global_best"] for h in a.history] == [0.0, 1.0]


def test_stop_rule_ignores_the_weight_swarm_and_the_all_time_best():
    """Only the weight-step improves (the role utility is flat): 'authors' stops on the role
    swarm's plateau, hs_jax goes on while the all-time best rises."""
    calls = [0]

    def weight_rises(systems, weights):
        calls[0] += 1
        return np.full(len(systems), 0.0 if len(systems) == N_GRAPHS else float(calls[0]))

    a = _run(_cfg(max_iterations=8, patience=2), weight_rises)
    assert a.stop_reason == "patience" and a.iterations == 3
    assert all(h["improved"] for h in a.history)
    calls[0] = 0
    b = _run(_cfg(schedule="hs_jax", max_iterations=8, patience=2), weight_rises)
    assert b.stop_reason == "max_iterations" and b.iterations == 8


def test_without_role_step_the_weight_swarm_decides_when_to_stop():
    calls = [0]

    def weight_plateau(systems, weights):  # rises for the first 3 weight-steps, then flat
        calls[0] += 1
        return np.full(len(systems), float(min(calls[0], 3)))

    fixed = graph.chain(N_EXPERTS)
    r = _run(_cfg(role_step=False, max_iterations=20, patience=2), weight_plateau, fixed_dag=fixed)
    # Weight global best per round: 1, 2, 3, 3 -> stop (rounds 2 and 3 are the last 2, equal).
    assert [h["weight_global_best"] for h in r.history] == [1.0, 2.0, 3.0, 3.0]
    assert r.stop_reason == "patience" and r.iterations == 4
    assert all(not h["role"]["ran"] and h["role"]["reason"] == "off" for h in r.history)
    assert all(h["weight"]["dag"] == fixed.to_dict() for h in r.history)
    assert all(h["role_global_best"] is None for h in r.history)


def test_all_nan_utilities_stop_on_patience_without_a_best():
    broken = lambda systems, weights: np.full(len(systems), np.nan)
    r = _run(_cfg(max_iterations=10, patience=2), broken)
    assert r.best is None and r.stop_reason == "patience" and r.iterations == 3
    assert all(h["role_global_best"] is None for h in r.history)


# ----------------------------------------------------------------------------- options


def test_dropout_under_authors_skips_moves_scores_and_stop_entries():
    calls = []

    def counting(systems, weights):
        calls.append(len(systems))
        return np.ones(len(systems))  # flat: the role swarm's global best never changes

    patience = 4
    cfg = _cfg(dropout_role=0.5, dropout_weight=0.5, max_iterations=40, patience=patience)
    r = _run(cfg, counting)
    role_ran = [h["role"]["ran"] for h in r.history]
    weight_ran = [h["weight"]["ran"] for h in r.history]
    assert role_ran[0] and weight_ran[0]  # round 0 is never dropped
    assert not all(role_ran) and not all(weight_ran)
    assert {h["role"].get("reason") for h in r.history if not h["role"]["ran"]} == {"dropout"}
    assert sum(calls) == N_GRAPHS * sum(role_ran) + N_ASSIGNMENTS * sum(weight_ran)
    # Dropped steps do not move their swarm, and add no entry to the stop history.
    assert int(r.roles.iteration) == sum(role_ran) - 1
    assert int(r.weights.iteration) == sum(weight_ran) - 1
    assert r.stop_reason == "patience" and sum(role_ran) == patience + 1 and role_ran[-1]
    # A role-step scores with the weights the last weight move produced.
    moves = np.cumsum([0] + [int(w) for w in weight_ran[1:]])
    for t, h in enumerate(r.history):
        if h["role"]["ran"]:
            assert h["role"]["weight_moves"] == (moves[t - 1] if t else 0)
        if h["weight"]["ran"]:
            assert h["weight"]["weight_moves"] == moves[t]


def test_ablations_and_sparsity_under_authors():
    experts = _experts()
    calls = []

    def counting(systems, weights):
        calls.append(len(systems))
        return _utility(systems, weights)

    # w/o weight: the experts never move and every role-step scores them.
    rec = Recorder(counting)
    r = _run(_cfg(weight_step=False), rec)
    assert calls == [N_GRAPHS] * 5 and set(rec.fingerprints("role")) == {_fp(experts)}
    assert _fp(r.weights.x) == _fp(experts) and _fp(r.best.weights) == _fp(experts)
    assert all(h["weight"]["reason"] == "off" for h in r.history)

    # w/o role, no fixed graph: round 0 scores the initial swarm, which is never told or moved.
    calls.clear()
    r = _run(_cfg(role_step=False), counting)
    assert calls == [N_GRAPHS] + [N_ASSIGNMENTS] * 5
    first = r.history[0]["role"]
    assert first["ran"] and not first["moved"]
    assert all(not h["role"]["ran"] for h in r.history[1:])
    init = search.init_adjacency(jax.random.split(jax.random.key(2), 4)[1], N_GRAPHS, N_EXPERTS)
    np.testing.assert_array_equal(np.asarray(r.roles.x), np.asarray(init))
    assert r.history[-1]["role_global_best"] is None
    chosen = first["dags"][first["best_index"]]
    assert all(h["weight"]["dag"] == chosen for h in r.history)

    # L1 term and pruning: the role swarm is told the objective, its global best tracks it.
    r = _run(_cfg(l1_lambda=0.05, prune_tau=0.3))
    best_objective = -np.inf
    for h in r.history:
        rec_role = h["role"]
        penalty = np.array(rec_role["utilities"]) - np.array(rec_role["objective"])
        assert (penalty > 0).all()
        best_objective = max(best_objective, max(rec_role["objective"]))
        assert h["role_global_best"] == float(np.float32(best_objective))


# ----------------------------------------------------------------------------- restart rule


def _restart_reference(utilities, restart_patience, patience):
    """The authors' restart rule in plain numpy: per step, flags and cooldown counters."""
    threshold = restart_patience * patience
    length = int(restart_patience * patience)
    n = len(utilities[0])
    best = np.full(n, -np.inf)
    stall = np.zeros(n, int)
    cooldown = np.zeros(n, int)
    flags, counters = [], []
    for u in utilities:
        u = np.where(np.isfinite(u), u, -np.inf)
        improved = u > best
        best = np.where(improved, u, best)
        stall = np.where(improved, 0, stall + 1)
        restart = (stall + 1 >= threshold) & (cooldown == 0)
        cooldown = np.where(restart, length, np.maximum(cooldown - 1, 0))
        flags.append(restart.tolist())
        counters.append(cooldown.tolist())
    return flags, counters


def _tree(n):
    rng = np.random.default_rng(0)
    return {"m": rng.normal(size=(n, 2, 3)).astype(np.float32), "v": np.zeros((n, 4), np.float32)}


@pytest.mark.parametrize(
    "restart_patience, patience, after, length",
    [(0.5, 5, 2, 2), (1.0, 3, 2, 3), (0.2, 2, 0, 0), (1.5, 2, 2, 3)],
)
def test_authors_restart_rule_matches_reference(restart_patience, patience, after, length):
    cfg = pso.PSOConfig(
        phi_v=1.0,
        phi_p=0.0,
        phi_g=0.0,
        phi_w=0.0,
        restart_patience=restart_patience,
        patience=patience,
        restart_rule="authors",
    )
    assert cfg.restart_after == after and cfg.restart_cooldown == length
    n = 4
    rng = np.random.default_rng(1)
    utilities = [np.zeros(n)] + [rng.integers(0, 6, size=n).astype(float) for _ in range(13)]
    utilities[0][3] = np.nan  # the first tell counts: a NaN start stalls particle 3 at once
    utilities = [np.array([float(t), 0.0, *u[2:]]) for t, u in enumerate(utilities)]
    want_flags, want_counters = _restart_reference(utilities, restart_patience, patience)

    state = pso.init(_tree(n), jax.random.key(0), cfg)
    flags, counters = [], []
    for t, u in enumerate(utilities):
        state = pso.tell(state, u)
        # Pure inertia with v = 1: a restarted particle lands on its personal best (v = 0),
        # the others on x + 1.
        p = [np.array(leaf) for leaf in jax.tree.leaves(state.p)]
        x = [np.array(leaf) for leaf in jax.tree.leaves(state.x)]
        state = state.replace(v=jax.tree.map(jnp.ones_like, state.v))
        state = pso.step(state, jax.random.key(t), cfg)
        new = [np.asarray(leaf) for leaf in jax.tree.leaves(state.x)]
        flag = []
        for i in range(n):
            at_p = all(np.array_equal(a[i], b[i]) for a, b in zip(new, p, strict=True))
            moved = all(np.allclose(a[i], b[i] + 1.0) for a, b in zip(new, x, strict=True))
            assert at_p != moved
            flag.append(at_p)
        flags.append(flag)
        counters.append(np.asarray(state.cooldown).tolist())
    assert flags == want_flags and counters == want_counters
    # Particle 0 improves on every tell and restarts only where the threshold is 0 (stall 0).
    assert any(f[0] for f in flags) == (after == 0)
    assert any(f[1] for f in flags)  # particle 1 never improves after its first tell


def test_restart_rules_differ_by_one_tell_and_in_their_cooldown():
    hs = pso.PSOConfig(restart_patience=1.0, patience=3, cooldown=1)
    authors = pso.PSOConfig(restart_patience=1.0, patience=3, restart_rule="authors")
    assert (hs.restart_after, hs.restart_cooldown) == (3, 1)
    assert (authors.restart_after, authors.restart_cooldown) == (2, 3)
    assert pso.PSOConfig(restart_rule="authors").restart_after is None
    with pytest.raises(ValueError, match="cooldown"):
        pso.PSOConfig(restart_patience=1.0, restart_rule="authors", cooldown=2)
    with pytest.raises(ValueError, match="restart_rule"):
        pso.PSOConfig(restart_rule="paper")


# ----------------------------------------------------------------------------- config, resume


def test_schedule_is_validated_serialised_and_part_of_the_identity(tmp_path):
    with pytest.raises(ValueError, match="schedule"):
        _cfg(schedule="paper")
    cfg = _cfg(roles_pso=pso.PSOConfig(restart_patience=0.5, restart_rule="authors"))
    d = cfg.to_dict()
    assert d["schedule"] == "authors" and d["roles_pso"]["restart_rule"] == "authors"
    assert search.SearchConfig.from_dict(d) == cfg
    assert search.SearchConfig().schedule == "hs_jax"

    wd = str(tmp_path / "wd")
    _run(_cfg(schedule="hs_jax", max_iterations=1), workdir=wd)
    with pytest.raises(checkpointing.ConfigMismatchError, match="schedule: saved 'hs_jax'"):
        _run(_cfg(max_iterations=1), workdir=wd)


class Killer:
    """The utility, raising KeyboardInterrupt on call ``fail_at`` (a simulated kill)."""

    def __init__(self, score=_utility, fail_at=None):
        self.score, self.fail_at, self.calls = score, fail_at, 0

    def __call__(self, systems, weights):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated kill")
        return self.score(systems, weights)


def _assert_same(a, b):
    assert a.iterations == b.iterations and a.stop_reason == b.stop_reason
    assert json.dumps(a.history) == json.dumps(b.history)
    assert a.best.utility == b.best.utility and a.best.iteration == b.best.iteration
    assert a.best.dag == b.best.dag and a.best.assignment == b.best.assignment
    assert _fp(a.best.weights) == _fp(b.best.weights)
    for sa, sb in ((a.roles, b.roles), (a.weights, b.weights)):
        for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


_RESTARTS = pso.PSOConfig(restart_patience=0.5, patience=4, restart_rule="authors")
_RESUME_CFG = _cfg(
    max_iterations=6,
    dropout_role=0.3,
    dropout_weight=0.3,
    roles_pso=_RESTARTS,
    weights_pso=_RESTARTS,
)


@pytest.fixture(scope="module")
def reference():
    return _run(_RESUME_CFG)


@pytest.mark.parametrize("fail_at", [4, 7, 9])
def test_authors_kill_during_scoring_then_resume_equals_uninterrupted(tmp_path, reference, fail_at):
    wd = str(tmp_path / "wd")
    with pytest.raises(KeyboardInterrupt):
        _run(_RESUME_CFG, Killer(fail_at=fail_at), workdir=wd)
    # Rounds whose calls all finished before the kill.
    per_round = [int(h["role"]["ran"]) + int(h["weight"]["ran"]) for h in reference.history]
    completed = int((np.cumsum(per_round) < fail_at).sum())
    resumed = _run(_RESUME_CFG, workdir=wd)
    assert resumed.resumed_from == completed
    _assert_same(resumed, reference)


def test_authors_resume_before_a_patience_stop(tmp_path):
    """The stop rule reads the checkpointed history: a run killed after round 1 of a plateau
    resumes and stops by patience in the same round as an uninterrupted one."""
    flat = lambda systems, weights: np.ones(len(systems))
    cfg = _cfg(max_iterations=20, patience=3)
    ref = _run(cfg, flat)
    assert ref.stop_reason == "patience" and ref.iterations == 4

    def kill_after_round_1(record):
        if record["iteration"] == 1:
            raise KeyboardInterrupt("killed after the save of round 1")

    wd = str(tmp_path / "wd")
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, flat, workdir=wd, callbacks=[kill_after_round_1])
    resumed = _run(cfg, flat, workdir=wd)
    assert resumed.resumed_from == 2
    _assert_same(resumed, ref)
    scorer = Killer(flat)
    again = _run(cfg, scorer, workdir=wd)  # finished: nothing is scored again
    assert scorer.calls == 0 and again.resumed_from == ref.iterations
    _assert_same(again, ref)


# ----------------------------------------------------------------------------- schedules differ


def test_schedules_agree_on_round_0_and_differ_in_the_weights_of_later_role_steps():
    """Round 0 is hs_jax's iteration 0 (same decode, same W_0, same draws). In round 1 both
    decode the same graphs (same tell, same key, same draws so far), but the authors' role-step
    scores W_0 where hs_jax's scores W_1, the weights the authors' weight-step of round 1 then
    scores. The role swarms are told other utilities from then on, so the runs drift apart
    (here: other graphs from round 2, another best system)."""
    ra, rh = Recorder(), Recorder()
    a = _run(_cfg(max_iterations=8), ra)
    h = _run(_cfg(schedule="hs_jax", max_iterations=8), rh)
    for key in ("role", "weight"):
        assert a.history[0][key]["utilities"] == h.history[0][key]["utilities"]
    assert a.history[1]["role"]["dags"] == h.history[1]["role"]["dags"]
    assert ra.fingerprints("role")[1] == _fp(_experts()) != rh.fingerprints("role")[1]
    assert rh.fingerprints("role")[1] == ra.fingerprints("weight")[1]
    assert a.history[1]["role"]["utilities"] != h.history[1]["role"]["utilities"]
    assert a.history[2]["role"]["dags"] != h.history[2]["role"]["dags"]
    assert a.best.utility != h.best.utility
    assert _fp(a.weights.x) != _fp(h.weights.x)
