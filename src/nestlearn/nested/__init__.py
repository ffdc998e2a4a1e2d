"""Nested systems from the four MIRAS axes: compose a memory level, train it, benchmark it.

Nested Learning (arXiv 2512.24695) reads a model as nested optimisation problems; each level is an
associative memory fixed by four choices (MIRAS, arXiv 2504.13173; digest §8.2) and an update
frequency. Here a level is a :class:`MemorySpec`::

    from nestlearn.nested import MemorySpec, recipe
    spec = MemorySpec(memory="mlp", objective="huber", retention="l2", momentum=True, chunk_size=16)
    recipe(spec, "my_memory.yaml", steps=200)     # then: nestlearn train --config my_memory.yaml

* :func:`nested_memory` runs a spec (the dedicated op when one covers it, else the generic chunked
  form; :func:`naive_nested` is the per-token autograd reference derived from the same spec);
* :class:`NestedMixer` is the spec as a token mixer on the shared skeleton (family ``nested``);
* :data:`KNOWN_MODELS` places Linear attention, RetNet, DeltaNet, TTT, Titans, Hope's
  ``M_memory``, Moneta, Yaad, Memora and DLA in this space (``docs/nested.md``).
"""

from nestlearn.layers.nested import NestedMixer, NestedMixerState
from nestlearn.nested.api import bench_name, recipe, register_memory, spec_overrides
from nestlearn.nested.known import KNOWN_MODELS, KnownModel, known_table
from nestlearn.ops.nested import (
    MemorySpec,
    NestedState,
    chunk_nested,
    dedicated_op,
    naive_nested,
    nested_memory,
)

__all__ = [
    "KNOWN_MODELS",
    "KnownModel",
    "MemorySpec",
    "NestedMixer",
    "NestedMixerState",
    "NestedState",
    "bench_name",
    "chunk_nested",
    "dedicated_op",
    "known_table",
    "naive_nested",
    "nested_memory",
    "recipe",
    "register_memory",
    "spec_overrides",
]
