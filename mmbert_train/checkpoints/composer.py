"""Composer ``.pt`` checkpoints: ``{"state": {"model": {...}, "optimizers": {...}, "callbacks": {...}, ...}}``.

Two layouts of ``state['model']`` (see :mod:`.keys`): ours (``"model." + HF key``, the model config recorded by
the trainer under ``state['callbacks']['ModelConfigRecorder']['model_config']``) and FlexBert's (the published
mmBERT checkpoints; the config, with FlexBert's key names, under
``state['integrations']['huggingface']['model']['config']['content']``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .keys import RenamedStateDict, composer_layout, composer_to_hf_keys
from .pickles import load_pickle

OUR_CONFIG_CALLBACK = "ModelConfigRecorder"


class ComposerCheckpoint:
    """A Composer checkpoint opened memory-mapped: its weights in HF names, its state for the config."""

    def __init__(self, path: Path, *, trust_pickle: bool = False):
        self.path = Path(path)
        checkpoint = load_pickle(self.path, trust_pickle=trust_pickle)
        if not (isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state"), Mapping)):
            found = (
                sorted(map(str, checkpoint))[:5]
                if isinstance(checkpoint, Mapping)
                else type(checkpoint).__name__
            )
            raise CheckpointError(
                f"{path}: not a Composer checkpoint (no 'state' dict at the top level; found {found})"
            )
        self.state = checkpoint["state"]
        model_state = self.state.get("model")
        if not isinstance(model_state, Mapping):
            raise CheckpointError(f"{path}: Composer checkpoint without weights (state['model'] is missing)")
        self.layout = composer_layout(model_state)
        self.to_hf = composer_to_hf_keys(model_state, f"{path}: state['model']")
        self.weights = RenamedStateDict(model_state, {hf: key for key, hf in self.to_hf.items()})

    def recorded_model_config(self) -> dict[str, Any] | None:
        """The ``ModelConfig`` fields our trainer recorded, or None (FlexBert checkpoints, bare state)."""
        recorded = (self.state.get("callbacks") or {}).get(OUR_CONFIG_CALLBACK) or {}
        fields = recorded.get("model_config") if isinstance(recorded, Mapping) else None
        return dict(fields) if fields is not None else None

    def flexbert_config(self) -> dict[str, Any] | None:
        """The FlexBert config JSON Composer's HuggingFaceModel saved, or None."""
        import json

        try:
            content = self.state["integrations"]["huggingface"]["model"]["config"]["content"]
        except (KeyError, TypeError):
            return None
        return json.loads(content) if isinstance(content, str) else dict(content)

    def optimizers(self) -> Mapping[str, Any]:
        return self.state.get("optimizers") or {}
