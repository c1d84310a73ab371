"""What a path is: which of the checkpoint formats we read, decided from the files it holds.

=========================  ================================================================================
format                     what is at the path
=========================  ================================================================================
``hf-safetensors``         a directory with ``model.safetensors`` (Hugging Face; ``config.json`` next to it)
``hf-sharded-safetensors`` a directory with ``model.safetensors.index.json`` and the shards it names
``hf-bin``                 a directory with ``pytorch_model.bin`` (a pickled state dict)
``safetensors-file``       one ``.safetensors`` file (its config: the ``config.json`` in the same folder)
``dcp``                    a sharded FSDP checkpoint: a directory with ``.metadata`` + ``__<rank>_0.distcp``
``composer``               any other file: a Composer ``.pt`` (ours, or ModernBERT's FlexBert training model)
=========================  ================================================================================

A directory with only a ``config.json`` is ``hf-config-only``: its model config can be read, its weights cannot.
"""

from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError

HF_CONFIG = "config.json"
HF_SAFETENSORS = "model.safetensors"
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_BIN = "pytorch_model.bin"
DCP_METADATA = ".metadata"

HF_SAFETENSORS_DIR = "hf-safetensors"
HF_SHARDED_DIR = "hf-sharded-safetensors"
HF_BIN_DIR = "hf-bin"
SAFETENSORS_FILE = "safetensors-file"
DCP_DIR = "dcp"
COMPOSER_FILE = "composer"

HF_CONFIG_ONLY = "hf-config-only"

HF_FORMATS = (HF_SAFETENSORS_DIR, HF_SHARDED_DIR, HF_BIN_DIR)
FORMATS = (*HF_FORMATS, SAFETENSORS_FILE, DCP_DIR, COMPOSER_FILE)


def detect_format(path: str | Path, role: str = "checkpoint") -> str:
    """One of :data:`FORMATS` for ``path``; a `CheckpointError` naming the path (and ``role``) otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{role} not found: {path} (no such file or directory)")
    if path.is_file():
        return SAFETENSORS_FILE if path.suffix == ".safetensors" else COMPOSER_FILE
    if (path / DCP_METADATA).is_file():
        return DCP_DIR
    for name, fmt in ((HF_SAFETENSORS, HF_SAFETENSORS_DIR), (HF_SAFETENSORS_INDEX, HF_SHARDED_DIR)):
        if (path / name).is_file():
            return fmt
    if (path / HF_BIN).is_file():
        return HF_BIN_DIR
    if (path / HF_CONFIG).is_file():
        return HF_CONFIG_ONLY  # its config can be read; opening its weights is the error
    raise CheckpointError(
        f"{path}: not a checkpoint directory (expected a Hugging Face model with {HF_CONFIG} and "
        f"{HF_SAFETENSORS} / {HF_SAFETENSORS_INDEX} / {HF_BIN}, or a sharded torch.distributed.checkpoint with "
        f"{DCP_METADATA})"
    )


def check_output_path(out: str | Path, inputs: dict[str, str | Path]) -> None:
    """Refuse an output that would replace or contain one of ``inputs`` (``{role: path}``): ``--out`` equal to
    an input (after symlinks, e.g. ``latest-rank0.pt``), or a folder holding one (``--overwrite`` replaces it)."""
    target = Path(out).resolve()
    for role, path in inputs.items():
        source = Path(path).resolve()
        if target == source:
            raise CheckpointError(
                f"the output {out} is the {role} {path}: writing it would replace its input"
            )
        if target in source.parents:
            raise CheckpointError(
                f"the output {out} contains the {role} {path}: writing it would replace its input"
            )
