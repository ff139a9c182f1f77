"""Tokenizers of the non-Gemma families (Llama 2 / 3, Mistral, Qwen 2 / 3) against transformers.

No real model file can be downloaded, so the test files are made here, deterministically: a
small sentencepiece-style vocabulary with scores (Llama 2, Mistral) and byte-level BPEs with
merges (Llama 3's and Qwen's pre-tokenizer splits), trained with the `tokenizers` library on
the parity test's synthetic strings, written as GGUF tokenizer metadata (llama.cpp's keys) and
as HF checkpoint folders in each family's style. Ours must give transformers' ids (with and
without special tokens) and texts (decoding with and without skipping special tokens) on a few
thousand varied strings, and transformers' special tokens. Also: the tiny tokenizers of
`tiny_vocab`, and the refusals.
"""

import functools
import json
import random
import re

import gguf
import pytest
from test_tokenizer_parity import synthetic_strings
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from hs_jax.models import tokenizer as tokenizer_lib
from hs_jax.models.gemma_config import FAMILIES
from hs_jax.models.tiny_vocab import tiny_tokenizer, tiny_vocab_size
from hs_jax.models.tokenizer import (
    LLAMA3_SPLIT,
    QWEN2_SPLIT,
    GemmaTokenizer,
    TextTokenizer,
    load_tokenizer,
)

N_STRINGS = 2000
_LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
]  # fmt: skip
_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CHATS = {
    "llama2": "<s>[INST] {u} [/INST] {m} </s>",
    "mistral": "<s>[INST] {u}[/INST] {m}</s>",
    "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{u}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{m}<|eot_id|>",
    "qwen2": "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n{u}<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n{m}<|im_end|>\n",
}


# -- training the test vocabularies ----------------------------------------------------------


@functools.cache
def _corpus() -> tuple[str, ...]:
    return tuple(synthetic_strings(["<x>"], 3000))


@functools.cache
def _byte_level(split: str, size: int = 800) -> tuple[list[str], list[str]]:
    """(tokens by id, merges) of a byte-level BPE trained with this pre-tokenizer split."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return sorted(model["vocab"], key=model["vocab"].get), merges


@functools.cache
def _sentencepiece_pieces(size: int = 700) -> list[str]:
    """Pieces of a sentencepiece-style vocabulary (U+2581 for spaces), best first: the merged
    pieces of a BPE trained on U+2581-spelled text, then its single characters."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first", split=True
    )
    trainer = trainers.BpeTrainer(vocab_size=size, show_progress=False, limit_alphabet=300)
    tok.train_from_iterator(_corpus(), trainer)
    model = json.loads(tok.to_str())["model"]
    merged = ["".join(m) if isinstance(m, list) else m.replace(" ", "") for m in model["merges"]]
    singles = [t for t in sorted(model["vocab"], key=model["vocab"].get) if len(t) == 1]
    return list(dict.fromkeys(merged + singles))


def _sentencepiece_vocab(style: str) -> tuple[list[str], list[int], list[float]]:
    """(tokens, llama.cpp token types, scores) laid out as Llama 2's or Mistral's."""
    tokens, types = ["<unk>", "<s>", "</s>"], [2, 3, 3]
    if style == "mistral":
        tokens += ["[INST]", "[/INST]", "[TOOL_CALLS]", "[control_8]"]
        types += [3, 3, 3, 3]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    pieces = [p for p in _sentencepiece_pieces() if p not in tokens]
    scores = [0.0] * len(tokens) + [-float(i) for i in range(len(pieces))]
    tokens += pieces
    types += [1] * len(pieces)
    if style == "llama2":  # a user-defined token, matched whole but not special
        tokens.append("<|user_def|>")
        types.append(4)
        scores.append(0.0)
    return tokens, types, scores


