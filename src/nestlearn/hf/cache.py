"""A ``transformers`` cache that holds a nestlearn :class:`ModelState`.

Hugging Face's own caches store attention keys and values per layer. Our families keep other
per-sequence state (Titans memory weights and momentum, CMS levels, SSM and conv states, KV
caches where there is attention), all of it already gathered in one
:class:`~nestlearn.models.skeleton.ModelState`. This cache is a thin holder of that object:
``generate()`` passes it to the model's ``forward``, which threads it through the skeleton
and stores the new state back (in place, as transformers expects of a cache). For recurrent
families the state has a fixed size, so decoding keeps O(1) memory per token.

Batch operations (beam reordering, ``num_return_sequences`` expansion) index the batch axis,
which is axis 0 of every tensor in every family's state (the state classes document
``[B, ...]`` shapes). Rewinding (``crop``) is impossible for a recurrent memory, so assisted
decoding and other modes that need it are refused with a clear error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from transformers import Cache

from nestlearn.models.skeleton import ModelState


def map_state_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor in a nested state (NamedTuples, dataclasses, tuples,
    lists, dicts); everything else (ints, None) is kept."""
    if obj is None:
        return None
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, ModelState):  # an NTPState's pending term is kept as it is
        return dataclasses.replace(obj, layers=[map_state_tensors(s, fn) for s in obj.layers])
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # NamedTuple
        return type(obj)(*(map_state_tensors(v, fn) for v in obj))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {
            f.name: map_state_tensors(getattr(obj, f.name), fn)
            for f in dataclasses.fields(obj)
            if f.init
        }
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_state_tensors(v, fn) for v in obj)
    if isinstance(obj, dict):
        return {k: map_state_tensors(v, fn) for k, v in obj.items()}
    return obj


def state_nbytes(state: ModelState | None) -> int:
    """Bytes held by the tensors of ``state`` (0 for None)."""
    total = 0

    def count(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    map_state_tensors(state, count)
    return total


class NestlearnCache(Cache):
    """The per-sequence :class:`ModelState` of a nestlearn model, as a ``transformers`` cache.

    ``state`` is ``None`` until the first forward; ``get_seq_length()`` is the number of
    tokens the state has consumed. Pass one to ``generate(..., cache=c)`` (or
    ``past_key_values=c``) to continue a sequence: ``input_ids`` may then be the whole
    sequence (the consumed prefix is skipped) or only the new tokens.
    """

    def __init__(self, state: ModelState | None = None) -> None:
        try:
            super().__init__(layers=[])
        except TypeError:  # transformers 4.x: Cache() takes no arguments
            super().__init__()
        self.state = state

    def __repr__(self) -> str:
        return f"NestlearnCache(tokens={self.get_seq_length()}, bytes={state_nbytes(self.state)})"

    def __len__(self) -> int:
        return 0 if self.state is None else len(self.state.layers)

    # ------------------------------------------------------------- queries
    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        """Tokens consumed so far."""
        return 0 if self.state is None else int(self.state.position)

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    def get_max_cache_shape(self, layer_idx: int | None = 0) -> int:  # transformers 4.x name
        return -1

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def is_linear(self) -> list[bool]:
        # generate() skips its own prompt slicing when every layer is "linear"; the model's
        # prepare_inputs_for_generation slices by get_seq_length() instead.
        return [True] * max(1, len(self))

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * max(1, len(self))

    @property
    def is_dummy(self) -> list[bool]:
        return [False] * max(1, len(self))

    @property
    def is_initialized(self) -> bool:
        return self.state is not None

    @property
    def batch_size(self) -> int:
        sizes: list[int] = []
        map_state_tensors(self.state, lambda t: sizes.append(t.shape[0]) or t)
        if not sizes:
            raise ValueError("the cache holds no tensors yet; run a forward pass first")
        return sizes[0]

    # ------------------------------------------------------- batch editing
    def reset(self) -> None:
        self.state = None

    def _refuse_pending(self, what: str) -> None:
        if getattr(self.state, "pending", None) is not None:
            raise ValueError(
                f"{what} regroups the sequences of a model whose CMS learns from its next-token "
                "gradient (cms.objective=ntp); the last token's term is still pending and belongs "
                "to its own sequence. Use greedy or sampled decoding with num_beams=1 and one "
                "sequence per prompt, freeze the memory (nestlearn.models.set_memory_frozen), or "
                "use cms.objective=next"
            )

    def _index(self, idx: torch.Tensor) -> None:
        self._refuse_pending("beam search / batch selection")
        self.state = map_state_tensors(self.state, lambda t: t.index_select(0, idx.to(t.device)))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row ``i`` of the new state is row ``beam_idx[i]`` of the old one."""
        self._index(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._refuse_pending("repeating the batch")
        self.state = map_state_tensors(self.state, lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._index(indices)

    # --------------------------------------------------- unsupported parts
    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove == 0:
            return
        raise NotImplementedError(
            "a nestlearn cache cannot be rewound (its memory state is updated in place by every "
            "token); assisted/speculative decoding is not supported, use plain greedy, sampling "
            "or beam search"
        )

    def activate_past_recording(self) -> None:
        raise NotImplementedError(
            "a nestlearn cache cannot record and roll back past states; assisted/speculative "
            "decoding is not supported"
        )

    def is_recording_past(self, layer_idx: int = 0) -> bool:
        return False

    def update(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "NestlearnCache holds a nestlearn ModelState, not per-layer keys and values; it only "
            "works with nestlearn models (NestlearnForCausalLM)"
        )

    # transformers' layer-wise helpers (offloading) do not apply
    def offload(self, *args: Any, **kwargs: Any) -> None:
        return None

    def prefetch(self, *args: Any, **kwargs: Any) -> None:
        return None
