"""config.singles_cache: runs of one task and pool share the single experts' scores, and a run
that reads them reports exactly the results and costs of a run that scored them itself."""

import json
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tiny(method, cache=""):
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.method = method
    c.singles_cache = cache
    c.outputs.plots = False
    c.outputs.export_experts = False
    return c


def _comparable(results):
    r = dict(results)
    r.pop("seconds")
    return json.dumps(r, sort_keys=True)


def test_cached_singles_give_the_uncached_results_and_costs(tmp_path):
    import hs_jax

    cache = str(tmp_path / "singles")
    alone = hs_jax.run(_tiny("hs_no_weight"), tmp_path / "alone")
    hs_jax.run(_tiny("hs", cache), tmp_path / "writes")  # scores the singles, keeps them
    kept = list(Path(cache).glob("singles-*.json"))
    assert len(kept) == 1
    shared = hs_jax.run(_tiny("hs_no_weight", cache), tmp_path / "reads")
    assert _comparable(shared) == _comparable(alone)
    assert shared["cost"]["generate_calls"] > 0


def test_the_cache_key_follows_what_the_singles_depend_on(tmp_path):
    import hs_jax

    cache = str(tmp_path / "singles")
    hs_jax.run(_tiny("hs_no_weight", cache), tmp_path / "a")
    other = _tiny("hs_no_weight", cache)
    other.task.max_new_tokens = 2  # the singles' answers change: another key
    hs_jax.run(other, tmp_path / "b")
    assert len(list(Path(cache).glob("singles-*.json"))) == 2