def write_gguf(path, style: str, **overrides) -> list[str]:
    """A tokenizer-only GGUF of `style` (llama2, mistral, llama3, qwen2); returns its tokens."""
    arch = {"llama2": "llama", "mistral": "llama", "llama3": "llama", "qwen2": "qwen2"}[style]
    keys = {}
    if style in ("llama2", "mistral"):
        tokens, types, scores = _sentencepiece_vocab(style)
        keys.update(model="llama", scores=scores, bos_token_id=1, eos_token_id=2)
        keys.update(unknown_token_id=0, add_bos_token=True)
    else:
        tokens, merges = _byte_level(LLAMA3_SPLIT if style == "llama3" else QWEN2_SPLIT)
        tokens = list(tokens)
        n = len(tokens)
        types = [1] * n
        if style == "llama3":
            tokens += _LLAMA3_SPECIALS
            types += [3] * len(_LLAMA3_SPECIALS)
            keys.update(pre="llama-bpe", bos_token_id=n, eos_token_id=n + 6, eot_token_id=n + 6)
            keys.update(eom_token_id=n + 5, add_bos_token=True)
        else:
            tokens += [*_QWEN_SPECIALS, "<think>", "</think>"]
            types += [3, 3, 3, 4, 4]
            keys.update(pre="qwen2", bos_token_id=n, eos_token_id=n + 2, padding_token_id=n)
            keys.update(add_bos_token=False)
        keys.update(model="gpt2", merges=merges)
    keys.update(overrides)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("tokenizer.ggml.model", keys.pop("model"))
    pre = keys.pop("pre", None)
    if pre is not None:
        writer.add_string("tokenizer.ggml.pre", pre)
    writer.add_array("tokenizer.ggml.tokens", tokens)
    writer.add_array("tokenizer.ggml.token_type", types)
    for name in ("scores", "merges"):
        if name in keys:
            writer.add_array(f"tokenizer.ggml.{name}", keys.pop(name))
    for name, value in keys.items():
        if isinstance(value, bool):
            writer.add_bool(f"tokenizer.ggml.{name}", value)
        elif value is not None:
            writer.add_uint32(f"tokenizer.ggml.{name}", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tokens


def _added_token(content: str) -> dict:
    return {
        "__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
        "rstrip": False, "single_word": False, "special": True,
    }  # fmt: skip


def write_hf_folder(path, style: str, *, legacy: bool = False, **config_changes) -> Tokenizer:
    """An HF checkpoint's tokenizer files in `style` (llama2, mistral, llama3, qwen2): the
    family's tokenizer.json pipeline, tokenizer_config.json and generation_config.json."""
    path.mkdir(parents=True, exist_ok=True)
    if style in ("llama3", "qwen2"):
        split = LLAMA3_SPLIT if style == "llama3" else QWEN2_SPLIT
        tokens, merges = _byte_level(split)
        tok = Tokenizer(
            models.BPE(
                vocab={t: i for i, t in enumerate(tokens)},
                merges=[tuple(m.split(" ")) for m in merges],
                continuing_subword_prefix="",
                end_of_word_suffix="",
                fuse_unk=False,
            )
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        specials = _LLAMA3_SPECIALS if style == "llama3" else _QWEN_SPECIALS
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
        ids = {s: tok.token_to_id(s) for s in specials}
        if style == "llama3":
            bos = "<|begin_of_text|>"
            tok.post_processor = processors.Sequence(
                [
                    processors.ByteLevel(trim_offsets=False),
                    processors.TemplateProcessing(
                        single=f"{bos} $A",
                        pair=f"{bos} $A {bos}:1 $B:1",
                        special_tokens=[(bos, ids[bos])],
                    ),
                ]
            )
            config = {
                "bos_token": bos, "eos_token": "<|eot_id|>", "clean_up_tokenization_spaces": True,
                "tokenizer_class": "PreTrainedTokenizerFast",
            }  # fmt: skip
            eos_ids = [ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]]
        else:
            tok.normalizer = normalizers.NFC()
            tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>",)])
            tok.post_processor = processors.ByteLevel(trim_offsets=False)
            config = {
                "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                "add_prefix_space": False, "errors": "replace", "tokenizer_class": "Qwen2Tokenizer",
            }  # fmt: skip
            eos_ids = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    else:
        tokens, _, _ = _sentencepiece_vocab(style)
        vocab = {t: i for i, t in enumerate(tokens)}
        tok = Tokenizer(
            models.BPE(
                vocab=vocab,
                merges=tokenizer_lib.derive_merges(vocab),
                unk_token="<unk>",
                fuse_unk=True,
                byte_fallback=True,
            )
        )
        if legacy:  # the older conversion: a normalizer puts U+2581 in front of every piece
            tok.normalizer = normalizers.Sequence(
                [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
            )
        else:
            tok.pre_tokenizer = pre_tokenizers.Metaspace(
                replacement="\u2581", prepend_scheme="first", split=False
            )
        tok.decoder = decoders.Sequence(
            [
                decoders.Replace("\u2581", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(" ", 1, 0),
            ]
        )
        controls = [t for t in tokens if t.startswith(("<s", "</s", "<unk", "["))]
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in controls])
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", 1)]
        )
        config = {
            "add_bos_token": True, "add_eos_token": False, "bos_token": _added_token("<s>"),
            "eos_token": _added_token("</s>"), "unk_token": _added_token("<unk>"),
            "pad_token": None, "legacy": False, "tokenizer_class": "LlamaTokenizer",
            "clean_up_tokenization_spaces": False,
        }  # fmt: skip
        eos_ids = 2
    config.update(config_changes)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_ids}))
    return tok


