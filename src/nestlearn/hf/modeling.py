"""``NestlearnForCausalLM``: a nestlearn :class:`LanguageModel` behind the transformers API.

Axis legend: B batch, T time, V vocabulary.

The wrapper owns one :class:`~nestlearn.models.skeleton.LanguageModel` (``self.model``) and
adds what ``transformers`` expects: ``forward(input_ids, labels=..., cache=...)`` returning a
:class:`~transformers.modeling_outputs.ModelOutput`, ``save_pretrained`` / ``from_pretrained``
(safetensors; parameter names are ``model.<our name>``) and ``generate()``.

Generation. ``generate()`` would normally build a ``DynamicCache`` of keys and values; we
opt out (``_supports_default_dynamic_cache``) and let ``forward`` create a
:class:`~nestlearn.hf.cache.NestlearnCache` holding the per-sequence ``ModelState``.
``prepare_inputs_for_generation`` feeds only the tokens the state has not consumed, so
``generate()`` prefills the prompt once and then runs one token per step through the same
``LanguageModel.forward(idx, state=...)`` calls as :func:`nestlearn.models.generation.generate`:
greedy outputs agree token for token. Generation hooks are overridden rather than configured
so the wrapper does not depend on the cache keyword of one transformers release
(``past_key_values`` in 4.x, ``cache`` in 5.x; both are accepted).

Padding is not supported: nestlearn models have no attention mask (recurrent memories would
absorb pad tokens). A batch must hold prompts of equal length; ``forward`` refuses an
``attention_mask`` with zeros.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from nestlearn.hf.cache import NestlearnCache
from nestlearn.hf.configuration import NestlearnConfig
from nestlearn.models.registry import FAMILIES, build_model
from nestlearn.models.skeleton import LanguageModel

# The model_kwargs key generate() keeps the cache under (beam search reorders what it finds
# there): "cache" since transformers 5, "past_key_values" before.
_CACHE_KEY = (
    "cache"
    if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    else "past_key_values"
)


@dataclass
class NestlearnCausalLMOutput(ModelOutput):
    """Output of :meth:`NestlearnForCausalLM.forward`.

    ``logits: [B, T, V]``; ``loss`` when ``labels`` were given; ``cache`` (also readable as
    ``past_key_values``, the transformers 4.x name) when decoding with a state.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: NestlearnCache | None = None

    @property
    def past_key_values(self) -> NestlearnCache | None:
        return self.cache


