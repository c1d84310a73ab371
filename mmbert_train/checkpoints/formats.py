"""Reading and writing encoder weights in the formats our users start from and hand on.

Read (`open_state_dict`, `read_model_config`, `load_pretrained`):

- a Hugging Face `ModernBertForMaskedLM` directory: ``config.json`` + ``model.safetensors`` (or a sharded
  ``model.safetensors.index.json``) or ``pytorch_model.bin``, with or without the tied ``decoder.weight``
  (jhu-clsp/mmBERT-small and -base publish both variants);
- a Composer checkpoint of ModernBERT's FlexBert training model (jhu-clsp/mmBERT-checkpoints): keys
  ``model.bert.embeddings.*``, ``model.bert.encoder.layers.N.*``, ``model.bert.final_norm.*``, ``model.head.*``,
  ``model.decoder.*``; its config (FlexBert's key names) under ``state.integrations.huggingface.model.config``;
- one of our own Composer checkpoints: keys ``"model." + HF key``, config under
  ``state.callbacks.ModelConfigRecorder.model_config``.

Composer checkpoints are pickles. They are opened with ``torch.load(weights_only=True)`` and an explicit
allow-list of the harmless types Composer writes (numpy arrays, ``datetime.timedelta``, ``TorchVersion``);
anything else is refused unless the caller passes ``trust_pickle=True`` (full unpickling runs code from the file,
so it warns). All tensors are memory-mapped, so opening a multi-GB checkpoint reads only what is used.

Write (`save_pretrained`): a Hugging Face directory (``config.json`` with every field, ``model.safetensors``
without ``decoder.weight``, optionally the tokenizer) that ``transformers.AutoModelForMaskedLM`` loads as
``ModernBertForMaskedLM``. It is written to a temporary sibling directory and renamed into place.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_output_dir
from ..model.config import ModelConfig
from ..model.modeling import MMBertForMaskedLM
from .errors import CheckpointError

HF_CONFIG = "config.json"
HF_SAFETENSORS = "model.safetensors"
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_BIN = "pytorch_model.bin"
TIED_KEY = "decoder.weight"
OUR_CONFIG_CALLBACK = "ModelConfigRecorder"

# FlexBert config key -> ModelConfig field (the values need no conversion).
FLEXBERT_CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "global_attn_every_n_layers": "global_attn_every_n_layers",
    "sliding_window": "local_attention",
    "rotary_emb_base": "global_rope_theta",
    "local_attn_rotary_emb_base": "local_rope_theta",
    "max_position_embeddings": "max_position_embeddings",
    "pad_token_id": "pad_token_id",
}


# ---- lazy state-dict views ---------------------------------------------------------------------------------


class _SafetensorsStateDict(Mapping):
    """Memory-mapped view of one or more safetensors files; tensors are read on access."""

    def __init__(self, files: dict[str, Path]):
        from safetensors import safe_open

        self._handles = {}
        self._where: dict[str, Any] = {}
        for key, file in files.items():
            if file not in self._handles:
                self._handles[file] = safe_open(str(file), framework="pt", device="cpu")
            self._where[key] = self._handles[file]

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._where[key].get_tensor(key)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._where[key].get_slice(key).get_shape())

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


class _RenamedStateDict(Mapping):
    """``names[new_key] = source_key`` over a source mapping (no tensor is copied)."""

    def __init__(self, source: Mapping, names: dict[str, str]):
        self._source = source
        self._names = names

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._source[self._names[key]]

    def shape(self, key: str) -> tuple[int, ...]:
        source_key = self._names[key]
        if hasattr(self._source, "shape"):
            return self._source.shape(source_key)
        return tuple(self._source[source_key].shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _shape(state: Mapping, key: str) -> tuple[int, ...]:
    return state.shape(key) if hasattr(state, "shape") else tuple(state[key].shape)


# ---- pickles -------------------------------------------------------------------------------------------------


def _allowed_globals() -> list:
    """Types a Composer checkpoint holds besides tensors and builtins (RNG state, timestamps, versions)."""
    import numpy as np
    from torch.torch_version import TorchVersion

    core = getattr(np, "_core", None) or np.core
    allowed = [np.ndarray, np.dtype, core.multiarray._reconstruct, datetime.timedelta, TorchVersion]
    for name in ("bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
        allowed.append(type(np.dtype(getattr(np, name))))
    for name in ("float16", "float32", "float64", "str_", "object_"):
        allowed.append(type(np.dtype(getattr(np, name))))
    return allowed


def load_pickle(path: Path, *, trust_pickle: bool = False) -> Any:
    """``torch.load`` a pickle checkpoint memory-mapped, with weights_only and our allow-list unless trusted."""
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # an UnpicklingError naming the refused global, or an old non-zip file
        if not trust_pickle:
            refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
            reason = (
                f"it holds {refused.group(1)}"
                if refused
                else f"{error.__class__.__name__}: {str(error)[:300]}"
            )
            raise CheckpointError(
                f"{path}: cannot be opened safely with torch.load(weights_only=True) and the allow-list of "
                f"Composer's types ({reason}). "
                "If you trust this file, pass trust_pickle=True (full unpickling can run code from the file)."
            ) from error
    warnings.warn(
        f"{path}: loading with full unpickling (trust_pickle=True); this runs any code the file contains",
        stacklevel=3,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # legacy (non-zip) serialization cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=False)


# ---- what is at a path ----------------------------------------------------------------------------------------


def _hf_weight_files(directory: Path) -> tuple[str, Any]:
    if (directory / HF_SAFETENSORS).is_file():
        return "safetensors", {None: directory / HF_SAFETENSORS}
    if (directory / HF_SAFETENSORS_INDEX).is_file():
        index = json.loads((directory / HF_SAFETENSORS_INDEX).read_text())
        return "safetensors", {key: directory / file for key, file in index["weight_map"].items()}
    if (directory / HF_BIN).is_file():
        return "bin", directory / HF_BIN
    raise CheckpointError(
        f"{directory}: no weights found (expected {HF_SAFETENSORS}, {HF_SAFETENSORS_INDEX} or {HF_BIN})"
    )


def _open_hf_dir(directory: Path, trust_pickle: bool) -> Mapping[str, torch.Tensor]:
    kind, files = _hf_weight_files(directory)
    if kind == "safetensors":
        if None in files:
            from safetensors import safe_open

            with safe_open(str(files[None]), framework="pt") as handle:
                keys = list(handle.keys())
            files = {key: files[None] for key in keys}
        state: Mapping = _SafetensorsStateDict(files)
    else:
        state = load_pickle(files, trust_pickle=trust_pickle)
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{files}: expected a state dict, found {type(state).__name__}")
    return _RenamedStateDict(state, {k: k for k in state if k != TIED_KEY})


def strip_wrappers(key: str) -> str:
    # DDP's "module." and torch.compile's "_orig_mod." never belong to the parameter's name.
    parts = [p for p in key.split(".") if p != "_orig_mod"]
    if parts and parts[0] == "module":
        parts = parts[1:]
    return ".".join(parts)


def flexbert_to_hf_key(key: str) -> str | None:
    """FlexBert (Composer) key -> HF key, None for the tied decoder weight. See checkpoint-layouts.md."""
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


def _composer_state(checkpoint: Any, path: Path) -> dict:
    if not (isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state"), Mapping)):
        raise CheckpointError(f"{path}: not a Composer checkpoint (no 'state' dict at the top level)")
    state = checkpoint["state"]
    if not isinstance(state.get("model"), Mapping):
        raise CheckpointError(f"{path}: Composer checkpoint without weights (state['model'] is missing)")
    return state


def _composer_layout(model_state: Mapping) -> str:
    keys = [strip_wrappers(k) for k in model_state]
    if any(k.startswith("model.bert.") for k in keys):
        return "flexbert"
    if any(k.startswith("model.model.") for k in keys):
        return "ours"
    return "unknown"


def composer_to_hf_keys(model_state: Mapping, where: str = "state['model']") -> dict[str, str]:
    """``{Composer key: HF key}`` for FlexBert's layout or ours (see checkpoint-layouts.md); the tied decoder
    weight is left out. Also used to rename optimizer state saved under Composer's parameter names."""
    layout = _composer_layout(model_state)
    if layout == "unknown":
        raise CheckpointError(
            f"{where}: keys are neither FlexBert's ('model.bert.…') nor ours ('model.model.…'); "
            f"first key: {next(iter(model_state), None)!r}"
        )
    names: dict[str, str] = {}
    for key in model_state:
        if layout == "flexbert":
            hf_key = flexbert_to_hf_key(key)
        else:
            hf_key = strip_wrappers(key)[len("model.") :]
        if hf_key is not None and hf_key != TIED_KEY:
            names[key] = hf_key
    return names


