"""The streaming merge: checkpoints on disk in, a Hugging Face model directory out, one tensor chunk at a time.

Peak memory is a few chunks per input (``chunk_numel`` entries each), not (k + 1) models: the inputs are opened
with :func:`mmbert_train.checkpoints.open_checkpoint` (lazy, memory-mapped; every format we read) and their
pages are released after every chunk, the arithmetic runs chunk
by chunk (:mod:`.methods`), and each merged chunk goes straight to disk (:mod:`.writer`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..atomic import atomic_output_dir
from ..checkpoints import (
    EMBEDDINGS,
    Checkpoint,
    CheckpointError,
    check_output_path,
    dtype_of,
    find_tokenizer,
    hf_config_json,
    open_checkpoint,
    release,
    shape_of,
    write_tokenizer,
)
from .methods import (
    DEFAULT_CHUNK_NUMEL,
    check_weights,
    chunk_bounds,
    compute_dtype,
    ema_weights,
    linear_chunks,
    ties_chunks,
)
from .writer import StreamingSafetensorsWriter

METHODS = ("ties", "linear", "ema")
OUTPUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DTYPE_NAMES = {value: key for key, value in OUTPUT_DTYPES.items()}


class MergeError(ValueError):
    """Merge inputs that do not fit together; the message names the tensor and the files."""


@dataclass
class _Input:
    role: str  # "base", "models[2]": how errors name it
    path: Path
    checkpoint: Checkpoint

    @property
    def state(self) -> Mapping[str, Tensor]:
        return self.checkpoint.weights

    def shape(self, key: str) -> tuple[int, ...]:
        return shape_of(self.state, key)

    def dtype(self, key: str) -> torch.dtype:
        return dtype_of(self.state, key)

    def release(self) -> None:
        release(self.state)

    def __str__(self) -> str:
        return f"{self.role} ({self.path})"


def check_compatible(inputs: Sequence[_Input]) -> list[str]:
    """Same tensor names, shapes and (for integer tensors) dtypes everywhere; returns the sorted key list."""
    ref = inputs[0]
    keys = set(ref.state)
    for other in inputs[1:]:
        theirs = set(other.state)
        if theirs != keys:
            missing, extra = sorted(keys - theirs), sorted(theirs - keys)
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} tensor(s) of {ref}: {', '.join(missing[:5])}")
            if extra:
                parts.append(f"{len(extra)} tensor(s) not in {ref}: {', '.join(extra[:5])}")
            raise MergeError(f"{other} does not have the same tensors: " + "; ".join(parts))
    for key in sorted(keys):
        shape = ref.shape(key)
        for other in inputs[1:]:
            theirs = other.shape(key)
            if theirs != shape:
                what = "vocab sizes differ" if key in (EMBEDDINGS, "decoder.bias") else "shapes differ"
                raise MergeError(
                    f"{what}: tensor {key} is {list(shape)} in {ref} but {list(theirs)} in {other}"
                )
            if ref.dtype(key).is_floating_point != other.dtype(key).is_floating_point or (
                not ref.dtype(key).is_floating_point and ref.dtype(key) != other.dtype(key)
            ):
                raise MergeError(
                    f"tensor {key} is {ref.dtype(key)} in {ref} but {other.dtype(key)} in {other}"
                )
    return sorted(keys)


def merge_checkpoints(
    *,
    method: str,
    models: Sequence[str | Path],
    out: str | Path,
    base: str | Path | None = None,
    density: float = 0.5,
    weights: Sequence[float] | None = None,
    scale: float = 1.0,
    beta: float = 0.5,
    dtype: str | None = None,
    tokenizer: str | Path | None = None,
    trust_pickle: bool = False,
    overwrite: bool = False,
    chunk_numel: int = DEFAULT_CHUNK_NUMEL,
    progress: bool = True,
    record: Mapping[str, Any] | None = None,
) -> Path:
    """Merge checkpoints into a Hugging Face ``ModernBertForMaskedLM`` directory at ``out``; returns ``out``.

    ``method``: ``ties`` (needs ``base``; ``density``, ``weights``, ``scale``), ``linear`` (``weights``) or
    ``ema`` (``models`` oldest first, weights ``beta^(N-k)``). The output keeps the dtypes of the base (TIES)
    or of the newest model, unless ``dtype`` names one. ``record`` is stored as ``merge.json`` next to the
    weights, together with the resolved inputs and weights.
    """
    if method not in METHODS:
        raise MergeError(f"unknown merge method {method!r}; choose from {', '.join(METHODS)}")
    if not models:
        raise MergeError("no models to merge")
    if method == "ties":
        if base is None:
            raise MergeError("TIES needs a base checkpoint (the one the task vectors are taken against)")
        if not 0.0 <= density <= 1.0:
            raise MergeError(f"density must be in [0, 1], got {density}")
    elif base is not None:
        raise MergeError(f"method {method!r} takes no base checkpoint (only ties does)")
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise MergeError(f"unknown output dtype {dtype!r}; choose from {', '.join(OUTPUT_DTYPES)}")
    try:
        weights = ema_weights(len(models), beta) if method == "ema" else check_weights(weights, len(models))
    except ValueError as err:
        raise MergeError(str(err)) from None

    roles = ([("base", base)] if method == "ties" else []) + [
        (f"models[{i}]", m) for i, m in enumerate(models)
    ]
    for role, path in roles:  # every path first: a typo in the last one should not cost a half-done merge
        if not Path(path).exists():
            raise MergeError(f"{role} not found: {path}")
    try:
        check_output_path(out, dict(roles))
        inputs = [
            _Input(role, Path(path), open_checkpoint(path, trust_pickle=trust_pickle, role=role))
            for role, path in roles
        ]
        # the config (and tokenizer) of the output come from the base, or from the newest checkpoint
        reference = inputs[0] if method == "ties" else inputs[-1]
        config = reference.checkpoint.model_config()
    except CheckpointError as err:
        raise MergeError(str(err)) from None
    keys = check_compatible(inputs)

    out_dtypes = {k: OUTPUT_DTYPES[dtype] if dtype else reference.dtype(k) for k in keys}
    for key in keys:
        if not reference.dtype(key).is_floating_point:
            out_dtypes[key] = reference.dtype(key)
    entries = [(k, out_dtypes[k], reference.shape(k)) for k in keys]
    total = sum(_numel(shape) for _, _, shape in entries)
    started = time.perf_counter()
    with atomic_output_dir(Path(out), overwrite=overwrite) as tmp:
        # config and tokenizer first: a tokenizer that does not fit the model fails before the merge runs
        float_dtype = OUTPUT_DTYPES.get(dtype) or reference.dtype(EMBEDDINGS)
        (tmp / "config.json").write_text(hf_config_json(config, _DTYPE_NAMES.get(float_dtype, "float32")))
        tokenizer_source = find_tokenizer(reference.path, tokenizer)
        if tokenizer_source is not None:
            try:
                write_tokenizer(tokenizer_source, tmp, config)
            except CheckpointError as err:
                raise MergeError(str(err)) from None
        writer = StreamingSafetensorsWriter(tmp / "model.safetensors", entries)
        bar = tqdm(total=total, unit="param", unit_scale=True, desc=f"merge ({method})", disable=not progress)
        for key, out_dtype, shape in entries:
            for chunk in _merge_tensor(key, shape, inputs, method, density, weights, scale, chunk_numel):
                writer.write(chunk.to(out_dtype))
                bar.update(chunk.numel())
        writer.close()
        bar.close()

        info = {
            "method": method,
            "base": str(base) if base is not None else None,
            "models": [str(m) for m in models],
            "weights": weights,
            **({"density": density, "scale": scale} if method == "ties" else {}),
            **({"beta": beta} if method == "ema" else {}),
            "seconds": round(time.perf_counter() - started, 2),
            "recipe": dict(record or {}),
        }
        (tmp / "merge.json").write_text(json.dumps(info, indent=2) + "\n")
    return Path(out)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _merge_tensor(key, shape, inputs, method, density, weights, scale, chunk_numel):
    """Yield the merged tensor ``key`` in flat chunks (compute dtype; non-float tensors: checked and copied)."""
    numel = _numel(shape)
    flat = [item.state[key].reshape(-1) for item in inputs]
    if not flat[0].is_floating_point():
        for item, other in zip(inputs[1:], flat[1:]):
            if not torch.equal(other, flat[0]):
                raise MergeError(
                    f"tensor {key} is not a float tensor and differs between {inputs[0]} and {item}"
                )
        yield flat[0]
        return
    dtype = compute_dtype(*(t.dtype for t in flat))

    def read(i: int, start: int, stop: int) -> Tensor:
        # a copy, then the mapped pages go back: the selection passes of TIES read every chunk several times
        chunk = flat[i][start:stop].to(dtype, copy=True)
        inputs[i].release()
        return chunk

    bounds = chunk_bounds(numel, chunk_numel, shape[-1] if len(shape) > 1 else 1)
    if method == "ties":
        yield from ties_chunks(read, len(inputs) - 1, bounds, density=density, weights=weights, scale=scale)
    else:
        yield from linear_chunks(read, len(inputs), bounds, weights=weights)
