"""Hugging Face model directories: reading their weights and config, writing exports (config, weights, tokenizer).

Read: ``config.json`` + ``model.safetensors``, a sharded ``model.safetensors.index.json``, or ``pytorch_model.bin``
(with or without the tied ``decoder.weight``: jhu-clsp/mmBERT-small and -base publish both variants), or one
``.safetensors`` file with its folder's ``config.json``.

Write (`save_pretrained`): a directory that ``transformers`` 4.48+ and 5.x load as ``ModernBertForMaskedLM`` with the
same thetas and layer types (``config.json`` in both config generations, see
:meth:`mmbert_train.model.config.ModelConfig.to_hf_dict`), ``model.safetensors`` without ``decoder.weight``, and the
tokenizer (`write_tokenizer`). Written to a temporary sibling directory and renamed into place.

Exported tokenizers load in both transformers generations and run the model card's snippets: ``tokenizer.json``
as given, and a ``tokenizer_config.json`` with ``tokenizer_class: PreTrainedTokenizerFast``, ``model_input_names:
[input_ids, attention_mask]`` (``ModernBertModel.forward`` takes no ``token_type_ids``), the special tokens at the
model config's ids, and none of the fields one environment writes that another cannot read (transformers 5's
``TokenizersBackend`` class, ``is_local``, ``local_files_only``). `check_tokenizer` refuses a tokenizer whose
vocabulary or special ids do not fit the model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_output_dir
from ..model.config import ModelConfig
from .detect import (
    HF_BIN,
    HF_BIN_DIR,
    HF_CONFIG,
    HF_CONFIG_ONLY,
    HF_SAFETENSORS,
    HF_SAFETENSORS_DIR,
    HF_SAFETENSORS_INDEX,
    HF_SHARDED_DIR,
    SAFETENSORS_FILE,
)
from .errors import CheckpointError
from .keys import TIED_KEY, RenamedStateDict
from .pickles import load_pickle
from .safetensors_view import SafetensorsStateDict

MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]
TOKENIZER_CLASS = "PreTrainedTokenizerFast"
# tokenizer_config.json fields that describe where and how a tokenizer was loaded, not the tokenizer
ENVIRONMENT_FIELDS = (
    "is_local",
    "local_files_only",
    "name_or_path",
    "_commit_hash",
    "cache_dir",
    "revision",
    "token",
    "use_auth_token",
    "trust_remote_code",
    "tokenizer_file",
    "backend",
)
SPECIAL_ROLES = ("pad", "eos", "bos", "unk", "mask")
# Training code pads the embedding matrix beyond the tokenizer (FlexBert: to a multiple of 8); more than this
# is not the same vocabulary.
VOCAB_PADDING_MULTIPLE = 64


# ---- reading -------------------------------------------------------------------------------------------------


def open_hf_weights(path: Path, fmt: str, *, trust_pickle: bool = False) -> Mapping[str, torch.Tensor]:
    """The weights of a Hugging Face directory (or one ``.safetensors`` file), lazily, without ``decoder.weight``."""
    if fmt == SAFETENSORS_FILE:
        return SafetensorsStateDict([path])
    if fmt == HF_SAFETENSORS_DIR:
        return SafetensorsStateDict([path / HF_SAFETENSORS])
    if fmt == HF_SHARDED_DIR:
        index = path / HF_SAFETENSORS_INDEX
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"{index}: not a safetensors index (no readable weight_map: {err})"
            ) from None
        shards = [path / name for name in sorted(set(weight_map.values()))]
        missing = [shard.name for shard in shards if not shard.is_file()]
        if missing:
            raise CheckpointError(f"{index}: names shard(s) that are missing: {missing}")
        state = SafetensorsStateDict(shards)
        absent = sorted(set(weight_map) - set(state) - {TIED_KEY})
        if absent:
            raise CheckpointError(f"{index}: tensors {absent[:5]} are not in the shards it names")
        return state
    if fmt == HF_BIN_DIR:
        file = path / HF_BIN
        state = load_pickle(file, trust_pickle=trust_pickle)
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{file}: expected a state dict of tensors, found {type(state).__name__}")
        return RenamedStateDict(state, {k: k for k in state if k != TIED_KEY})
    if fmt == HF_CONFIG_ONLY:
        raise CheckpointError(
            f"{path}: no weights found (expected {HF_SAFETENSORS}, {HF_SAFETENSORS_INDEX} or {HF_BIN} "
            f"next to {HF_CONFIG})"
        )
    raise ValueError(f"not a Hugging Face format: {fmt}")


def hf_config_path(path: Path, fmt: str) -> Path:
    return (path.parent if fmt == SAFETENSORS_FILE else path) / HF_CONFIG


def read_hf_config(path: Path, fmt: str) -> dict[str, Any]:
    """The ``config.json`` content that goes with a Hugging Face directory or ``.safetensors`` file."""
    file = hf_config_path(path, fmt)
    if not file.is_file():
        raise CheckpointError(
            f"{path}: no {HF_CONFIG} {'next to this file' if fmt == SAFETENSORS_FILE else 'in this directory'}"
        )
    try:
        hf = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{file}: not valid JSON ({error})") from error
    if not isinstance(hf, dict):
        raise CheckpointError(f"{file}: expected a JSON object, found {type(hf).__name__}")
    return hf


# ---- writing -------------------------------------------------------------------------------------------------


def hf_config_json(config: ModelConfig, torch_dtype: str = "float32") -> str:
    """The ``config.json`` text of an export: both config generations, our transformers version, the dtype."""
    import transformers

    hf = config.to_hf_dict()
    hf["torch_dtype"] = hf["dtype"] = torch_dtype  # transformers 4 reads torch_dtype, 5 reads dtype
    hf["transformers_version"] = transformers.__version__
    return json.dumps(hf, indent=2, sort_keys=True) + "\n"


def save_pretrained(
    model: torch.nn.Module, out_dir: str | os.PathLike, tokenizer: Any = None, *, overwrite: bool = True
) -> Path:
    """Write a Hugging Face ``ModernBertForMaskedLM`` directory (config.json, model.safetensors, tokenizer).

    ``tokenizer``: a transformers tokenizer, a ``tokenizers.Tokenizer``, a tokenizer directory or a path to a
    ``tokenizer.json`` (see `write_tokenizer`). Written to a temporary sibling and renamed, so ``out_dir`` never
    holds a half-written export.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    config: ModelConfig = model.config
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        if tokenizer is not None:  # first: a tokenizer that does not fit fails before the weights are written
            write_tokenizer(tokenizer, tmp, config)
        tensors = {
            key: value.detach().to("cpu", torch.float32).contiguous()
            for key, value in model.state_dict().items()
            if key != TIED_KEY
        }
        save_file(tensors, str(tmp / HF_SAFETENSORS), metadata={"format": "pt"})
        (tmp / HF_CONFIG).write_text(hf_config_json(config))
    return out_dir


