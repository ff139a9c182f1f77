"""LoRA expert stacks: PEFT import/export against transformers + peft, padding, errors.

The reference is PyTorch: tiny random Gemma / Gemma 3 models in transformers with adapters
made by peft. Our model with the imported stack must give the peft model's logits, and an
adapter we export must give our logits once peft loads it.
"""

import copy
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.numpy import load_file, save_file
from safetensors.torch import save_file as save_torch_file
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GemmaForCausalLM
from transformers import GemmaConfig as HFGemmaConfig

from hs_jax.experts import lora
from hs_jax.models.gemma import from_params

TOL = 1e-4  # max relative error vs PyTorch in float32
TOKENS = np.array([[2, 5, 17, 33, 9, 61, 4, 88, 12, 7, 3], [2, 40, 41, 42, 1, 90, 77, 6, 5, 5, 8]])


def _rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def _hf_config(family: str):
    common = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        attn_implementation="eager",
    )
    if family == "gemma":
        return HFGemmaConfig(num_hidden_layers=2, **common), GemmaForCausalLM
    layer_types = ["sliding_attention", "full_attention", "sliding_attention"]
    cfg = Gemma3TextConfig(num_hidden_layers=3, layer_types=layer_types, sliding_window=4, **common)
    return cfg, Gemma3ForCausalLM


def _load_ours(folder: str):
    from hs_jax.models.safetensors_io import load_hf_dir

    return load_hf_dir(folder, param_dtype="float32")


@pytest.fixture(scope="module", params=["gemma", "gemma3"])
def base(request, tmp_path_factory):
    """(family, torch model, our config, our params) sharing the same random weights."""
    torch.manual_seed(0 if request.param == "gemma" else 1)
    hf_cfg, cls = _hf_config(request.param)
    model = cls(hf_cfg).float().eval()
    with torch.no_grad():  # HF initialises norms to zero; random ones make them matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.1)
    folder = str(tmp_path_factory.mktemp(f"base_{request.param}"))
    model.save_pretrained(folder)
    config, params = _load_ours(folder)
    return request.param, model, config, params


@functools.cache
def _jitted_forward(config):
    @jax.jit
    def run(params, layers, tokens, ids):
        model = from_params(config, params)
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        stack = None if layers is None else lora.LoraStack(layers=layers)
        return model(tokens, positions, None, lora=stack, expert_ids=ids)[0]

    return run


def _forward(config, params, stack, expert_ids, tokens=TOKENS):
    """Our logits [B, T, V] (no cache) with an optional LoRA stack."""
    # Only the factors go in, so stacks that differ just in names/ranks share one compile.
    layers = None if stack is None else stack.layers
    ids = None if expert_ids is None else jnp.asarray(expert_ids, jnp.int32)
    run = _jitted_forward(config)
    return np.asarray(run(params, layers, jnp.asarray(tokens, jnp.int32), ids))


def _torch_logits(model, tokens=TOKENS):
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.float().numpy()


