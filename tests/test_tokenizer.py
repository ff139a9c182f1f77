"""Gemma tokenizer: built from GGUF metadata with `tokenizers` only, cached on disk, reloaded
from the cache without rebuilding (offline), and never importing transformers or torch.
Equality with transformers' own GGUF tokenizer is tested in test_tokenizer_parity.py."""

import shutil
import subprocess
import sys
import textwrap

import gguf
import numpy as np
import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

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
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenizer_cache")


@pytest.fixture(scope="module")
def ours(gemma3_270m_gguf, cache_dir):
    """Built from the GGUF into an empty cache."""
    return tokenizer_lib.load_tokenizer(gemma3_270m_gguf, cache_dir=cache_dir)


# -- the real Gemma 3 270M file ------------------------------------------------------------


@pytest.mark.slow
def test_known_ids(ours):
    """Ids transformers gives for these strings (pinned; the parity tests compare in bulk)."""
    assert ours("Hello world")["input_ids"] == [2, 9259, 1902]
    assert ours.encode("Hello world", add_special_tokens=False) == [9259, 1902]
    # Two spaces, a newline run (a user-defined token), and a character spelled in bytes.
    assert ours("  x\n\n\U00020001", add_special_tokens=False)["input_ids"] == [
        138, 236781, 108, 478, 398, 366, 367
    ]  # fmt: skip
    assert all(row[0] == 2 for row in ours(TEXTS, add_special_tokens=True)["input_ids"])
    assert len(ours) == 262_144 and ours.is_fast


@pytest.mark.slow
def test_special_ids_and_round_trip(ours):
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (2, 1, 0)
    assert ours.convert_ids_to_tokens([105, 106]) == ["<start_of_turn>", "<end_of_turn>"]
    assert ours.convert_ids_to_tokens(2) == "<bos>"
    ids = ours("<start_of_turn>user\nhi<end_of_turn>", add_special_tokens=True)["input_ids"]
    assert ids == [2, 105, 2364, 107, 2202, 106]  # control tokens are single ids
    assert ours.decode(ids, skip_special_tokens=True) == "user\nhi"
    assert ours.decode(ids) == "<bos><start_of_turn>user\nhi<end_of_turn>"
    for text in TEXTS:
        ids = ours(text, add_special_tokens=True)["input_ids"]
        assert ours.decode(ids + [1], skip_special_tokens=False) == f"<bos>{text}<eos>"
        if "<start_of_turn>" not in text:
            assert ours.decode(np.asarray(ids + [1]), skip_special_tokens=True) == text
    rows = ours(TEXTS, add_special_tokens=False)["input_ids"]
    assert ours.batch_decode(rows, skip_special_tokens=False) == TEXTS


@pytest.mark.slow
def test_cache_reused_without_rebuilding(ours, gemma3_270m_gguf, cache_dir, monkeypatch):
    """The second load reads tokenizer.json from the cache; so does loading that directory."""
    entry = tokenizer_lib.tokenizer_cache_dir(gemma3_270m_gguf, cache_dir)
    assert (entry / "tokenizer.json").is_file()
    assert [p.name for p in cache_dir.iterdir()] == [entry.name]  # no temporary left behind

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
def test_old_cache_format_not_reused(gemma3_270m_gguf, tmp_path):
    """An entry under the key transformers' builder used (sha256 only) is left alone."""
    from hs_jax.models.gguf_io import sha256_file

    old = tmp_path / sha256_file(gemma3_270m_gguf)[:32]
    old.mkdir()
    (old / "tokenizer.json").write_text("not a tokenizer")
    tok = tokenizer_lib.load_tokenizer(gemma3_270m_gguf, cache_dir=tmp_path)
    assert tok("Hello world")["input_ids"] == [2, 9259, 1902]
    assert tokenizer_lib.tokenizer_cache_dir(gemma3_270m_gguf, tmp_path) != old


@pytest.mark.slow
def test_checkpoint_and_gguf_directories(ours, gemma3_270m_gguf, cache_dir, tmp_path):
    """An HF-style folder with tokenizer.json, and a folder holding one .gguf file."""
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    entry = tokenizer_lib.tokenizer_cache_dir(gemma3_270m_gguf, cache_dir)
    shutil.copy(entry / "tokenizer.json", checkpoint / "tokenizer.json")
    (checkpoint / "config.json").write_text("{}")
    assert tokenizer_lib.load_tokenizer(checkpoint)(TEXTS)["input_ids"] == ours(TEXTS)["input_ids"]

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.gguf").symlink_to(gemma3_270m_gguf)
    tok = tokenizer_lib.load_tokenizer(folder, cache_dir=cache_dir)
    assert tok(TEXTS)["input_ids"] == ours(TEXTS)["input_ids"]


