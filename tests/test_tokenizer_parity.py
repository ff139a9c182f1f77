"""Our GGUF-built Gemma tokenizer against transformers' tokenizer built from the same file.

The strings are generated deterministically (many scripts, emoji, code, whitespace runs,
numbers, control tokens inside text, characters only byte fallback can spell) and joined by
every question, choice and answer of the authors' task files. Ids must be equal with and
without special tokens, and texts equal when decoding with and without skipping special
tokens, also for random id sequences and for every single vocabulary id.
"""

import json
import random
import time
from pathlib import Path

import pytest

from hs_jax.models import tokenizer as tokenizer_lib

pytestmark = pytest.mark.slow

EVAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
N_SYNTHETIC = 12_000

# (first, last) code points of scripts and symbol blocks, sampled uniformly within each.
_BLOCKS = [
    (0x41, 0x7A),  # ASCII letters (and the few signs between the cases)
    (0xC0, 0xFF),  # Latin-1
    (0x100, 0x17F),  # Latin Extended-A
    (0x250, 0x2AF),  # IPA
    (0x300, 0x36F),  # combining diacritics, also on their own
    (0x391, 0x3C9),  # Greek
    (0x410, 0x44F),  # Cyrillic
    (0x531, 0x587),  # Armenian
    (0x5D0, 0x5EA),  # Hebrew
    (0x621, 0x64A),  # Arabic
    (0x905, 0x939),  # Devanagari
    (0x985, 0x9B9),  # Bengali
    (0xB85, 0xBB9),  # Tamil
    (0xD85, 0xDC6),  # Sinhala
    (0xE01, 0xE30),  # Thai
    (0xF40, 0xF6C),  # Tibetan
    (0x10D0, 0x10FA),  # Georgian
    (0x1200, 0x135A),  # Ethiopic
    (0x13A0, 0x13F4),  # Cherokee
    (0x1780, 0x17B3),  # Khmer
    (0x1820, 0x1877),  # Mongolian
    (0x2190, 0x21FF),  # arrows
    (0x2200, 0x22FF),  # mathematical operators
    (0x2500, 0x257F),  # box drawing
    (0x3041, 0x3096),  # Hiragana
    (0x30A1, 0x30FA),  # Katakana
    (0x3400, 0x4DBF),  # CJK Extension A (rare)
    (0x4E00, 0x9FFF),  # CJK
    (0xAC00, 0xD7A3),  # Hangul
    (0xE000, 0xF8FF),  # private use (byte fallback)
    (0xFF01, 0xFF5E),  # fullwidth forms
    (0x10000, 0x1005D),  # Linear B
    (0x12000, 0x12399),  # cuneiform
    (0x1D400, 0x1D7FF),  # mathematical alphanumerics
    (0x20000, 0x2A6DF),  # CJK Extension B (rare: byte fallback)
]
_EMOJI = [
    "🤖", "🚀", "😀", "😂", "🥲", "❤️", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🇫🇷", "1️⃣", "🧑🏿‍💻",
    "🐍", "🦀", "☕", "✨", "🫠", "🪐", "👩‍🔬",
]  # fmt: skip
_CODE = [
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
    "const re = /^\\s*(\\d+)\\.(\\w+)$/gi;\nconsole.log(`${a} => ${b}`);",
    '{"key": [1, 2.5, null, true], "nested": {"a": "b\\n"}}',
    '<div class="x">&nbsp;<b>bold</b></div>\n<!-- comment -->',
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    '#!/bin/bash\nset -euo pipefail\necho "$HOME" | tr a-z A-Z >&2\n',
    "\\begin{equation} \\int_0^\\infty e^{-x^2}\\,dx = \\frac{\\sqrt{\\pi}}{2} \\end{equation}",
    'fn main() -> Result<(), Box<dyn Error>> { println!("{:?}", v); Ok(()) }',
    "class A(B, metaclass=M):\n\n\n    @property\n    def x(self) -> int: ...\n",
    "if x != y && !(z || w) { return nil }  // TODO(someone): fix",
    "    \t  mixed_indent = [\n        'a',\n\t'b',\n    ]\n",
]
_WORDS = (
    "the of and to in is was for on that with as by at from it an be this which or are "
    "Paris capital France river question answer model user assistant graph node weight "
    "because therefore however naïve café résumé Straße über Ελλάδα Москва 東京 서울"
).split()
_WHITESPACE = [" ", " ", " ", "\t", "\n", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\v", "\f"]
_NEAR_MISSES = [
    "<start_of_turn", "end_of_turn>", "<<bos>>", "< eos>", "<unused99999>", "<START_OF_TURN>",
    "<0x41>", "<unk", "[multimodal", "<start_of_image >",
]  # fmt: skip
_ODD = ["\u2581", "\u2581\u2581 ", "\u200b", "\u200d", "\ufeff", "\u00ad", "\ufffd", "\U0010fffd"]


def _rare_char(rng: random.Random) -> str:
    """A character the vocabulary likely lacks, so it is spelled with byte tokens."""
    pick = rng.random()
    if pick < 0.4:
        return chr(rng.choice([*range(0, 32), 127, *range(0x80, 0xA0)]))  # C0/C1 controls
    if pick < 0.8:
        return chr(rng.randint(0x20000, 0x2A6DF))
    return chr(rng.randint(0xE000, 0xF8FF))


def _number(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return str(rng.randrange(10 ** rng.randint(1, 40)))
    if kind == 1:
        return f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 12)}f}"
    if kind == 2:
        return f"{rng.randrange(10**9):,}"
    if kind == 3:
        return f"{rng.uniform(0, 10):.3e}"
    return f"{rng.randint(1900, 2099)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _fragment(rng: random.Random, added: list[str]) -> str:
    kind = rng.randrange(12)
    if kind == 0:
        lo, hi = rng.choice(_BLOCKS)
        return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 12)))
    if kind == 1:
        return "".join(rng.choice(_EMOJI) for _ in range(rng.randint(1, 4)))
    if kind == 2:
        code = rng.choice(_CODE)
        a, b = sorted(rng.randrange(len(code) + 1) for _ in range(2))
        return code if rng.random() < 0.5 else code[a:b]
    if kind == 3:
        return "".join(rng.choice(_WHITESPACE) for _ in range(rng.randint(1, 40)))
    if kind == 4:
        return " " * rng.randint(1, 80)
    if kind == 5:
        return _number(rng)
    if kind == 6:
        return rng.choice(added)
    if kind == 7:
        return rng.choice(_NEAR_MISSES)
    if kind == 8:
        return "".join(_rare_char(rng) for _ in range(rng.randint(1, 5)))
    if kind == 9:
        return rng.choice(_ODD)
    if kind == 10:
        return "".join(rng.choice("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") for _ in range(3))
    words = rng.choices(_WORDS, k=rng.randint(1, 10))
    return " ".join(w.upper() if rng.random() < 0.1 else w for w in words)


