"""Tokenizer from the real Gemma 3 270M GGUF: same ids as transformers' GGUF tokenizer, cached
on disk, reloaded from the cache without the GGUF conversion (offline)."""

import pytest

from hs_jax.models import tokenizer as tokenizer_lib
from hs_jax.models.gguf_io import PYPI_MODEL_NAME

TEXTS = [
    "Hello world",
    "The capital of France is Paris.\n\nIt lies on the Seine.",
    "  leading spaces, trailing tabs\t\t",
    "Unicode: héllo naïve café, 日本語のテキスト, Ελληνικά, emoji 🤖🚀 and math ∑ x² ≤ ∞",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "def f(x):\n    return x ** 2  # square\n",
    "",
]


@pytest.fixture(scope="module")
def reference(gemma3_270m_gguf):
    """transformers' own tokenizer built from the GGUF, no cache involved."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        str(gemma3_270m_gguf.parent), gguf_file=gemma3_270m_gguf.name
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenizer_cache")


@pytest.fixture(scope="module")
def ours(gemma3_270m_gguf, cache_dir):
    """Built from the GGUF into an empty cache."""
    return tokenizer_lib.load_tokenizer(gemma3_270m_gguf, cache_dir=cache_dir)


@pytest.mark.slow
def test_ids_equal_transformers(ours, reference):
    got = ours(TEXTS, add_special_tokens=True)["input_ids"]
    want = reference(TEXTS, add_special_tokens=True)["input_ids"]
    assert got == want
    assert all(row[0] == 2 for row in got)  # BOS added
    assert ours.is_fast


@pytest.mark.slow
def test_special_ids_and_round_trip(ours):
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (2, 1, 0)
    assert ours.convert_ids_to_tokens([105, 106]) == ["<start_of_turn>", "<end_of_turn>"]
    ids = ours("<start_of_turn>user\nhi<end_of_turn>", add_special_tokens=True)["input_ids"]
    assert ids[:2] == [2, 105] and 106 in ids  # control tokens are single ids
    for text in TEXTS:
        if "<start_of_turn>" in text:
            continue
        ids = ours(text, add_special_tokens=True)["input_ids"]
        assert ours.decode(ids + [1], skip_special_tokens=True) == text


@pytest.mark.slow
def test_cache_reused_without_gguf_conversion(ours, gemma3_270m_gguf, cache_dir, monkeypatch):
    """The second load reads tokenizer.json from the cache (HF_HUB_OFFLINE=1 from conftest)."""
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    entry = tokenizer_lib.tokenizer_cache_dir(gemma3_270m_gguf, cache_dir)
    assert (entry / "tokenizer.json").is_file()

    def no_build(*args, **kwargs):
        raise AssertionError("the GGUF vocabulary was converted again")

    monkeypatch.setattr(tokenizer_lib, "_build_from_gguf", no_build)
    again = tokenizer_lib.load_tokenizer(gemma3_270m_gguf, cache_dir=cache_dir)
    from_dir = tokenizer_lib.load_tokenizer(entry)  # a directory holding tokenizer.json
    want = ours(TEXTS)["input_ids"]
    assert again(TEXTS)["input_ids"] == want
    assert from_dir(TEXTS)["input_ids"] == want
    assert (from_dir.bos_token_id, from_dir.eos_token_id, from_dir.pad_token_id) == (2, 1, 0)


@pytest.mark.slow
def test_pypi_name(ours, cache_dir, monkeypatch):
    monkeypatch.setattr(tokenizer_lib, "_build_from_gguf", None)  # must come from the cache
    tok = tokenizer_lib.load_tokenizer(PYPI_MODEL_NAME, cache_dir=cache_dir)
    assert tok(TEXTS)["input_ids"] == ours(TEXTS)["input_ids"]


def test_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        tokenizer_lib.load_tokenizer(tmp_path / "nothing_here")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        tokenizer_lib.load_tokenizer(tmp_path)
