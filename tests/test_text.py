"""Host text handling: the long-prompt policy, prompt ids as run, continuations and reasons."""

import numpy as np
import pytest
from test_engine import TOK

from hs_jax.engine import text


def test_long_prompt_policy():
    with pytest.raises(ValueError, match="more than the allowed 3"):
        text.fit_prompts([[1, 2, 3, 4]], 3, truncate="error")
    assert text.fit_prompts([[1, 2, 3, 4], [5]], 3, truncate="left") == [[2, 3, 4], [5]]
    with pytest.raises(ValueError, match="empty"):
        text.fit_prompts([[]], 3)


def test_prompts_and_continuations():
    ids = text.encode_prompts(TOK, ["ab", "c"], add_bos=True, max_len=2, truncate="left")
    assert ids == [TOK.encode("ab"), [2] + TOK.encode("c")]
    rows = [np.asarray(t) for t in (TOK.encode("hi!more"), TOK.encode("ok") + [1])]
    rows.append(np.asarray(TOK.encode("long")))
    texts, reasons = text.continuations(TOK, rows, [("!",), ("!",), ()], eos_ids=(1,))
    assert texts == ["hi", "ok", "long"]
    assert reasons == ["stop", "eos", "length"]
    assert text.vocab_texts(TOK, 100)[98] == "\n\n"
