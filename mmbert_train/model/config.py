"""`ModelConfig`: the encoder's hyper-parameters, its presets and the mapping to/from Hugging Face's config.

Field names follow transformers' `ModernBertConfig` wherever one exists, so a `config.json` of
jhu-clsp/mmBERT-small/-base maps onto this dataclass field by field (see `from_hf_dict` / `to_hf_dict`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

ATTN_BACKENDS = ("auto", "flash", "flex", "sdpa", "eager")

# transformers 5's layer types (`layer_types`, keys of `rope_parameters`)
_FULL, _SLIDING = "full_attention", "sliding_attention"

# What a ModernBertConfig may say that this encoder does not implement (value we require).
_HF_FIXED = {
    "hidden_activation": "gelu",
    "classifier_activation": "gelu",
    "norm_bias": False,
    "attention_bias": False,
    "mlp_bias": False,
    "classifier_bias": False,
    "decoder_bias": True,
}


@dataclass
class ModelConfig:
    """Hyper-parameters of an mmBERT / ModernBERT masked-LM encoder.

    Layer ``i`` uses global attention when ``i % global_attn_every_n_layers == 0`` (RoPE theta
    ``global_rope_theta``); the others use local attention where query ``i`` sees key ``j`` iff
    ``|i - j| <= local_attention // 2`` (RoPE theta ``local_rope_theta``), exactly as transformers does.
    """

    vocab_size: int = 256000
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    global_attn_every_n_layers: int = 3
    local_attention: int = 128
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 160000.0
    norm_eps: float = 1e-5
    max_position_embeddings: int = 8192
    # Gemma 2 special ids, as mmBERT uses them (cls = bos, sep = eos).
    pad_token_id: int = 0
    eos_token_id: int = 1
    bos_token_id: int = 2
    unk_token_id: int = 3
    mask_token_id: int = 4
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0  # on the attention probabilities
    attn_out_dropout: float = 0.0  # on the attention block's output (after Wo); the mmBERT configs use 0.1
    mlp_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_cutoff_factor: float = 2.0
    attn_backend: str = "auto"

    def __post_init__(self) -> None:
        problems = []
        if self.hidden_size % self.num_attention_heads:
            problems.append(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        elif (self.hidden_size // self.num_attention_heads) % 2:
            problems.append(f"head dim {self.hidden_size // self.num_attention_heads} must be even for RoPE")
        if self.attn_backend not in ATTN_BACKENDS:
            problems.append(f"attn_backend {self.attn_backend!r} is not one of {ATTN_BACKENDS}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.global_attn_every_n_layers < 1:
            problems.append(f"global_attn_every_n_layers must be >= 1, got {self.global_attn_every_n_layers}")
        if self.local_attention < 0:
            problems.append(f"local_attention must be >= 0, got {self.local_attention}")
        if self.max_position_embeddings < 1:
            problems.append(f"max_position_embeddings must be >= 1, got {self.max_position_embeddings}")
        for name in ("embedding_dropout", "attention_dropout", "attn_out_dropout", "mlp_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("pad_token_id", "eos_token_id", "bos_token_id", "unk_token_id", "mask_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                problems.append(f"{name} {value} is outside the vocabulary [0, {self.vocab_size})")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    # ---- derived quantities -------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def is_global_layer(self, layer: int) -> bool:
        return layer % self.global_attn_every_n_layers == 0

    @property
    def window_half(self) -> int:
        """Local layers: query i sees key j iff |i - j| <= window_half (= local_attention // 2)."""
        return self.local_attention // 2

    def num_parameters(self, include_embeddings: bool = True) -> int:
        h, i, n = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        per_layer = 3 * h * h + h * h + 2 * i * h + i * h + 2 * h  # Wqkv, Wo, Wi, Wo, two norms
        total = n * per_layer - h  # layer 0 has no attention norm
        total += h + h * h + h + self.vocab_size  # final norm, head dense + norm, decoder bias
        if include_embeddings:
            total += self.vocab_size * h + h  # token embeddings + embedding norm
        return total

    # ---- presets ------------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named architecture with keyword overrides: ``ModelConfig.preset("mmbert-base", attn_backend="sdpa")``.

        ``mmbert-small`` / ``mmbert-base`` equal the published Hugging Face configs of jhu-clsp/mmBERT-small /
        -base (RoPE theta 160,000, 8192 positions). Pre-training (phase 1) used theta 10,000 and 1024 tokens: a
        pre-training recipe overrides ``global_rope_theta`` / ``local_rope_theta``.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
        values = dict(PRESETS[name])
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(
                f"unknown ModelConfig field(s) {sorted(unknown)} in overrides for preset {name!r}"
            )
        values.update(overrides)
        return cls(**values)

    # ---- (de)serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A plain dict of the fields (JSON/YAML friendly); the inverse of `from_dict`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], **overrides: Any) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        merged = {**values, **overrides}
        unknown = set(merged) - names
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {sorted(unknown)}")
        return cls(**merged)

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` of the equivalent transformers `ModernBertForMaskedLM`, in both config generations.

        transformers 4.x reads the RoPE thetas from `global_rope_theta` / `local_rope_theta` and the layer pattern
        from `global_attn_every_n_layers`; transformers 5 reads `rope_parameters` (`full_attention` /
        `sliding_attention`) and `layer_types`, and ignores the legacy keys where those are present. Both are
        written, with the same values. Every architecture field is written (nothing is left to transformers'
        defaults, whose special ids and local theta differ from mmBERT's); dropouts are 0 because an exported
        model is for inference and transformers' single `attention_dropout` would apply to both probabilities
        and output.
        """
        return {
            "architectures": ["ModernBertForMaskedLM"],
            "model_type": "modernbert",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "global_attn_every_n_layers": self.global_attn_every_n_layers,
            "layer_types": self.layer_types(),
            "local_attention": self.local_attention,
            "global_rope_theta": float(self.global_rope_theta),
            "local_rope_theta": float(self.local_rope_theta),
            "rope_parameters": {
                _FULL: {"rope_type": "default", "rope_theta": float(self.global_rope_theta)},
                _SLIDING: {"rope_type": "default", "rope_theta": float(self.local_rope_theta)},
            },
            "norm_eps": self.norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "bos_token_id": self.bos_token_id,
            "cls_token_id": self.bos_token_id,
            "sep_token_id": self.eos_token_id,
            "unk_token_id": self.unk_token_id,
            "mask_token_id": self.mask_token_id,
            "initializer_range": self.initializer_range,
            "initializer_cutoff_factor": self.initializer_cutoff_factor,
            "embedding_dropout": 0.0,
            "attention_dropout": 0.0,
            "mlp_dropout": 0.0,
            "classifier_dropout": 0.0,
            "classifier_pooling": "mean",
            **_HF_FIXED,
            "tie_word_embeddings": True,
            "sparse_prediction": False,
            "sparse_pred_ignore_index": -100,
            "torch_dtype": "float32",
        }

    def layer_types(self) -> list[str]:
        """transformers 5's name for each layer's attention: ``full_attention`` (global) or ``sliding_attention``."""
        return [_FULL if self.is_global_layer(i) else _SLIDING for i in range(self.num_hidden_layers)]

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], where: str = "config.json", **overrides: Any) -> ModelConfig:
        """Read a ModernBertConfig dict (e.g. a `config.json`) of either generation; ``overrides`` replace fields
        afterwards.

        RoPE thetas: `rope_parameters` (transformers 5: `{full_attention: {rope_theta}, sliding_attention:
        {rope_theta}}`, or one flat `{rope_theta}` for both) and/or the legacy `global_rope_theta` (alias
        `rope_theta`) / `local_rope_theta`; a key that is absent everywhere takes transformers' default (global
        160,000, local 10,000), a legacy local theta of null means the global one. Layer pattern: `layer_types`
        and/or `global_attn_every_n_layers` (default 3). Where both generations give a value they must agree;
        a `layer_types` list that is not "global every n-th layer, starting at layer 0" cannot be expressed
        here and is an error, as is any RoPE type but the default (no scaling).
        """
        unsupported = [
            f"{key}={hf[key]!r} (supported: {want!r})"
            for key, want in _HF_FIXED.items()
            if key in hf and hf[key] != want
        ]
        if unsupported:
            raise ValueError(f"{where}: this encoder does not implement " + ", ".join(unsupported))
        if hf.get("model_type", "modernbert") != "modernbert":
            raise ValueError(f"{where}: model_type is {hf.get('model_type')!r}, expected 'modernbert'")
        required = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
        )
        missing = [key for key in required if key not in hf]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}")
        defaults = cls()
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in ("attn_backend", "attn_out_dropout", "global_rope_theta", "local_rope_theta"):
                continue
            if f.name in hf and hf[f.name] is not None:
                values[f.name] = hf[f.name]
            else:
                values[f.name] = getattr(defaults, f.name)
        values["global_rope_theta"], values["local_rope_theta"] = _hf_rope_thetas(hf, where)
        values["global_attn_every_n_layers"] = _hf_global_every(hf, int(hf["num_hidden_layers"]), where)
        # transformers' attention_dropout drops both the probabilities and the attention output.
        values["attn_out_dropout"] = values["attention_dropout"]
        for key in ("norm_eps", "initializer_range"):
            values[key] = float(values[key])
        values.update(overrides)
        return cls.from_dict(values)


def _theta(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{where}: {key} must be a positive number, got {value!r}")
    return float(value)


def _hf_rope_thetas(hf: dict[str, Any], where: str) -> tuple[float, float]:
    """(global, local) RoPE theta from either config generation; see `ModelConfig.from_hf_dict`."""
    if hf.get("rope_scaling") not in (None, {}):
        raise ValueError(
            f"{where}: rope_scaling={hf['rope_scaling']!r} is not implemented (default RoPE only)"
        )
    new: dict[str, float] = {}
    params = hf.get("rope_parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise ValueError(f"{where}: rope_parameters must be a mapping, got {params!r}")
        per_type = {_FULL: params.get(_FULL), _SLIDING: params.get(_SLIDING)}
        if per_type[_FULL] is None and per_type[_SLIDING] is None and "rope_theta" in params:
            per_type = {_FULL: params, _SLIDING: params}  # one set of parameters for every layer
        for kind, name in ((_FULL, "global"), (_SLIDING, "local")):
            entry = per_type[kind]
            if entry is None:
                continue
            key = f"rope_parameters.{kind}" if entry is not params else "rope_parameters"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: {key} must be a mapping, got {entry!r}")
            if entry.get("rope_type", "default") != "default":
                raise ValueError(
                    f"{where}: {key}.rope_type={entry['rope_type']!r} is not implemented (default RoPE only)"
                )
            if entry.get("rope_theta") is not None:
                new[name] = _theta(entry["rope_theta"], f"{key}.rope_theta", where)
    legacy: dict[str, float] = {}
    global_key = "global_rope_theta" if hf.get("global_rope_theta") is not None else "rope_theta"
    if hf.get(global_key) is not None:
        legacy["global"] = _theta(hf[global_key], global_key, where)
    if hf.get("local_rope_theta") is not None:
        legacy["local"] = _theta(hf["local_rope_theta"], "local_rope_theta", where)
    legacy_keys = {"global": global_key, "local": "local_rope_theta"}
    new_keys = {
        "global": f"rope_parameters.{_FULL}.rope_theta",
        "local": f"rope_parameters.{_SLIDING}.rope_theta",
    }
    for name in ("global", "local"):
        if name in new and name in legacy and new[name] != legacy[name]:
            raise ValueError(
                f"{where}: the two config generations disagree on the {name} RoPE theta: "
                f"{legacy_keys[name]}={legacy[name]:g} but {new_keys[name]}={new[name]:g}"
            )
    global_theta = new.get("global", legacy.get("global", 160000.0))
    if "local" in new or "local" in legacy:
        local_theta = new.get("local", legacy.get("local"))
    elif "local_rope_theta" in hf:  # present but null: transformers uses the global theta
        local_theta = global_theta
    else:
        local_theta = 10000.0  # transformers' ModernBertConfig default
    return global_theta, local_theta


def _hf_global_every(hf: dict[str, Any], num_layers: int, where: str) -> int:
    """``global_attn_every_n_layers`` from `layer_types` and/or the legacy key; see `ModelConfig.from_hf_dict`."""
    every = hf.get("global_attn_every_n_layers")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ValueError(f"{where}: global_attn_every_n_layers must be an integer >= 1, got {every!r}")
    types = hf.get("layer_types")
    if types is None:
        return 3 if every is None else every
    if not isinstance(types, list) or len(types) != num_layers or not set(types) <= {_FULL, _SLIDING}:
        raise ValueError(
            f"{where}: layer_types must list {num_layers} entries (num_hidden_layers), each {_FULL!r} or "
            f"{_SLIDING!r}; got {types!r}"
        )

    def pattern(n: int) -> list[str]:
        return [_FULL if i % n == 0 else _SLIDING for i in range(num_layers)]

    full = [i for i, kind in enumerate(types) if kind == _FULL]
    inferred = full[1] if len(full) > 1 else max(num_layers, 1)
    if not full or full[0] != 0 or pattern(inferred) != types:
        raise ValueError(
            f"{where}: layer_types {types} cannot be expressed by this encoder, whose global layers are every "
            "n-th layer starting at layer 0 (global_attn_every_n_layers)"
        )
    if every is not None and pattern(every) != types:
        raise ValueError(
            f"{where}: the two config generations disagree on the layer pattern: global_attn_every_n_layers="
            f"{every} gives {pattern(every)} but layer_types is {types}"
        )
    return inferred if every is None else every


def output_projection_std(config: ModelConfig) -> float:
    """Init std of the residual-branch output projections (attention Wo, MLP Wo): std / sqrt(2 * num_layers)."""
    return config.initializer_range / math.sqrt(2.0 * config.num_hidden_layers)


PRESETS: dict[str, dict[str, Any]] = {
    # jhu-clsp/mmBERT-small: 22 x 384, GLU intermediate 1152, 6 heads of 64, Gemma 2 vocab.
    "mmbert-small": dict(
        vocab_size=256000,
        hidden_size=384,
        intermediate_size=1152,
        num_hidden_layers=22,
        num_attention_heads=6,
    ),
    # jhu-clsp/mmBERT-base: 22 x 768, GLU intermediate 1152, 12 heads of 64.
    "mmbert-base": dict(
        vocab_size=256000,
        hidden_size=768,
        intermediate_size=1152,
        num_hidden_layers=22,
        num_attention_heads=12,
    ),
    # For tests: 4 layers (global at 0 and 3), window 16 so short sequences already exercise local attention.
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        local_attention=16,
        max_position_embeddings=512,
        global_rope_theta=10000.0,
        local_rope_theta=10000.0,
    ),
}