def _open_composer(path: Path, trust_pickle: bool) -> tuple[Mapping[str, torch.Tensor], dict, str]:
    state = _composer_state(load_pickle(path, trust_pickle=trust_pickle), path)
    model_state = state["model"]
    to_hf = composer_to_hf_keys(model_state, f"{path}: state['model']")
    names = {hf_key: key for key, hf_key in to_hf.items()}
    return _RenamedStateDict(model_state, names), state, _composer_layout(model_state)


def _is_hf_dir(path: Path) -> bool:
    return path.is_dir()


def open_state_dict(path: str | os.PathLike, *, trust_pickle: bool = False) -> Mapping[str, torch.Tensor]:
    """A lazy, memory-mapped ``Mapping[str, Tensor]`` of the weights at ``path``, in HF key names.

    The tied ``decoder.weight`` is never included (it is the token embedding matrix).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if _is_hf_dir(path):
        return _open_hf_dir(path, trust_pickle)
    return _open_composer(path, trust_pickle)[0]


# ---- configs -------------------------------------------------------------------------------------------------


def _flexbert_config(content: Mapping, where: str) -> dict[str, Any]:
    values = {
        field: content[key] for key, field in FLEXBERT_CONFIG_KEYS.items() if content.get(key) is not None
    }
    eps = (content.get("norm_kwargs") or {}).get("eps")
    if eps is not None:
        values["norm_eps"] = eps
    # FlexBert: a local theta of -1 / None means "same as the global one".
    if values.get("local_rope_theta") is not None and values["local_rope_theta"] < 0:
        del values["local_rope_theta"]
    if "global_rope_theta" in values and "local_rope_theta" not in values:
        values["local_rope_theta"] = values["global_rope_theta"]
    for key in ("global_rope_theta", "local_rope_theta", "norm_eps"):
        if key in values:
            values[key] = float(values[key])
    return values


def _shape_config(state: Mapping) -> dict[str, Any]:
    """What the tensor shapes say: vocab, hidden, intermediate and layer count."""
    values: dict[str, Any] = {}
    emb = "model.embeddings.tok_embeddings.weight"
    if emb in state:
        values["vocab_size"], values["hidden_size"] = _shape(state, emb)
    wi = "model.layers.0.mlp.Wi.weight"
    if wi in state:
        values["intermediate_size"] = _shape(state, wi)[0] // 2
    layers = {int(k.split(".")[2]) for k in state if k.startswith("model.layers.")}
    if layers:
        values["num_hidden_layers"] = max(layers) + 1
    return values


_NOT_FROM_SHAPES = (
    "num_attention_heads",
    "global_attn_every_n_layers",
    "local_attention",
    "global_rope_theta",
    "local_rope_theta",
)


def _config_from_composer(state: dict, layout: str, weights: Mapping, path: Path, overrides) -> ModelConfig:
    if layout == "ours":
        recorded = (state.get("callbacks") or {}).get(OUR_CONFIG_CALLBACK) or {}
        if "model_config" in recorded:
            return ModelConfig.from_dict(dict(recorded["model_config"]), **overrides)
    values: dict[str, Any] = {}
    try:
        content = state["integrations"]["huggingface"]["model"]["config"]["content"]
    except (KeyError, TypeError):
        content = None
    if isinstance(content, str):
        content = json.loads(content)
    if content is not None:
        values.update(_flexbert_config(content, str(path)))
    # The weights' shapes win (FlexBert pads the vocabulary to a multiple of 8 in its embedding matrix).
    values.update(_shape_config(weights))
    values.update(overrides)
    missing = [key for key in _NOT_FROM_SHAPES if key not in values]
    if missing:
        raise CheckpointError(
            f"{path}: the checkpoint does not say {missing}; pass them as keyword overrides, e.g. "
            "load_pretrained(path, num_attention_heads=12, global_attn_every_n_layers=3, local_attention=128, "
            "global_rope_theta=160000.0, local_rope_theta=160000.0)"
        )
    return ModelConfig.from_dict(values)


def read_model_config(
    path: str | os.PathLike, *, trust_pickle: bool = False, **overrides: Any
) -> ModelConfig:
    """The `ModelConfig` of the checkpoint at ``path``; ``overrides`` replace (or supply) fields."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if _is_hf_dir(path):
        config_file = path / HF_CONFIG
        if not config_file.is_file():
            raise CheckpointError(f"{path}: no {HF_CONFIG} in this directory")
        try:
            hf = json.loads(config_file.read_text())
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{config_file}: not valid JSON ({error})") from error
        return ModelConfig.from_hf_dict(hf, where=str(config_file), **overrides)
    weights, state, layout = _open_composer(path, trust_pickle)
    return _config_from_composer(state, layout, weights, path, overrides)


