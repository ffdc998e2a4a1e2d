"""The Hugging Face config of a nestlearn model: our :class:`ModelConfig` as a plain dict.

The whole nestlearn model config travels under one key, ``nestlearn``; the usual Hugging Face
names (``vocab_size``, ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
``tie_word_embeddings``) are mirrored from it so that generic tools (pipelines, lm-eval's HF
backend, model cards) find them. The mirror is derived, never read back: the ``nestlearn``
dict is the one source of truth.

One config subclass exists per registered family (model type ``nestlearn-<family>``, see
:mod:`nestlearn.hf.registration`); this base class accepts every family.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from nestlearn import __version__
from nestlearn.models.config import ModelConfig

MODEL_TYPE_PREFIX = "nestlearn-"
"""Model types are ``nestlearn-<family>`` (transformers accepts dashes: ``AutoConfig.register``
only checks that the class attribute and the registered name agree)."""

# Hugging Face names mirrored from the nestlearn config (derived on every construction).
_MIRRORED = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "tie_word_embeddings",
)


class NestlearnConfig(PretrainedConfig):
    """Hugging Face config wrapping a nestlearn :class:`ModelConfig`.

    Args:
        nestlearn: ``ModelConfig.to_dict()`` of the model (family, shape, ``mixer`` options).
        **kwargs: ordinary :class:`~transformers.PretrainedConfig` arguments (special token
            ids, ``dtype``, ...).
    """

    model_type = "nestlearn"

    def __init__(self, nestlearn: dict[str, Any] | None = None, **kwargs: Any) -> None:
        for key in _MIRRORED:  # stale copies from a config.json; re-derived below
            kwargs.pop(key, None)
        kwargs.pop("nestlearn_version", None)
        self.nestlearn = dict(nestlearn or {})
        if self.nestlearn:
            cfg = self.model_config()
            family_type = MODEL_TYPE_PREFIX + cfg.family
            if self.model_type != "nestlearn" and self.model_type != family_type:
                raise ValueError(
                    f"{type(self).__name__} is model type {self.model_type!r} but its nestlearn "
                    f"config is family {cfg.family!r}; build the config with "
                    f"nestlearn.hf.config_for(model_config) to get the matching class"
                )
            self.vocab_size = cfg.vocab_size
            self.hidden_size = cfg.dim
            self.num_hidden_layers = cfg.n_layers
            self.num_attention_heads = cfg.n_heads
            self.num_key_value_heads = cfg.n_kv_heads or cfg.n_heads
        # through the base class: transformers 4.x sets it there (default True)
        kwargs["tie_word_embeddings"] = bool(self.nestlearn.get("tie_embeddings", False))
        self.nestlearn_version = __version__
        super().__init__(**kwargs)

    def model_config(self) -> ModelConfig:
        """The nestlearn :class:`ModelConfig` this config carries (validated)."""
        if not self.nestlearn:
            raise ValueError(
                "this NestlearnConfig carries no nestlearn model config; build one with "
                "nestlearn.hf.config_for(model_config)"
            )
        try:
            return ModelConfig(**self.nestlearn)
        except TypeError as e:  # unknown keys (a config.json from a newer nestlearn?)
            raise ValueError(f"bad nestlearn model config in the Hugging Face config: {e}") from e