def synthetic_strings(added: list[str], n: int = N_SYNTHETIC) -> list[str]:
    """`n` varied strings, the same every run; `added` are the tokenizer's added tokens."""
    rng = random.Random(1234)
    out = ["", " ", "  ", "\n", "\t", "\u2581", "<bos>", "<start_of_turn>", "a" * 5000]
    out += [" " * 100, "\n" * 50, "9" * 300, "日本語" * 200, "<end_of_turn>" * 20]
    while len(out) < n:
        if rng.random() < 0.1:  # a chat exchange
            user, model = (_fragment(rng, added) for _ in range(2))
            out.append(
                f"<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n{model}"
                + ("<end_of_turn>\n" if rng.random() < 0.5 else "")
            )
            continue
        parts = [_fragment(rng, added) for _ in range(rng.randint(1, 12))]
        out.append("".join(p + rng.choice(["", "", " ", "\n"]) for p in parts))
    return out


def eval_strings() -> list[str]:
    """Every question, choice and answer of the task files (and their in-context prompts)."""
    out = []
    for path in sorted(EVAL_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data.get("icl_prompt"), str):
            out.append(data["icl_prompt"])
        for split in ("dev", "test"):
            for item in data.get(split, []):
                for key in ("question", "answer", "choices"):
                    value = item.get(key)
                    if isinstance(value, dict):
                        value = list(value.values())
                    values = value if isinstance(value, list) else [value]
                    out.extend(str(v) for v in values if v is not None)
    return out