# ---- loading -------------------------------------------------------------------------------------------------


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise `CheckpointError` naming every missing / unexpected key and every shape mismatch."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{key}: checkpoint has shape {_shape(state, key)}, the model expects {expected[key]}"
        for key in expected
        if key in state and _shape(state, key) != expected[key]
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:10]}{' …' if len(missing) > 10 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:10]}{' …' if len(unexpected) > 10 else ''}")
    if wrong:
        problems.append("wrong shapes: " + "; ".join(wrong[:10]))
    if problems:
        raise CheckpointError(f"{where}: weights do not fit the model config: " + " | ".join(problems))


def load_pretrained(
    path: str | os.PathLike, *, trust_pickle: bool = False, **config_overrides: Any
) -> MMBertForMaskedLM:
    """An `MMBertForMaskedLM` (fp32, CPU, eval mode) with the weights of a HF directory or Composer checkpoint.

    ``config_overrides`` replace config fields, e.g. ``attn_backend="sdpa"`` or the RoPE thetas / window of a
    checkpoint that does not record them.
    """
    path = Path(path)
    config = read_model_config(path, trust_pickle=trust_pickle, **config_overrides)
    state = open_state_dict(path, trust_pickle=trust_pickle)
    with torch.device("meta"):
        model = MMBertForMaskedLM(config)
    check_state_dict(model, state, str(path))
    model.to_empty(device="cpu")
    model.load_state_dict({key: state[key].to(torch.float32) for key in state}, strict=True)
    return model.eval()