@pytest.mark.slow
def test_pypi_name(ours, cache_dir, monkeypatch):
    monkeypatch.setattr(tokenizer_lib, "_build_from_gguf", None)  # must come from the cache
    tok = tokenizer_lib.load_tokenizer(PYPI_MODEL_NAME, cache_dir=cache_dir)
    assert tok(TEXTS)["input_ids"] == ours(TEXTS)["input_ids"]


_NO_TORCH = """
import importlib.abc, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"torch", "transformers", "peft", "accelerate"}:
            raise ImportError(f"{name} is blocked")
        return None

sys.meta_path.insert(0, Blocker())
from hs_jax.models.tokenizer import load_tokenizer

tok = load_tokenizer(sys.argv[1], cache_dir=sys.argv[2])
print(tok("Hello world")["input_ids"], tok.decode([2, 9259, 1902], skip_special_tokens=True))
"""


@pytest.mark.slow
def test_builds_without_transformers_or_torch(gemma3_270m_gguf, tmp_path):
    """The runtime path (an empty cache: a full build) with those packages made unimportable."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_NO_TORCH), str(gemma3_270m_gguf), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[2, 9259, 1902] Hello world"


# -- small synthetic files -----------------------------------------------------------------

_PIECES = ["\u2581", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "hell", "hello", "\u2581w"]
_PIECES += ["or", "\u2581wor", "ld", "\u2581world", "x"]


def _tiny_gguf(path, *, bos=2, model="llama"):
    """A tokenizer-only GGUF: Gemma's layout of specials, a control and a user-defined token,
    a run of spaces stored as spaces, the 256 byte tokens, and a few pieces."""
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "\n", "  "]
    types = [3, 3, 3, 3, 3, 3, 4, 4]
    tokens += [f"<0x{b:02X}>" for b in range(256)] + _PIECES
    types += [6] * 256 + [1] * len(_PIECES)
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_string("tokenizer.ggml.model", model)
    writer.add_array("tokenizer.ggml.tokens", tokens)
    writer.add_array("tokenizer.ggml.scores", [0.0] * len(tokens))
    writer.add_array("tokenizer.ggml.token_type", types)
    writer.add_uint32("tokenizer.ggml.bos_token_id", bos)
    writer.add_uint32("tokenizer.ggml.eos_token_id", 1)
    writer.add_uint32("tokenizer.ggml.padding_token_id", 0)
    writer.add_uint32("tokenizer.ggml.unknown_token_id", 3)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tokens


def test_tiny_gguf(tmp_path):
    tokens = _tiny_gguf(tmp_path / "tiny.gguf")
    tok = tokenizer_lib.load_tokenizer(tmp_path / "tiny.gguf", cache_dir=tmp_path / "cache")
    ids = tok.encode("hello world\n\n  <start_of_turn>é", add_special_tokens=True)
    # Newlines and <start_of_turn> are matched whole; the run of spaces is the respelled
    # vocabulary entry; é is not in the vocabulary, so it is spelled in bytes.
    assert tok.convert_ids_to_tokens(ids) == [
        "<bos>", "hello", "\u2581world", "\n", "\n", "\u2581\u2581", "<start_of_turn>", "<0xC3>",
        "<0xA9>",
    ]  # fmt: skip
    assert ids[5] == tokens.index("  ")
    assert tok.decode(ids, skip_special_tokens=True) == "hello world\n\n  é"
    assert tok.decode(ids) == "<bos>hello world\n\n  <start_of_turn>é"
    assert len(tok) == len(tokens)


def test_tiny_gguf_rejected(tmp_path):
    _tiny_gguf(tmp_path / "bos.gguf", bos=4)
    with pytest.raises(ValueError, match="bos token id 4"):
        tokenizer_lib.load_tokenizer(tmp_path / "bos.gguf", cache_dir=tmp_path)
    _tiny_gguf(tmp_path / "gpt2.gguf", model="gpt2")
    with pytest.raises(ValueError, match="'gpt2'"):
        tokenizer_lib.load_tokenizer(tmp_path / "gpt2.gguf", cache_dir=tmp_path)


def test_derive_merges_order():
    """Earlier tokens first; within a token, the longer left piece first."""
    vocab = {t: i for i, t in enumerate(["a", "b", "c", "ab", "abc", "bc", "ca"])}
    assert tokenizer_lib.derive_merges(vocab) == [
        ("a", "b"), ("ab", "c"), ("a", "bc"), ("b", "c"), ("c", "a")
    ]  # fmt: skip


def test_directory_without_gemma_specials(tmp_path):
    vocab = {"<pad>": 0, "<eos>": 1, "<s>": 2, "<unk>": 3}
    Tokenizer(WordLevel(vocab, unk_token="<unk>")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="token 2 is '<s>', expected '<bos>'"):
        tokenizer_lib.load_tokenizer(tmp_path)


def test_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        tokenizer_lib.load_tokenizer(tmp_path / "nothing_here")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        tokenizer_lib.load_tokenizer(tmp_path)