# -- comparing with transformers -------------------------------------------------------------


def _texts(tok: TextTokenizer, style: str) -> list[str]:
    added = [t.content for t in tok.backend_tokenizer.get_added_tokens_decoder().values()]
    texts = synthetic_strings(added, N_STRINGS)
    rng = random.Random(7)
    for _ in range(200):
        user, model = texts[rng.randrange(len(texts))], texts[rng.randrange(len(texts))]
        texts.append(_CHATS[style].format(u=user, m=model))
    texts += ["  hi", " <s> x", "a<s>b", "\u2581\u2581x", "x </s>", "<|user_def|>a", "é\u0301"]
    return texts


def _first_difference(got, want, inputs):
    for g, w, x in zip(got, want, inputs, strict=True):
        if g != w:
            return f"input {x!r}:\n ours {g!r}\n transformers {w!r}"
    return None


def assert_parity(ours: TextTokenizer, reference, texts: list[str]) -> None:
    """Same ids with and without special tokens, same texts decoding them (skipping special
    tokens or not), also for random id sequences; a round trip where the family's decoder
    keeps the text."""
    for special in (True, False):
        got = ours(texts, add_special_tokens=special)["input_ids"]
        want = reference(texts, add_special_tokens=special)["input_ids"]
        assert got == want, _first_difference(got, want, texts)
        for skip in (True, False):
            decoded = ours.batch_decode(got, skip_special_tokens=skip)
            expected = reference.batch_decode(want, skip_special_tokens=skip)
            assert decoded == expected, _first_difference(decoded, expected, got)
    for text in texts[:: len(texts) // 50]:  # the one-string calls
        assert ours.encode(text) == reference.encode(text)
        ids = ours.encode(text, add_special_tokens=False)
        assert ours.decode(ids) == reference.decode(ids)
    rng = random.Random(3)
    seqs = [[rng.randrange(len(ours)) for _ in range(rng.randint(0, 40))] for _ in range(1000)]
    for skip in (True, False):
        got = ours.batch_decode(seqs, skip_special_tokens=skip)
        assert got == reference.batch_decode(seqs, skip_special_tokens=skip)
    sample = [i for seq in seqs[:50] for i in seq]
    assert ours.convert_ids_to_tokens(sample) == reference.convert_ids_to_tokens(sample)
    assert ours.bos_token_id == reference.bos_token_id
    assert ours.eos_token_id == reference.eos_token_id
    if reference.pad_token_id is not None:
        assert ours.pad_token_id == reference.pad_token_id
    else:
        assert ours.pad_token_id == ours.eos_token_id  # no pad token: EOS pads


def _round_trip(ours: TextTokenizer, texts: list[str], byte_level: bool) -> None:
    """Byte-level BPE gives every text back. Sentencepiece's decoder drops the space its
    pre-tokenizer put first, and a leading space of the text with it, and spells U+2581 and a
    byte token's name (<0x41>) as what they stand for: those texts are left out."""
    if not byte_level:
        texts = [t for t in texts if not t.startswith(" ") and "\u2581" not in t and "<0x" not in t]
    ids = ours(texts, add_special_tokens=False)["input_ids"]
    back = ours.batch_decode(ids)
    assert back == texts, _first_difference(back, texts, texts)


GGUF_STYLES = ["llama2", "mistral", "llama3", "qwen2"]


@pytest.mark.parametrize("style", GGUF_STYLES)
def test_gguf_parity(style, tmp_path):
    from transformers import AutoTokenizer

    tokens = write_gguf(tmp_path / f"{style}.gguf", style)
    ours = load_tokenizer(tmp_path / f"{style}.gguf", cache_dir=tmp_path / "cache")
    reference = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=f"{style}.gguf")
    assert type(ours) is TextTokenizer and len(ours) == len(tokens)
    if style == "llama3":
        # transformers' byte-level builder adds GPT-2's <|endoftext|> when the file lacks it: a
        # token past the model's vocabulary, not reproduced (and not in the strings compared).
        assert len(reference) == len(tokens) + 1
        assert reference.convert_ids_to_tokens(len(tokens)) == "<|endoftext|>"
    else:
        assert len(reference) == len(tokens)
    texts = _texts(ours, style)
    assert_parity(ours, reference, texts)
    _round_trip(ours, [t for t in texts if "<|endoftext|>" not in t], style in ("llama3", "qwen2"))

    ids = ours.encode("hello")
    want_bos = {"llama2": True, "mistral": True, "llama3": True, "qwen2": False}[style]
    assert ours.add_bos is want_bos and (ids[:1] == [ours.bos_token_id]) is want_bos
    stops = {
        "llama2": ["</s>"],
        "mistral": ["</s>"],
        "llama3": ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"],
        "qwen2": ["<|im_end|>", "<|endoftext|>"],
    }[style]
    assert list(ours.stop_tokens) == stops
    assert ours.stop_token_ids == tuple(tokens.index(t) for t in stops)