# ---- saving --------------------------------------------------------------------------------------------------


def _save_tokenizer(tokenizer: Any, directory: Path, config: ModelConfig) -> None:
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(directory))
        return
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = Tokenizer.from_file(str(tokenizer))
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(
            f"tokenizer must be a transformers tokenizer, a tokenizers.Tokenizer or a path, got {tokenizer!r}"
        )

    def token(token_id: int) -> str | None:
        return tokenizer.id_to_token(token_id)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=token(config.pad_token_id),
        eos_token=token(config.eos_token_id),
        bos_token=token(config.bos_token_id),
        unk_token=token(config.unk_token_id),
        mask_token=token(config.mask_token_id),
        cls_token=token(config.bos_token_id),
        sep_token=token(config.eos_token_id),
        model_max_length=config.max_position_embeddings,
    )
    fast.save_pretrained(str(directory))


def save_pretrained(model: MMBertForMaskedLM, out_dir: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write a Hugging Face ``ModernBertForMaskedLM`` directory (config.json, model.safetensors, tokenizer).

    ``tokenizer``: a transformers tokenizer, a ``tokenizers.Tokenizer`` or a path to a ``tokenizer.json``.
    Written to a temporary sibling and renamed, so ``out_dir`` never holds a half-written export.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir, overwrite=True) as tmp:
        tensors = {
            key: value.detach().to("cpu", torch.float32).contiguous()
            for key, value in model.state_dict().items()
            if key != TIED_KEY
        }
        save_file(tensors, str(tmp / HF_SAFETENSORS), metadata={"format": "pt"})
        hf = model.config.to_hf_dict()
        import transformers

        hf["transformers_version"] = transformers.__version__
        (tmp / HF_CONFIG).write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            _save_tokenizer(tokenizer, tmp, model.config)
    return out_dir
