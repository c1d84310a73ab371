"""The `ModelConfig` of a checkpoint of any format.

- Hugging Face directory / ``.safetensors`` file: its ``config.json``, either transformers generation
  (:meth:`ModelConfig.from_hf_dict`);
- our Composer ``.pt`` and sharded (DCP) checkpoints: the fields the trainer's ``ModelConfigRecorder`` saved;
- FlexBert Composer ``.pt``: FlexBert's config keys (``sliding_window``, ``rotary_emb_base``, ...) mapped onto
  ours, then vocab / hidden / intermediate / layer count from the tensor shapes (the shapes win: FlexBert pads
  the vocabulary to a multiple of 8 in its embedding matrix); what neither says must be passed as an override.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..model.config import ModelConfig
from .errors import CheckpointError
from .keys import EMBEDDINGS, shape_of

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
# What a FlexBert checkpoint without its config cannot tell from the tensor shapes.
NOT_FROM_SHAPES = (
    "num_attention_heads",
    "global_attn_every_n_layers",
    "local_attention",
    "global_rope_theta",
    "local_rope_theta",
)


def _checked(source: str, build, *args, **kwargs) -> ModelConfig:
    """``build(...)`` with a config problem (a ValueError) reported as the one `CheckpointError`."""
    try:
        return build(*args, **kwargs)
    except CheckpointError:
        raise
    except (ValueError, TypeError) as err:
        raise CheckpointError(str(err) if str(err).startswith(source) else f"{source}: {err}") from None


def config_from_hf(hf: dict[str, Any], where: str, overrides: Mapping[str, Any]) -> ModelConfig:
    return _checked(where, ModelConfig.from_hf_dict, hf, where=where, **overrides)


def config_from_recorded(fields: Mapping[str, Any], where: str, overrides: Mapping[str, Any]) -> ModelConfig:
    return _checked(where, ModelConfig.from_dict, dict(fields), **overrides)


def flexbert_fields(content: Mapping[str, Any]) -> dict[str, Any]:
    """FlexBert's config content as `ModelConfig` fields."""
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


def shape_fields(weights: Mapping) -> dict[str, Any]:
    """What the tensor shapes say: vocab, hidden, intermediate and layer count."""
    values: dict[str, Any] = {}
    if EMBEDDINGS in weights:
        values["vocab_size"], values["hidden_size"] = shape_of(weights, EMBEDDINGS)
    wi = "model.layers.0.mlp.Wi.weight"
    if wi in weights:
        values["intermediate_size"] = shape_of(weights, wi)[0] // 2
    layers = {int(k.split(".")[2]) for k in weights if k.startswith("model.layers.")}
    if layers:
        values["num_hidden_layers"] = max(layers) + 1
    return values


def config_from_flexbert(
    content: Mapping[str, Any] | None, weights: Mapping, path: Path, overrides: Mapping[str, Any]
) -> ModelConfig:
    values = flexbert_fields(content) if content is not None else {}
    values.update(shape_fields(weights))
    values.update(overrides)
    missing = [key for key in NOT_FROM_SHAPES if key not in values]
    if missing:
        raise CheckpointError(
            f"{path}: the checkpoint does not say {missing}; pass them as keyword overrides, e.g. "
            "load_pretrained(path, num_attention_heads=12, global_attn_every_n_layers=3, local_attention=128, "
            "global_rope_theta=160000.0, local_rope_theta=160000.0)"
        )
    return _checked(str(path), ModelConfig.from_dict, values)