HF_STYLES = [
    ("llama3", {}),
    ("qwen2", {}),
    ("llama2", {}),
    ("mistral", {}),
    ("llama2", {"legacy": True, "tokenizer_class": "PreTrainedTokenizerFast"}),
    # transformers 5 drops add_bos_token when tokenizer.json exists: its post-processor decides
    ("llama2", {"add_bos_token": False}),
]


@pytest.mark.parametrize(("style", "changes"), HF_STYLES, ids=lambda x: str(x))
def test_hf_folder_parity(style, changes, tmp_path):
    from transformers import AutoTokenizer

    backend = write_hf_folder(tmp_path, style, **changes)
    ours = load_tokenizer(tmp_path)
    reference = AutoTokenizer.from_pretrained(str(tmp_path))
    assert type(ours) is TextTokenizer
    assert len(ours) == len(reference) == backend.get_vocab_size()
    assert_parity(ours, reference, _texts(ours, style))
    assert ours.add_bos is (style != "qwen2")
    assert ours.bos_token == (None if style == "qwen2" else reference.bos_token)
    assert ours.eos_token == reference.eos_token
    stops = {
        "llama3": ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
        "qwen2": ("<|im_end|>", "<|endoftext|>"),
        "llama2": ("</s>",),
        "mistral": ("</s>",),
    }[style]
    assert ours.stop_tokens == stops


def test_gguf_default_pre_tokenizer(tmp_path):
    """A byte-level file naming no pre-tokenizer gets GPT-2's split, as in transformers."""
    from transformers import AutoTokenizer

    write_gguf(tmp_path / "g.gguf", "qwen2", pre=None)
    ours = load_tokenizer(tmp_path / "g.gguf", cache_dir=tmp_path / "cache")
    reference = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="g.gguf")
    texts = _texts(ours, "qwen2")[::6]
    assert_parity(ours, reference, texts)
    pre = json.loads(ours.backend_tokenizer.to_str())["pre_tokenizer"]
    assert pre["type"] == "ByteLevel" and pre["use_regex"]  # GPT-2's regex


_NO_TRANSFORMERS = """
import importlib.abc, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"torch", "transformers"}:
            raise ImportError(f"{name} is blocked")
        return None

sys.meta_path.insert(0, Blocker())
from hs_jax.models.tiny_vocab import tiny_tokenizer
from hs_jax.models.tokenizer import load_tokenizer

for path in sys.argv[1:]:
    tok = load_tokenizer(path, cache_dir=path + ".cache")
    print(len(tok), tok.encode("hello world")[:1] == [tok.bos_token_id])
print(len(tiny_tokenizer("qwen3")), tiny_tokenizer("llama").encode("hi")[0])
"""


def test_builds_without_transformers(tmp_path):
    import subprocess
    import sys
    import textwrap

    paths = []
    for style in ("mistral", "llama3"):
        paths.append(str(tmp_path / f"{style}.gguf"))
        tokens = write_gguf(paths[-1], style)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_NO_TRANSFORMERS), *paths],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    mistral = len(_sentencepiece_vocab("mistral")[0])
    bos = tiny_tokenizer("llama").bos_token_id
    assert result.stdout.split("\n")[:3] == [f"{mistral} True", f"{len(tokens)} True", f"512 {bos}"]


