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


@pytest.mark.parametrize("family", ["mistral", "llama", "qwen2", "gemma3"])
def test_token_texts_alone_and_in_context(family):
    """A sentencepiece tokenizer (Mistral, Llama 2) drops a token's leading space when it is
    decoded alone; inside a continuation the space is there. The byte-level and Gemma
    tokenizers decode a token the same either way."""
    from hs_jax.models.tiny_vocab import tiny_tokenizer, tiny_vocab_size

    tok = tiny_tokenizer(family)
    size = tiny_vocab_size(family)
    alone = text.vocab_texts(tok, size)
    in_context = text.vocab_texts_in_context(tok, size)
    ids = tok.encode("the answer is yes", add_special_tokens=False)
    answer = next(i for i in ids if alone[i].strip() == "answer")
    assert in_context[answer] == " answer"
    assert alone[answer] == ("answer" if family == "mistral" else " answer")
    # What the host decodes: a continuation starting with the token, and one with it second.
    assert text.decode_batch(tok, [[answer]])[0] == alone[answer]
    assert text.decode_batch(tok, [ids])[0] == "the answer is yes"
    assert (alone == in_context) == (family != "mistral")
