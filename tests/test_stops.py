"""Stop strings: per-row stop sets, the device tables and check, the exact host cut."""

import jax.numpy as jnp
import numpy as np
import pytest

from hs_jax.engine import stops


def test_stop_tables_and_truncation():
    vocab = ["", "ab", "x\n", "b", "\n"]
    t = stops.build_stop_tables(
        [("\n",), (), ("\n",), ("ab", "\n")], 4, 5, encode=lambda s: [1] if s == "ab" else [2, 4],
        vocab_texts=vocab,
    )  # fmt: skip
    assert t.group[0] == t.group[2] != t.group[1] != t.group[3]
    np.testing.assert_array_equal(t.tokens[t.group[0]], [0, 0, 1, 0, 1])
    np.testing.assert_array_equal(t.tokens[t.group[1]], [0, 0, 0, 0, 0])
    np.testing.assert_array_equal(t.tokens[t.group[3]], [0, 1, 1, 0, 1])
    assert t.seqs.shape[0] == 4 and t.seqs.shape[-1] == 2  # groups and length -> powers of two
    assert [2, 4] in t.seqs[t.group[0]].tolist()  # right aligned
    assert stops.truncate_at_stop("hello\nworld.", ["o", "\n"]) == ("hell", True)
    assert stops.truncate_at_stop("hello", ["z"]) == ("hello", False)


def test_device_check():
    # Rows 0 and 1 stop at "\n" (token 4 or the sequence [2, 4]), row 2 has no stops; EOS = 1.
    t = stops.build_stop_tables(
        [("\n",), ("\n",), ()], 3, 5, encode=lambda s: [2, 4], vocab_texts=None, eos_ids=(1,)
    )
    recent = jnp.asarray([[0, 3], [2, 4], [2, 4]], jnp.int32)
    hits = stops.stop_hits(t, jnp.asarray([3, 4, 4], jnp.int32), recent)
    np.testing.assert_array_equal(hits, [False, True, False])
    hits = stops.stop_hits(t, jnp.asarray([1, 3, 1], jnp.int32), recent)
    np.testing.assert_array_equal(hits, [True, True, True])  # EOS, the sequence, EOS


def test_normalise_stops():
    assert stops.normalise_stops("\n", 2) == [("\n",), ("\n",)]
    assert stops.normalise_stops(["a", "b"], 2) == [("a", "b"), ("a", "b")]
    assert stops.normalise_stops([(), ["x"], "y"], 3) == [(), ("x",), ("y",)]
    with pytest.raises(ValueError, match="2 entries for 3"):
        stops.normalise_stops([(), ["x"]], 3)