def test_legacy_llama2_folder_follows_tokenizer_json(tmp_path):
    """An older Llama 2 tokenizer.json (U+2581 prepended by a normalizer, as sentencepiece
    does) declared LlamaTokenizer: transformers 5 rebuilds its own pipeline, which spells a
    leading run of spaces with one U+2581 fewer; ours keeps the file's."""
    backend = write_hf_folder(tmp_path, "llama2", legacy=True)
    ours = load_tokenizer(tmp_path)
    texts = ["  hi", "a <s> b", "x\n y", "plain text"]
    assert ours(texts)["input_ids"] == [e.ids for e in backend.encode_batch(texts)]
    assert ours.convert_ids_to_tokens(ours.encode("  hi"))[:4] == ["<s>", *["\u2581"] * 3]


def test_gguf_cache_entry(tmp_path, monkeypatch):
    """A non-Gemma GGUF's cache entry holds its special tokens; read again without a rebuild,
    and loadable as a folder (by us and by transformers)."""
    from transformers import AutoTokenizer

    write_gguf(tmp_path / "q.gguf", "qwen2")
    first = load_tokenizer(tmp_path / "q.gguf", cache_dir=tmp_path / "cache")
    entry = tokenizer_lib.tokenizer_cache_dir(tmp_path / "q.gguf", tmp_path / "cache")
    assert sorted(p.name for p in entry.iterdir()) == [
        "generation_config.json", "tokenizer.json", "tokenizer_config.json"
    ]  # fmt: skip
    monkeypatch.setattr(tokenizer_lib, "_build_from_gguf", None)
    again = load_tokenizer(tmp_path / "q.gguf", cache_dir=tmp_path / "cache")
    folder = load_tokenizer(entry)
    texts = ["<|im_start|>user\nhi<|im_end|>", "Hello world"]
    for tok in (again, folder):
        assert tok(texts)["input_ids"] == first(texts)["input_ids"]
        assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.add_bos) == (
            first.bos_token_id, first.eos_token_id, first.pad_token_id, False
        )  # fmt: skip
        assert tok.stop_token_ids == first.stop_token_ids
    reference = AutoTokenizer.from_pretrained(str(entry))
    assert reference(texts)["input_ids"] == first(texts)["input_ids"]
    assert reference.eos_token == "<|im_end|>" and reference.bos_token == "<|endoftext|>"


def test_text_tokenizer_contract():
    backend = tiny_tokenizer("llama").backend_tokenizer
    tok = TextTokenizer(
        backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token=None,
        add_bos=True,
        stop_tokens=("<|end_of_text|>", "<|eot_id|>"),
        source="here",
    )
    assert tok.pad_token == tok.eos_token == "<|eot_id|>" and tok.pad_token_id == tok.eos_token_id
    assert tok.stop_tokens == ("<|eot_id|>", "<|end_of_text|>")
    with pytest.raises(ValueError, match="^here: pad token '<nope>' is not in the vocabulary$"):
        TextTokenizer(backend, bos_token=None, eos_token="<|eot_id|>", pad_token="<nope>",
                      add_bos=False, source="here")  # fmt: skip
    with pytest.raises(ValueError, match="here: eos token '</s>'"):
        TextTokenizer(backend, bos_token=None, eos_token="</s>", pad_token=None, add_bos=False,
                      source="here")  # fmt: skip
    with pytest.raises(ValueError, match="here: stop token"):
        TextTokenizer(backend, bos_token=None, eos_token="<|eot_id|>", pad_token=None,
                      add_bos=False, stop_tokens=("<|im_end|>",), source="here")  # fmt: skip
    with pytest.raises(ValueError, match=re.escape("post-processor adds '<|begin_of_text|>'")):
        TextTokenizer(backend, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                      pad_token=None, add_bos=False)  # fmt: skip
    # No post-processor: one adding BOS is installed.
    bare = Tokenizer.from_str(backend.to_str())
    bare.post_processor = None
    tok = TextTokenizer(bare, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                        pad_token=None, add_bos=True)  # fmt: skip
    assert tok.encode("x")[0] == tok.bos_token_id
    # The old name still takes (backend, source) and checks Gemma's ids.
    gemma = GemmaTokenizer(tiny_tokenizer("gemma3").backend_tokenizer, "src")
    assert isinstance(gemma, TextTokenizer) and gemma.stop_tokens == ("<eos>", "<end_of_turn>")
    with pytest.raises(ValueError, match="src: token 2 is"):
        GemmaTokenizer(backend, "src")