class NestlearnForCausalLM(PreTrainedModel, GenerationMixin):
    """Causal LM wrapper around a nestlearn :class:`LanguageModel` of any family.

    Build one from a :class:`NestlearnConfig` (weights set by ``LanguageModel.init_weights``),
    with :meth:`from_language_model` (wraps an existing model, no copy), or load one with
    ``AutoModelForCausalLM.from_pretrained(folder)`` after ``import nestlearn``.
    """

    config_class = NestlearnConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _is_stateful = True  # transformers refuses assisted decoding for stateful models
    _supports_cache_class = True  # transformers 4.x
    # Our skeleton ties head and embedding itself when ``tie_embeddings`` is set; declaring it
    # lets save_pretrained store the shared tensor once and from_pretrained re-tie it.
    _tied_weights_keys = {"model.head.weight": "model.embed.weight"}

    def __init__(self, config: NestlearnConfig) -> None:
        super().__init__(config)
        cfg = config.model_config()
        if cfg.family not in FAMILIES:
            raise ValueError(
                f"unknown nestlearn family {cfg.family!r} in the config; this nestlearn has: "
                f"{', '.join(sorted(FAMILIES))} (a newer nestlearn may be needed)"
            )
        if cfg.vocab_size <= 0:
            raise ValueError("the nestlearn config needs vocab_size > 0")
        fam = FAMILIES[cfg.family]
        self._decodes_with_state = fam.supports_decode
        # Built in the ambient device context: on "meta" inside from_pretrained (weights are
        # loaded afterwards), on the CPU otherwise, where our own init sets every parameter.
        self.model = LanguageModel(cfg, [fam.build_block(cfg, i) for i in range(cfg.n_layers)])
        if self.model.embed.weight.device.type != "meta":
            self.model.init_weights(seed=0)
        self.post_init()

    @classmethod
    def from_language_model(
        cls, model: LanguageModel, config: NestlearnConfig | None = None, **config_kwargs: Any
    ) -> NestlearnForCausalLM:
        """Wrap an existing ``model`` (its parameters are shared, not copied).

        ``config`` defaults to :func:`nestlearn.hf.config_for` of ``model.cfg`` with
        ``config_kwargs`` (e.g. ``eos_token_id``).
        """
        from nestlearn.hf.registration import config_for, model_class_for

        if config is None:
            config = config_for(model.cfg, **config_kwargs)
        klass = model_class_for(model.cfg.family) if cls is NestlearnForCausalLM else cls
        with torch.device("meta"):
            out = klass(config)
        out.model = model
        out.to(model.embed.weight.dtype)
        out.train(model.training)
        return out

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> NestlearnForCausalLM:
        """``PreTrainedModel.from_pretrained``, then the non-persistent buffers (RoPE
        frequencies) are recomputed: how transformers materialises buffers of a model built
        on the meta device differs between releases, so we do not rely on it."""
        loaded = super().from_pretrained(*args, **kwargs)
        # (model, loading_info) with output_loading_info=True
        (loaded[0] if isinstance(loaded, tuple) else loaded).reset_buffers()
        return loaded

    def reset_buffers(self) -> None:
        """Recompute every non-persistent buffer from the module's own parameters."""
        for module in self.model.modules():
            if hasattr(module, "reset_buffers"):
                module.reset_buffers()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # forward() creates a NestlearnCache instead of a key/value cache

    # ----------------------------------------------------------------- init
    def _init_weights(self, module: nn.Module) -> None:
        """Called by transformers for modules it did not load: recompute non-persistent
        buffers (RoPE frequencies). Parameters are set by ``LanguageModel.init_weights`` in
        ``__init__`` or loaded from the checkpoint, never re-drawn here."""
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed

    def get_output_embeddings(self) -> nn.Module:
        return self.model.head

    # -------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: NestlearnCache | None = None,
        past_key_values: NestlearnCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> NestlearnCausalLMOutput | tuple:
        """Logits ``[B, T, V]`` for ``input_ids: [B, T]``; optional loss and state.

        Args:
            input_ids: token ids ``[B, T]``.
            attention_mask: ``[B, S]`` of ones (padding is refused, see the module doc).
            cache / past_key_values: a :class:`NestlearnCache` to continue; updated in place.
            labels: ``[B, T]`` targets, shifted inside (``labels[:, 1:]`` scores
                ``logits[:, :-1]``); ``-100`` is ignored. Returns the mean cross-entropy.
            use_cache: start a new cache when none is given (default: ``config.use_cache``
                outside training).
        """
        if inputs_embeds is not None:
            raise ValueError("nestlearn models take input_ids, not inputs_embeds")
        if input_ids is None:
            raise ValueError("input_ids is required")
        if cache is None:
            cache = past_key_values
        if cache is not None and not isinstance(cache, NestlearnCache):
            raise TypeError(
                f"nestlearn models decode with a NestlearnCache, got {type(cache).__name__}; "
                "let generate() create one or pass nestlearn.hf.NestlearnCache()"
            )
        T = input_ids.shape[1]
        if attention_mask is not None and T and not bool(attention_mask[:, -T:].all()):
            raise ValueError(
                "attention_mask has zeros, but nestlearn models do not support padding (their "
                "memories would absorb the pad tokens); batch prompts of equal length, or "
                "generate one prompt at a time"
            )
        if use_cache is None:
            use_cache = bool(getattr(self.config, "use_cache", True)) and not self.training
        if cache is not None and not self._decodes_with_state:
            raise ValueError(
                f"family {self.model.cfg.family!r} cannot decode with a state; call without a "
                "cache (generate() then recomputes the whole context each step)"
            )
        if cache is None and use_cache and self._decodes_with_state:
            cache = NestlearnCache()
        if cache is not None:
            state = cache.state
            if state is None:
                state = self.model.init_state(input_ids.shape[0], device=input_ids.device)
            logits, cache.state = self.model(input_ids, state=state)
        else:
            logits, _ = self.model(input_ids)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(),
                labels[:, 1:].flatten().to(logits.device),
                ignore_index=-100,
            )
        out = NestlearnCausalLMOutput(loss=loss, logits=logits, cache=cache)
        if return_dict is False:
            return out.to_tuple()
        return out

    # ----------------------------------------------------------- generation
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """``GenerationMixin.generate``; beam search is refused up front for a CMS with
        ``objective=ntp`` (its pending next-token term belongs to one sequence, docs/cms.md)."""
        from nestlearn.models import uses_ntp

        if uses_ntp(self.model):
            gc = kwargs.get("generation_config") or self.generation_config
            beams = kwargs.get("num_beams", getattr(gc, "num_beams", 1)) or 1
            if beams > 1:
                raise ValueError(
                    f"num_beams={beams}: beam search regroups the sequences of a model whose CMS "
                    "learns from its next-token gradient (cms.objective=ntp). Use greedy or "
                    "sampled decoding with num_beams=1, freeze the memory "
                    "(nestlearn.models.set_memory_frozen), or use cms.objective=next"
                )
        return super().generate(*args, **kwargs)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        cache: NestlearnCache | None = None,
        past_key_values: NestlearnCache | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = True,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Feed only the tokens the cache has not consumed (all of them on the first call)."""
        if inputs_embeds is not None:
            raise ValueError("nestlearn models generate from input_ids, not inputs_embeds")
        if cache is None:
            cache = past_key_values
        seen = cache.get_seq_length() if cache is not None else 0
        if 0 < seen < input_ids.shape[1]:
            input_ids = input_ids[:, seen:]
        # else: a fresh cache, or the caller passed only the new tokens
        return {
            "input_ids": input_ids,
            "cache": cache,
            "attention_mask": attention_mask,
            "use_cache": use_cache,
        }

    def _update_model_kwargs_for_generation(
        self,
        outputs: ModelOutput,
        model_kwargs: dict[str, Any],
        is_encoder_decoder: bool = False,
        num_new_tokens: int = 1,
        **kwargs: Any,
    ) -> dict[str, Any]:
        model_kwargs.pop("past_key_values", None)
        model_kwargs.pop("cache", None)
        model_kwargs[_CACHE_KEY] = outputs.cache
        mask = model_kwargs.get("attention_mask")
        if mask is not None:
            model_kwargs["attention_mask"] = torch.cat(
                [mask, mask.new_ones((mask.shape[0], num_new_tokens))], dim=-1
            )
        return model_kwargs

    def _reorder_cache(
        self, cache: NestlearnCache | None, beam_idx: torch.LongTensor
    ) -> NestlearnCache | None:
        if cache is not None:
            cache.reorder_cache(beam_idx)
        return cache


def build_hf_model(cfg: Any, **config_kwargs: Any) -> NestlearnForCausalLM:
    """A freshly initialised wrapper for a :class:`ModelConfig` or preset name (tests, demos)."""
    model = build_model(cfg)
    return NestlearnForCausalLM.from_language_model(model, **config_kwargs)
