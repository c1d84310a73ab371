"""The one key map: Composer / training-code parameter names -> Hugging Face ``ModernBertForMaskedLM`` names.

Every reader hands out weights in HF key names, and the optimizer-state renaming uses the same map:

- ours: a Composer ``ComposerModel`` holding :class:`MMBertForMaskedLM` as ``.model``, so ``"model." + HF key``;
- FlexBert (ModernBERT's training model, the published mmBERT Composer checkpoints): strip the wrapper's
  ``model.``, then ``bert.encoder.layers.`` -> ``model.layers.`` and ``bert.`` -> ``model.``; ``head.*`` and
  ``decoder.bias`` keep their names;
- DDP's ``module.`` and torch.compile's ``_orig_mod.`` segments never belong to a parameter's name.

The decoder weight is tied to the token embeddings: it is never a key of its own in our key space.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch

from .errors import CheckpointError

TIED_KEY = "decoder.weight"
EMBEDDINGS = "model.embeddings.tok_embeddings.weight"


def strip_wrappers(key: str) -> str:
    """``key`` without DDP's leading ``module.`` and torch.compile's ``_orig_mod.`` segments."""
    parts = [p for p in key.split(".") if p != "_orig_mod"]
    if parts and parts[0] == "module":
        parts = parts[1:]
    return ".".join(parts)


def composer_to_hf_key(key: str) -> str | None:
    """The HF name of a Composer model key (ours or FlexBert's); None for the tied decoder weight."""
    key = strip_wrappers(key)
    if key.startswith("model."):
        key = key[len("model.") :]
    if key == TIED_KEY:
        return None
    if key.startswith("bert.encoder.layers."):
        return "model.layers." + key[len("bert.encoder.layers.") :]
    if key.startswith("bert."):
        return "model." + key[len("bert.") :]
    return key


def composer_layout(keys: Iterable[str]) -> str:
    """``"flexbert"`` (keys ``model.bert.*``), ``"ours"`` (``model.model.*``) or ``"unknown"``."""
    stripped = [strip_wrappers(k) for k in keys]
    if any(k.startswith("model.bert.") for k in stripped):
        return "flexbert"
    if any(k.startswith("model.model.") for k in stripped):
        return "ours"
    return "unknown"


def composer_to_hf_keys(keys: Iterable[str], where: str) -> dict[str, str]:
    """``{Composer key: HF key}`` for every key but the tied decoder weight; ``where`` names the source in the
    error raised when the keys are neither FlexBert's nor ours."""
    keys = list(keys)
    if composer_layout(keys) == "unknown":
        raise CheckpointError(
            f"{where}: keys are neither FlexBert's ('model.bert.…') nor ours ('model.model.…'); "
            f"first key: {next(iter(keys), None)!r}"
        )
    names = {key: composer_to_hf_key(key) for key in keys}
    return {key: hf for key, hf in names.items() if hf is not None}


class RenamedStateDict(Mapping):
    """``view[new_key] = source[names[new_key]]`` over a lazy source mapping (no tensor is read or copied)."""

    def __init__(self, source: Mapping, names: Mapping[str, str]):
        self._source = source
        self._names = dict(names)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._source[self._names[key]]

    def shape(self, key: str) -> tuple[int, ...]:
        return shape_of(self._source, self._names[key])

    def dtype(self, key: str) -> torch.dtype:
        return dtype_of(self._source, self._names[key])

    def release(self) -> None:
        release(self._source)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


# The lazy-mapping protocol: our readers answer shape / dtype without reading a tensor, and release() hands
# memory-mapped pages back; a plain dict of tensors works too.


def shape_of(state: Mapping, key: str) -> tuple[int, ...]:
    getter = getattr(state, "shape", None)
    return tuple(getter(key)) if callable(getter) else tuple(state[key].shape)


def dtype_of(state: Mapping, key: str) -> torch.dtype:
    getter = getattr(state, "dtype", None)
    return getter(key) if callable(getter) else state[key].dtype


def release(state: Mapping) -> None:
    getter = getattr(state, "release", None)
    if callable(getter):
        getter()