def test_folder_refusals(tmp_path):
    (tmp_path / "sp").mkdir()
    (tmp_path / "sp" / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.model; save tokenizer\.json"):
        load_tokenizer(tmp_path / "sp")
    write_hf_folder(tmp_path / "bad", "llama3", eos_token={"content": "<|im_end|>"})
    with pytest.raises(
        ValueError, match=re.escape("bad: special token '<|im_end|>' is not in the vocab")
    ):
        load_tokenizer(tmp_path / "bad")
    # special_tokens_map.json names the tokens when tokenizer_config.json does not.
    write_hf_folder(tmp_path / "map", "qwen2")
    config = json.loads((tmp_path / "map" / "tokenizer_config.json").read_text())
    del config["eos_token"], config["pad_token"]
    (tmp_path / "map" / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "map" / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": {"content": "<|endoftext|>"}})
    )
    tok = load_tokenizer(tmp_path / "map")
    assert tok.eos_token == tok.pad_token == "<|endoftext|>" and tok.bos_token_id is None
    assert tok.stop_tokens == ("<|endoftext|>", "<|im_end|>")


def test_gguf_refusals(tmp_path):
    write_gguf(tmp_path / "a.gguf", "llama3", pre="tekken")
    with pytest.raises(ValueError, match="pre-tokenizer 'tekken' is not supported"):
        load_tokenizer(tmp_path / "a.gguf", cache_dir=tmp_path)
    write_gguf(tmp_path / "b.gguf", "qwen2", model="bert")
    with pytest.raises(ValueError, match="tokenizer model 'bert' is not supported"):
        load_tokenizer(tmp_path / "b.gguf", cache_dir=tmp_path)
    write_gguf(tmp_path / "c.gguf", "llama2", eos_token_id=None)
    with pytest.raises(ValueError, match="eos_token_id' is missing"):
        load_tokenizer(tmp_path / "c.gguf", cache_dir=tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_tokenizer(family, tmp_path):
    from transformers import AutoTokenizer

    tok = tiny_tokenizer(family)
    assert len(tok) == tiny_vocab_size(family) == 512
    assert tok.backend_tokenizer.to_str() == tiny_tokenizer(family).backend_tokenizer.to_str()
    conventions = {
        "llama": ("<|begin_of_text|>", "<|end_of_text|>", "<|end_of_text|>", True),
        "mistral": ("<s>", "</s>", "</s>", True),
        "qwen2": (None, "<|im_end|>", "<|endoftext|>", False),
        "qwen3": (None, "<|im_end|>", "<|endoftext|>", False),
    }.get(family, ("<bos>", "<eos>", "<pad>", True))
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.add_bos) == conventions
    if family.startswith("gemma"):
        assert isinstance(tok, GemmaTokenizer)
        assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (2, 1, 0)
    text = "The answer is (B) because 12 + 30 = 42.\n\n  Café, 日本語 🤖\tdone"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode())  # the word merges do something
    assert (tok.encode(text)[:1] == [tok.bos_token_id]) is tok.add_bos
    for stop, stop_id in zip(tok.stop_tokens, tok.stop_token_ids, strict=True):
        # matched whole, dropped when skipping special tokens
        ids = tok.encode(f"a{stop}", add_special_tokens=False)
        assert ids[-1] == stop_id and tok.decode(ids, skip_special_tokens=True) == "a"
    # transformers reads it the same (saved as a folder)
    tok.save(tmp_path / "tokenizer.json")
    config = {"tokenizer_class": "TokenizersBackend", "bos_token": tok.bos_token,
              "eos_token": tok.eos_token, "pad_token": tok.pad_token}  # fmt: skip
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    reference = AutoTokenizer.from_pretrained(str(tmp_path))
    texts = synthetic_strings(list(tok.stop_tokens), 300)
    assert tok(texts)["input_ids"] == reference(texts)["input_ids"]
    again = load_tokenizer(tmp_path)
    assert again(texts)["input_ids"] == tok(texts)["input_ids"]
    assert again.stop_token_ids[: len(tok.stop_token_ids)] == tok.stop_token_ids


def test_tiny_unknown_family():
    with pytest.raises(ValueError, match="unknown family 'gpt2'"):
        tiny_tokenizer("gpt2")
