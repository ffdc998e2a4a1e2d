"""Hugging Face ``transformers`` integration (optional: ``pip install "nestlearn[hf]"``).

Importing this package registers one model type per nestlearn family, ``nestlearn-<family>``,
with ``AutoConfig`` and ``AutoModelForCausalLM``. ``import nestlearn`` arranges the same
registration lazily, the moment ``transformers`` itself is imported, so::

    import nestlearn
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained("exported/")  # made by `nestlearn export`
    tok = AutoTokenizer.from_pretrained("exported/")
    out = model.generate(**tok("The ", return_tensors="pt"), max_new_tokens=50)

works with ``trust_remote_code=False``. See docs/hf.md.
"""

from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'nestlearn.hf needs the transformers package: pip install "nestlearn[hf]" '
        '(or pip install "transformers>=4.45")'
    ) from e

from nestlearn.hf.cache import NestlearnCache, map_state_tensors, state_nbytes
from nestlearn.hf.configuration import MODEL_TYPE_PREFIX, NestlearnConfig
from nestlearn.hf.modeling import NestlearnCausalLMOutput, NestlearnForCausalLM, build_hf_model
from nestlearn.hf.registration import (
    config_class_for,
    config_for,
    model_class_for,
    register_families,
)

register_families()

__all__ = [
    "MODEL_TYPE_PREFIX",
    "NestlearnCache",
    "NestlearnCausalLMOutput",
    "NestlearnConfig",
    "NestlearnForCausalLM",
    "build_hf_model",
    "config_class_for",
    "config_for",
    "map_state_tensors",
    "model_class_for",
    "register_families",
    "state_nbytes",
]