def _make_peft_adapter(torch_base, folder, seed, **lora_kwargs):
    """Save a random (init_lora_weights=False) peft adapter; returns the peft model."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(
        copy.deepcopy(torch_base), LoraConfig(init_lora_weights=False, **lora_kwargs)
    ).eval()
    peft_model.save_pretrained(folder)
    return peft_model


ADAPTER_KINDS = {
    "all7": dict(
        r=4,
        lora_alpha=8,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    ),
    "rslora": dict(
        r=6, lora_alpha=3, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"]
    ),
    "patterns": dict(
        r=4,
        lora_alpha=4,
        target_modules=["q_proj", "o_proj", "up_proj", "down_proj"],
        rank_pattern={"down_proj": 2},
        alpha_pattern={"q_proj": 16},
        layers_to_transform=[0, 1],
    ),
}


@pytest.mark.parametrize("kind", sorted(ADAPTER_KINDS))
def test_import_peft_adapter_matches_peft_logits(base, kind, tmp_path):
    _, torch_base, config, params = base
    kwargs = ADAPTER_KINDS[kind]
    peft_model = _make_peft_adapter(torch_base, str(tmp_path), seed=3, **kwargs)
    ref = _torch_logits(peft_model)
    stack = lora.load_peft_adapter(tmp_path, config)
    assert stack.n_experts == 1 and stack.rank == kwargs["r"]
    assert set(stack.targets) == set(kwargs["target_modules"])
    ours = _forward(config, params, stack, [0, 0])
    assert _rel_err(ours, ref) <= TOL
    # The adapter really changes the output (the comparison is not trivially base vs base).
    assert _rel_err(_torch_logits(torch_base), ref) > 1e-2


@pytest.mark.parametrize("base", ["gemma3"], indirect=True)
def test_import_default_adapter_name_keys(base, tmp_path):
    """Keys written as '...lora_A.default.weight' load to the same stack."""
    _, torch_base, config, _ = base
    _make_peft_adapter(torch_base, str(tmp_path / "a"), seed=4, **ADAPTER_KINDS["all7"])
    plain = lora.load_peft_adapter(tmp_path / "a", config)
    (tmp_path / "b").mkdir()
    tensors = load_file(str(tmp_path / "a" / lora.ADAPTER_WEIGHTS))
    renamed = {k.replace(".weight", ".default.weight"): v for k, v in tensors.items()}
    save_file(renamed, str(tmp_path / "b" / lora.ADAPTER_WEIGHTS))
    os.link(tmp_path / "a" / lora.ADAPTER_CONFIG, tmp_path / "b" / lora.ADAPTER_CONFIG)
    named = lora.load_peft_adapter(tmp_path / "b", config)
    jax.tree.map(np.testing.assert_array_equal, plain.layers, named.layers)
    # A bfloat16 file loads as the float32 values of its bfloat16 numbers.
    as_bf16 = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors.items()}
    save_torch_file(as_bf16, str(tmp_path / "b" / lora.ADAPTER_WEIGHTS))
    bf16 = lora.load_peft_adapter(tmp_path / "b", config)
    rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), plain.layers)
    # b carries the folded scale (2.0 here, a power of two), so rounding commutes with it.
    jax.tree.map(np.testing.assert_array_equal, bf16.layers, rounded)


def _random_expert(config, rank, targets, seed, name):
    stack = lora.init_lora_stack(
        config, 1, rank, targets, jax.random.key(seed), scheme="random", init_scale=0.3
    )
    return stack.replace(names=(name,))


@pytest.fixture(scope="module")
def mixed_pool(base):
    """Three random experts of ranks 2, 5, 3 on different projections, stacked (padded to 5)."""
    _, _, config, _ = base
    singles = [
        _random_expert(config, 2, ["q_proj", "v_proj"], 10, "e0"),
        _random_expert(config, 5, lora.PROJ_NAMES, 11, "e1"),
        _random_expert(config, 3, ["o_proj", "gate_proj", "down_proj"], 12, "e2"),
    ]
    return singles, lora.stack_adapters(singles)


@pytest.mark.parametrize("base", ["gemma3"], indirect=True)
def test_padded_stack_gives_each_experts_own_logits(base, mixed_pool):
    _, _, config, params = base
    singles, stack = mixed_pool
    assert stack.rank == 5 and stack.ranks == (2, 5, 3) and stack.names == ("e0", "e1", "e2")
    tokens = np.concatenate([TOKENS, TOKENS[:1]])  # 3 rows, one per expert
    mixed = _forward(config, params, stack, [0, 1, 2], tokens)
    for e, single in enumerate(singles):
        alone = _forward(config, params, single, [0], tokens[e : e + 1])
        np.testing.assert_allclose(mixed[e], alone[0], rtol=1e-6, atol=1e-6)
    # Experts differ from each other and from the base.
    base_logits = _forward(config, params, None, None, tokens)
    assert _rel_err(mixed, base_logits) > 1e-2
    assert _rel_err(mixed[0], mixed[2]) > 1e-2


@pytest.mark.parametrize("base", ["gemma3"], indirect=True)
def test_zero_and_peft_init_stacks_equal_base(base):
    _, _, config, params = base
    ref = _forward(config, params, None, None)
    # Equal up to float rounding: XLA compiles the LoRA program's matmuls differently.
    zero = lora.init_lora_stack(config, 3, 4, lora.PROJ_NAMES)
    np.testing.assert_allclose(_forward(config, params, zero, [0, 2]), ref, rtol=1e-6, atol=1e-6)
    peft_init = lora.init_lora_stack(
        config, 3, 4, ["q_proj", "up_proj"], jax.random.key(0), scheme="peft"
    )
    assert float(jnp.abs(peft_init.layers[0]["q_proj"]["a"]).max()) > 0
    out = _forward(config, params, peft_init, [1, 2])
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_export_loads_in_peft_and_gives_our_logits(base, mixed_pool, tmp_path):
    family, torch_base, config, params = base
    _, stack = mixed_pool
    for e in (0, 2):
        folder = lora.export_peft_adapter(stack, e, tmp_path / f"e{e}", base_model_name_or_path="x")
        with open(os.path.join(folder, lora.ADAPTER_CONFIG)) as f:
            cfg = json.load(f)
        assert cfg["r"] == cfg["lora_alpha"] == stack.ranks[e]  # trimmed to its own rank
        peft_model = PeftModel.from_pretrained(copy.deepcopy(torch_base), folder).eval()
        ref = _torch_logits(peft_model)
        ours = _forward(config, params, stack, [e, e])
        assert _rel_err(ours, ref) <= TOL, family
        # Re-import is exact: same factors as the stack's expert e (padding aside).
        again = lora.stack_adapters([lora.load_peft_adapter(folder, config)])
        own = lora.expert(stack, e)
        for li, layer in enumerate(own.layers):
            for name, entry in layer.items():
                r = stack.ranks[e]
                np.testing.assert_array_equal(again.layers[li][name]["a"], entry["a"][:, :, :r])
                np.testing.assert_array_equal(again.layers[li][name]["b"], entry["b"][:, :r, :])


@pytest.mark.parametrize("base", ["gemma"], indirect=True)
def test_export_keeps_components_filled_by_mixing(base, mixed_pool, tmp_path):
    """After a swarm-like mix, expert 0 (rank 2) has values in padded components: kept."""
    _, torch_base, config, params = base
    _, stack = mixed_pool
    mixed = jax.tree.map(lambda x: x.at[0].set(0.5 * x[0] + 0.5 * x[1]), stack)
    assert mixed.ranks == stack.ranks  # metadata is not a leaf: tree_map leaves it alone
    folder = lora.export_peft_adapter(mixed, 0, tmp_path / "mix")
    with open(os.path.join(folder, lora.ADAPTER_CONFIG)) as f:
        assert json.load(f)["r"] == 5
    peft_model = PeftModel.from_pretrained(copy.deepcopy(torch_base), folder).eval()
    assert _rel_err(_forward(config, params, mixed, [0, 0]), _torch_logits(peft_model)) <= TOL


@pytest.mark.parametrize("base", ["gemma"], indirect=True)
def test_pool_import_of_different_ranks(base, tmp_path):
    _, torch_base, config, params = base
    kinds = ["all7", "rslora"]
    refs = []
    for j, kind in enumerate(kinds):
        model = _make_peft_adapter(
            torch_base, str(tmp_path / kind), seed=20 + j, **ADAPTER_KINDS[kind]
        )
        refs.append(_torch_logits(model))
    pool = lora.load_peft_pool([tmp_path / k for k in kinds], config)
    assert pool.n_experts == 2 and pool.rank == 6 and pool.ranks == (4, 6)
    assert pool.names == tuple(kinds)
    for e in range(2):
        assert _rel_err(_forward(config, params, pool, [e, e]), refs[e]) <= TOL


# ----------------------------------------------------------------------------- stack helpers


@pytest.mark.parametrize("base", ["gemma3"], indirect=True)
def test_expert_replace_flat_dict_roundtrips(base, mixed_pool):
    _, _, config, _ = base
    singles, stack = mixed_pool
    e1 = lora.expert(stack, 1)
    assert e1.n_experts == 1 and e1.names == ("e1",) and e1.ranks == (5,)
    jax.tree.map(np.testing.assert_array_equal, e1.layers, singles[1].layers)
    # Replacing expert 1 by expert 0 pads its rank and zero-fills projections it lacks.
    swapped = lora.replace_expert(stack, 1, singles[0])
    assert swapped.names == ("e0", "e0", "e2") and swapped.ranks == (2, 2, 3)
    a = np.asarray(swapped.layers[0]["q_proj"]["a"][1])
    np.testing.assert_array_equal(a[:, :2], singles[0].layers[0]["q_proj"]["a"][0])
    np.testing.assert_array_equal(a[:, 2:], 0)
    np.testing.assert_array_equal(swapped.layers[0]["down_proj"]["b"][1], 0)
    np.testing.assert_array_equal(
        swapped.layers[0]["down_proj"]["b"][2], stack.layers[0]["down_proj"]["b"][2]
    )
    with pytest.raises(ValueError, match="exceeds"):
        lora.replace_expert(lora.stack_adapters(singles[:1]), 0, singles[1])
    with pytest.raises(IndexError):
        lora.expert(stack, 3)

    flat = lora.to_flat_dict(stack)
    assert all(isinstance(v, np.ndarray) for v in flat.values())
    back = lora.from_flat_dict(flat, n_layers=config.n_layers, names=stack.names, ranks=stack.ranks)
    assert back.names == stack.names and back.ranks == stack.ranks
    jax.tree.map(np.testing.assert_array_equal, back.layers, stack.layers)
    n_targets = len(lora.PROJ_NAMES) * config.n_layers
    expected = 0
    for name in lora.PROJ_NAMES:
        d_in, d_out = lora.proj_dims(config, name)
        expected += 3 * 5 * (d_in + d_out) * config.n_layers
    assert lora.num_params(stack) == expected and len(flat) == 2 * n_targets


@pytest.mark.parametrize("base", ["gemma3"], indirect=True)
def test_init_shapes_and_errors(base):
    _, _, config, _ = base
    stack = lora.init_lora_stack(
        config, 4, 3, ["k_proj", "down_proj"], jax.random.key(1), scheme="random"
    )
    assert stack.layers[0]["k_proj"]["a"].shape == (4, config.d_model, 3)
    assert stack.layers[0]["k_proj"]["b"].shape == (4, 3, config.kv_dim)
    assert stack.layers[-1]["down_proj"]["a"].shape == (4, config.ffn_dim, 3)
    assert stack.targets == ("k_proj", "down_proj") and stack.n_layers == config.n_layers
    with pytest.raises(ValueError, match="lm_head"):
        lora.init_lora_stack(config, 2, 2, ["lm_head"])
    with pytest.raises(ValueError, match="key"):
        lora.init_lora_stack(config, 2, 2, ["q_proj"], scheme="random")
    with pytest.raises(ValueError, match="scheme"):
        lora.init_lora_stack(config, 2, 2, ["q_proj"], jax.random.key(0), scheme="gauss")


# ----------------------------------------------------------------------------- import errors


@pytest.fixture
def good_adapter(base, tmp_path):
    _, torch_base, config, _ = base
    folder = tmp_path / "good"
    _make_peft_adapter(
        torch_base, str(folder), seed=5, r=2, lora_alpha=4, target_modules=["q_proj", "down_proj"]
    )
    return folder, config


def _edit_config(folder, **changes):
    path = folder / lora.ADAPTER_CONFIG
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def _edit_tensors(folder, fn):
    path = str(folder / lora.ADAPTER_WEIGHTS)
    save_file(fn(load_file(path)), path)


@pytest.mark.parametrize("base", ["gemma3"], indirect=True)
def test_missing_files(good_adapter, tmp_path):
    folder, config = good_adapter
    (folder / lora.ADAPTER_WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(lora.AdapterError, match="good.*cannot read"):
        lora.load_peft_adapter(folder, config)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lora.load_peft_adapter(tmp_path / "nope", config)
    os.rename(folder / lora.ADAPTER_WEIGHTS, folder / "adapter_model.bin")
    with pytest.raises(
        FileNotFoundError, match=r"good.*adapter_model.safetensors.*adapter_model.bin"
    ):
        lora.load_peft_adapter(folder, config)
    os.remove(folder / lora.ADAPTER_CONFIG)
    with pytest.raises(FileNotFoundError, match="good.*adapter_config.json"):
        lora.load_peft_adapter(folder, config)


@pytest.mark.parametrize("base", ["gemma3"], indirect=True)
@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(use_dora=True), "DoRA"),
        (dict(bias="all"), "bias='all'"),
        (dict(modules_to_save=["lm_head"]), "modules_to_save"),
        (dict(target_modules=["q_proj", "lm_head"]), r"\['lm_head'\].*not decoder"),
        (dict(peft_type="IA3"), "not LORA"),
        (dict(r=3), "rank 2, adapter_config.json says 3"),
    ],
)
def test_unsupported_config(good_adapter, changes, message):
    folder, config = good_adapter
    _edit_config(folder, **changes)
    with pytest.raises(lora.AdapterError, match=message) as info:
        lora.load_peft_adapter(folder, config)
    assert "good" in str(info.value)


@pytest.mark.parametrize("base", ["gemma3"], indirect=True)
def test_bad_tensors(good_adapter):
    folder, config = good_adapter
    key_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    original = load_file(str(folder / lora.ADAPTER_WEIGHTS))
    assert key_a in original

    def check(fn, message):
        save_file(fn(dict(original)), str(folder / lora.ADAPTER_WEIGHTS))
        with pytest.raises(lora.AdapterError, match=message) as info:
            lora.load_peft_adapter(folder, config)
        assert "good" in str(info.value)

    def rename(old, new):
        def fn(t):
            t[new] = t.pop(old)
            return t

        return fn

    far = key_a.replace("layers.0.", "layers.7.")
    check(rename(key_a, far), r"layers\.7.*layer 7.*\d layers")
    check(rename(key_a, key_a.replace("q_proj", "qkv_proj")), "qkv_proj.*does not have")
    check(rename(key_a, "base_model.model.lm_head.lora_A.weight"), "lm_head.*not a LoRA factor")

    def wrong_shape(t):
        t[key_a] = np.zeros((2, config.d_model + 1), np.float32)
        return t

    check(wrong_shape, r"layer 0 q_proj.*contradict the model config")

    def drop_b(t):
        del t[key_a.replace("lora_A", "lora_B")]
        return t

    check(drop_b, "layer 0 q_proj: missing lora_B")