# ---- tokenizers ----------------------------------------------------------------------------------------------


def _declared_special_ids(source: Path) -> dict[str, int | None]:
    """The special tokens a tokenizer directory declares (tokenizer_config.json / special_tokens_map.json)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(source / "tokenizer.json"))
    declared: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        file = source / name
        if file.is_file():
            try:
                content = json.loads(file.read_text())
            except ValueError as err:
                raise CheckpointError(f"{file}: not valid JSON ({err})") from None
            for role in SPECIAL_ROLES:
                value = content.get(f"{role}_token")
                if isinstance(value, dict):
                    value = value.get("content")
                if isinstance(value, str):
                    declared[role] = value
    return {role: tok.token_to_id(token) for role, token in declared.items()}


def _as_tokenizer(tokenizer: Any) -> tuple[Any, Path | None, dict[str, int | None], str]:
    """``(tokenizers.Tokenizer, its tokenizer.json if on disk, declared special ids, name for errors)``."""
    from tokenizers import Tokenizer

    if isinstance(tokenizer, (str, os.PathLike)):
        path = Path(tokenizer)
        if path.is_dir():
            if not (path / "tokenizer.json").is_file():
                raise FileNotFoundError(
                    f"tokenizer not found: {path} has no tokenizer.json (expected a tokenizer directory as "
                    "`mmbert prep train-tokenizer` or transformers' save_pretrained writes it, or a tokenizer.json)"
                )
            return (
                Tokenizer.from_file(str(path / "tokenizer.json")),
                path / "tokenizer.json",
                _declared_special_ids(path),
                str(path),
            )
        if path.is_file():
            try:
                return Tokenizer.from_file(str(path)), path, {}, str(path)
            except Exception as err:  # noqa: BLE001 (tokenizers raises a bare Exception)
                raise CheckpointError(f"{path}: not a tokenizer.json ({err})") from None
        raise FileNotFoundError(
            f"tokenizer not found: {path} (expected a tokenizer directory or tokenizer.json)"
        )
    if isinstance(tokenizer, Tokenizer):
        return tokenizer, None, {}, "the tokenizer"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(backend, Tokenizer):
        declared = {role: getattr(tokenizer, f"{role}_token_id", None) for role in SPECIAL_ROLES}
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        return backend, None, {r: i for r, i in declared.items() if i is not None}, name
    raise TypeError(
        f"tokenizer must be a transformers tokenizer, a tokenizers.Tokenizer or a path, got {tokenizer!r}"
    )


def check_tokenizer(
    tokenizer: Any, config: ModelConfig, *, declared: Mapping[str, int | None] = (), name="tokenizer"
) -> None:
    """Refuse a tokenizer (``tokenizers.Tokenizer``) that does not fit ``config``: a vocabulary larger than the
    embedding matrix or much smaller (another tokenizer), or special tokens at other ids than the config's."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    vocab = config.vocab_size
    padded = math.ceil(size / VOCAB_PADDING_MULTIPLE) * VOCAB_PADDING_MULTIPLE
    if size > vocab or vocab > padded:
        raise CheckpointError(
            f"{name} has {size} tokens but the model's vocab_size is {vocab}: not this model's tokenizer "
            f"(the model's vocabulary may exceed the tokenizer's only by padding up to a multiple of "
            f"{VOCAB_PADDING_MULTIPLE}, here {padded})"
        )
    specials = {token.content for token in tokenizer.get_added_tokens_decoder().values() if token.special}
    problems = []
    for role in SPECIAL_ROLES:
        want = getattr(config, f"{role}_token_id")
        if want is None:
            continue
        got = dict(declared).get(role)
        token = tokenizer.id_to_token(want)
        if role in dict(declared):
            if got != want:
                problems.append(f"{role} token is id {got}, the model's {role}_token_id is {want}")
        elif token is None or token not in specials:
            problems.append(f"{role}_token_id {want} is {token!r} in the tokenizer, not a special token")
    if problems:
        raise CheckpointError(f"{name} does not fit the model config: " + "; ".join(problems))