@pytest.fixture(scope="module")
def reference(gemma3_270m_gguf):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        str(gemma3_270m_gguf.parent), gguf_file=gemma3_270m_gguf.name
    )


@pytest.fixture(scope="module")
def ours(gemma3_270m_gguf, tmp_path_factory):
    return tokenizer_lib.load_tokenizer(
        gemma3_270m_gguf, cache_dir=tmp_path_factory.mktemp("tokenizer_cache")
    )


@pytest.fixture(scope="module")
def added(ours):
    return [t.content for t in ours.backend_tokenizer.get_added_tokens_decoder().values()]


@pytest.fixture(scope="module")
def texts(added):
    texts = synthetic_strings(added)
    if EVAL_DIR.is_dir():
        from_tasks = eval_strings()
        assert len(from_tasks) > 10_000
        texts += from_tasks
    return texts


def _first_difference(got, want, inputs):
    for g, w, x in zip(got, want, inputs, strict=True):
        if g != w:
            return f"input {x!r}:\n ours {g!r}\n transformers {w!r}"
    return None


def test_same_backend(ours, reference):
    """The pipelines serialise identically; the tests below check the behaviour on its own."""
    assert json.loads(ours.backend_tokenizer.to_str()) == json.loads(
        reference.backend_tokenizer.to_str()
    )
    assert len(ours) == len(reference) == 262_144
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        reference.bos_token_id,
        reference.eos_token_id,
        reference.pad_token_id,
    )


def test_encode_and_decode_parity(ours, reference, texts):
    assert len(texts) >= 10_000
    start = time.perf_counter()
    for special in (True, False):
        got = ours(texts, add_special_tokens=special)["input_ids"]
        want = reference(texts, add_special_tokens=special)["input_ids"]
        assert got == want, _first_difference(got, want, texts)
        for skip in (True, False):
            decoded = ours.batch_decode(got, skip_special_tokens=skip)
            expected = reference.batch_decode(want, skip_special_tokens=skip)
            assert decoded == expected, _first_difference(decoded, expected, got)
    # The one-string calls take another path through our class.
    for text in texts[:: max(1, len(texts) // 2000)]:
        ids = ours.encode(text, add_special_tokens=True)
        assert ids == reference.encode(text, add_special_tokens=True)
        assert ids == [2] + ours.encode(text, add_special_tokens=False)
        assert ours(text, add_special_tokens=True)["input_ids"] == ids
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == reference.decode(
                ids, skip_special_tokens=skip
            )
    print(f"{len(texts)} strings compared in {time.perf_counter() - start:.1f} s")


def test_round_trip(ours, texts):
    """Decoding gives the text back, except where it holds U+2581 (which decodes to a space)."""
    plain = [t for t in texts if "\u2581" not in t]
    ids = ours(plain, add_special_tokens=True)["input_ids"]
    back = ours.batch_decode(ids, skip_special_tokens=False)
    assert [b.removeprefix("<bos>") for b in back] == plain


def test_decode_random_ids(ours, reference, added):
    rng = random.Random(99)
    vocab = len(ours)
    special_ids = [ours.backend_tokenizer.token_to_id(t) for t in added]
    pools = [
        lambda: rng.randrange(vocab),
        lambda: rng.choice(special_ids),
        lambda: rng.randint(238, 493),  # byte tokens <0x00>..<0xFF>
        lambda: rng.randint(107, 167),  # newline and space runs
        lambda: rng.randrange(20),
    ]
    seqs = [
        [rng.choices(pools, weights=[5, 2, 2, 1, 1])[0]() for _ in range(rng.randint(0, 64))]
        for _ in range(3000)
    ]
    for skip in (True, False):
        got = ours.batch_decode(seqs, skip_special_tokens=skip)
        want = reference.batch_decode(seqs, skip_special_tokens=skip)
        assert got == want, _first_difference(got, want, seqs)
    sample = [i for seq in seqs[:200] for i in seq]
    assert ours.convert_ids_to_tokens(sample) == reference.convert_ids_to_tokens(sample)


def test_decode_every_id(ours, reference):
    """Each id alone: what the engine decodes to find stop strings on the device."""
    singles = [[i] for i in range(len(ours))]
    got = ours.batch_decode(singles, skip_special_tokens=True)
    assert got == reference.batch_decode(singles, skip_special_tokens=True)
