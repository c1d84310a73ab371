"""Every checkpoint format we read or write, behind one API and one error type (`CheckpointError`).

Read (every function accepts every format; :mod:`.detect` tells them apart from the files at the path):
Hugging Face ``ModernBertForMaskedLM`` directories (``model.safetensors``, sharded safetensors,
``pytorch_model.bin``; ``config.json`` of either transformers generation), single ``.safetensors`` files,
Composer ``.pt`` files of ModernBERT's FlexBert training model (the published mmBERT checkpoints) and of ours,
and sharded FSDP checkpoints written with ``torch.distributed.checkpoint``. Weights are opened lazily
(memory-mapped where the format allows) and always in Hugging Face key names. Write: Hugging Face directories
that transformers 4.48+ and 5.x load with the same logits, with a tokenizer both generations read.

- :mod:`.detect`: what a path is;              :mod:`.keys`: the one key map (Composer / FlexBert -> HF);
- :mod:`.pickles`: the pickle allow-list;      :mod:`.safetensors_view`: zero-copy safetensors reading;
- :mod:`.hf`: HF directories and tokenizers;   :mod:`.composer`: Composer ``.pt``;  :mod:`.dcp`: sharded dirs;
- :mod:`.config`: the model config of any format;  :mod:`.reader`: `open_checkpoint`, the one way in;
- :mod:`.pretrained`: `load_pretrained`;       :mod:`.optimizer_state`: optimizer state renamed onto our names.
"""

from __future__ import annotations

import re
from pathlib import Path

from .detect import FORMATS, check_output_path, detect_format
from .errors import CheckpointError
from .hf import (
    check_tokenizer,
    find_tokenizer,
    hf_config_json,
    save_pretrained,
    write_tokenizer,
)
from .keys import (
    EMBEDDINGS,
    TIED_KEY,
    composer_to_hf_key,
    composer_to_hf_keys,
    dtype_of,
    release,
    shape_of,
    strip_wrappers,
)
from .optimizer_state import optimizer_state_by_name
from .pickles import load_pickle
from .pretrained import check_state_dict, load_pretrained
from .reader import Checkpoint, open_checkpoint, open_state_dict, read_model_config
from .safetensors_view import SAFETENSORS_DTYPES, SafetensorsStateDict

_BATCH = re.compile(r"ba(\d+)")


def checkpoint_order(path: Path) -> tuple:
    """Sort key for checkpoints of one run: Composer's batch count (``ep0-ba1200-rank0.pt``), then the name."""
    match = _BATCH.search(Path(path).name)
    return (int(match.group(1)) if match else -1, Path(path).name)


__all__ = [
    "EMBEDDINGS",
    "FORMATS",
    "SAFETENSORS_DTYPES",
    "TIED_KEY",
    "Checkpoint",
    "CheckpointError",
    "SafetensorsStateDict",
    "check_output_path",
    "check_state_dict",
    "check_tokenizer",
    "checkpoint_order",
    "composer_to_hf_key",
    "composer_to_hf_keys",
    "detect_format",
    "dtype_of",
    "find_tokenizer",
    "hf_config_json",
    "load_pickle",
    "load_pretrained",
    "open_checkpoint",
    "open_state_dict",
    "optimizer_state_by_name",
    "read_model_config",
    "release",
    "save_pretrained",
    "shape_of",
    "strip_wrappers",
    "write_tokenizer",
]