def write_tokenizer(tokenizer: Any, directory: Path, config: ModelConfig) -> None:
    """Write ``tokenizer`` into ``directory`` as a tokenizer both transformers generations load (see the module
    docstring), after `check_tokenizer`. ``tokenizer``: a transformers tokenizer, a ``tokenizers.Tokenizer``, a
    tokenizer directory or a ``tokenizer.json``; special tokens are named by the config's ids."""
    from transformers import PreTrainedTokenizerFast

    tok, json_file, declared, name = _as_tokenizer(tokenizer)
    check_tokenizer(tok, config, declared=declared, name=name)
    ids = {role: getattr(config, f"{role}_token_id") for role in SPECIAL_ROLES}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **{f"{role}_token": tok.id_to_token(i) for role, i in ids.items() if i is not None},
        cls_token=tok.id_to_token(config.bos_token_id),  # mmBERT: cls = bos, sep = eos
        sep_token=tok.id_to_token(config.eos_token_id),
        model_max_length=config.max_position_embeddings,
        model_input_names=MODEL_INPUT_NAMES,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(directory))
    if json_file is not None:  # the given tokenizer.json, byte for byte
        shutil.copyfile(json_file, directory / "tokenizer.json")
    settings_file = directory / "tokenizer_config.json"
    settings = json.loads(settings_file.read_text())
    for field in ENVIRONMENT_FIELDS:
        settings.pop(field, None)
    settings["tokenizer_class"] = TOKENIZER_CLASS
    settings["model_input_names"] = MODEL_INPUT_NAMES
    settings_file.write_text(json.dumps(settings, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def find_tokenizer(checkpoint: Path, tokenizer: str | os.PathLike | None) -> Path | None:
    """``tokenizer`` if given, else the checkpoint's own directory when it holds a ``tokenizer.json``, else None."""
    if tokenizer is not None:
        return Path(tokenizer)
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    return folder if (folder / "tokenizer.json").is_file() else None
