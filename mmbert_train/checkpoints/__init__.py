"""Every checkpoint format we read or write, behind one API and one error type.

Read: Hugging Face ``ModernBertForMaskedLM`` directories (``model.safetensors``, sharded safetensors,
``pytorch_model.bin``), single ``.safetensors`` files, Composer ``.pt`` files of ModernBERT's FlexBert training
model (the published mmBERT checkpoints) and of ours, and sharded FSDP checkpoints written with
``torch.distributed.checkpoint``. Write: Hugging Face directories. Weights are opened lazily (memory-mapped where
the format allows) and always in Hugging Face key names.

- :mod:`.formats`: format detection, the key maps, the pickle allow-list, model configs, load / save;
- :mod:`.lazy`: zero-copy safetensors and per-tensor DCP readers (what merge and export stream from);
- :mod:`.optimizer_state`: a Composer checkpoint's optimizer state renamed onto our parameter names.
"""

from __future__ import annotations

from .errors import CheckpointError
from .formats import (
    check_state_dict,
    composer_to_hf_keys,
    flexbert_to_hf_key,
    load_pickle,
    load_pretrained,
    open_state_dict,
    read_model_config,
    save_pretrained,
    strip_wrappers,
)
from .lazy import (
    EMBEDDINGS,
    SAFETENSORS_DTYPES,
    DcpStateDict,
    SafetensorsStateDict,
    checkpoint_order,
    hf_config_of,
    is_dcp_dir,
    load_checkpoint,
    open_checkpoint,
)
from .optimizer_state import optimizer_state_by_name

__all__ = [
    "EMBEDDINGS",
    "SAFETENSORS_DTYPES",
    "CheckpointError",
    "DcpStateDict",
    "SafetensorsStateDict",
    "check_state_dict",
    "checkpoint_order",
    "composer_to_hf_keys",
    "flexbert_to_hf_key",
    "hf_config_of",
    "is_dcp_dir",
    "load_checkpoint",
    "load_pickle",
    "load_pretrained",
    "open_checkpoint",
    "open_state_dict",
    "optimizer_state_by_name",
    "read_model_config",
    "save_pretrained",
    "strip_wrappers",
]
