"""Training recipes: the dataclass tree and `load_recipe` (inheritance + overrides + validation).

A recipe is one YAML file per phase (``recipes/base_pretrain.yaml``, ...). It names what it ``extends:`` and holds
only what differs; ``key=value`` arguments override any value (``trainer.max_duration=20ba``). Loading runs two
kinds of checks, both before anything is built and without touching data:

1. schema (`mmbert_train.schema.from_dict`): unknown keys (with the closest valid ones), wrong types, missing
   required values; each error names the file and the dotted key;
2. consistency across sections (:func:`check_recipe`): e.g. a sequence length above the model's
   ``max_position_embeddings``, a warmup longer than the phase, a micro-batch larger than the batch.

Checking the recipe against the data on disk (languages present, source folders, shares) is a separate step done by
`mmbert_train.data.sampling` when a run or a plan starts.

Relative paths in a recipe (data root, language files, checkpoint folders) are relative to the working directory:
the repository root for the shipped recipes (``composer train.py recipes/base_decay.yaml``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmbert_train.data.batching import check_batch_warmup
from mmbert_train.data.spec import DataConfig
from mmbert_train.model.config import PRESETS, ModelConfig
from mmbert_train.schema import ConfigError, from_dict, load_yaml, to_dict

__all__ = [
    "ConfigError",
    "EvalConfig",
    "FSDPConfig",
    "InitFromConfig",
    "LoggingConfig",
    "ModelSection",
    "OptimizerConfig",
    "Recipe",
    "SchedulerConfig",
    "TrainerConfig",
    "WandbConfig",
    "check_recipe",
    "load_recipe",
    "parse_time",
    "recipe_to_yaml",
]


# ------------------------------------------------------------------------------------------------------ model


def _model_section_fields() -> list[tuple[str, Any, Any]]:
    """``preset`` plus every `ModelConfig` field as an optional override (None = keep the preset's value)."""
    hints = typing.get_type_hints(ModelConfig)
    fields: list[tuple[str, Any, Any]] = [("preset", str | None, field(default=None))]
    for f in dataclasses.fields(ModelConfig):
        fields.append((f.name, hints[f.name] | None, field(default=None)))
    return fields


ModelSection = dataclasses.make_dataclass(
    "ModelSection",
    _model_section_fields(),
    namespace={
        "__doc__": (
            "The ``model:`` section: a preset (``mmbert-small``, ``mmbert-base``, ``tiny``) and any `ModelConfig` "
            "field to override (``global_rope_theta: 10000.0``). With ``init_from`` the architecture comes from "
            "the checkpoint and the fields given here are applied on top (e.g. the new RoPE theta of mid-training)."
        ),
    },
)


def model_overrides(section: Any) -> dict[str, Any]:
    """The `ModelConfig` fields a ``model:`` section sets explicitly."""
    return {
        f.name: getattr(section, f.name)
        for f in dataclasses.fields(section)
        if f.name != "preset" and getattr(section, f.name) is not None
    }


def resolve_model_config(section: Any) -> ModelConfig:
    """The architecture a ``model:`` section describes (preset + overrides; no preset = `ModelConfig` defaults)."""
    overrides = model_overrides(section)
    if section.preset is not None:
        return ModelConfig.preset(section.preset, **overrides)
    return ModelConfig(**overrides)


@dataclass
class InitFromConfig:
    """Start a phase from the previous phase's final checkpoint (or a published one).

    ``path``: our Composer checkpoint (``.../latest-rank0.pt`` or a file), a Hugging Face directory, or a published
    FlexBert Composer checkpoint; read with `mmbert_train.model.load_pretrained`. Time counters and the LR schedule
    restart at zero in every case.
    """

    path: str
    # Carry the optimizer state (Adam moments) over. The released configs do (Composer `load_path` without
    # `load_weights_only`); a Hugging Face directory has none, so this is then ignored with a warning.
    load_optimizer_state: bool = True
    # Full unpickling of checkpoints that `torch.load(weights_only=True)` refuses (published Composer files).
    trust_pickle: bool = False


# ----------------------------------------------------------------------------------------- optimizer, schedule


@dataclass
class OptimizerConfig:
    """StableAdamW (torch-optimi) with fully decoupled weight decay: ``w <- w * (1 - weight_decay * lr / max_lr)``."""

    name: Literal["stableadamw"] = "stableadamw"
    lr: float = 8e-4  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 8e-5
    decouple_lr: bool = True  # fully decoupled: decay scaled by lr/max_lr, not by lr
    max_lr: float | None = None  # None = lr
    # parameters whose name contains one of these get no weight decay (biases, LayerNorm weights)
    no_decay: list[str] = field(default_factory=lambda: ["bias", "norm"])

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optimizer.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")
        if not self.eps > 0:
            raise ValueError(f"optimizer.eps must be > 0, got {self.eps}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optimizer.betas must be in [0, 1), got {list(self.betas)}")
        if self.max_lr is not None and self.max_lr < self.lr:
            raise ValueError(f"optimizer.max_lr ({self.max_lr}) must be >= optimizer.lr ({self.lr})")


@dataclass
class SchedulerConfig:
    """LR multiplier over a phase: linear warmup, constant, then a decay over the last ``t_decay`` to ``alpha_f``.

    See `mmbert_train.train.schedulers` for the formulas. Times are Composer time strings: ``3000000000tok``,
    ``100ba``, ``0.5dur`` (a fraction of ``trainer.max_duration``).
    """

    name: Literal["warmup_stable_decay", "constant"] = "warmup_stable_decay"
    t_warmup: str = "0ba"
    t_decay: str = "0ba"  # length of the final decay; "1dur" = the whole phase decays
    decay_shape: Literal["linear", "one_minus_sqrt", "cosine"] = "one_minus_sqrt"
    alpha_f: float = 0.0  # final multiplier of the decay (lr_end = alpha_f * lr)

    def __post_init__(self) -> None:
        parse_time(self.t_warmup, "scheduler.t_warmup")
        parse_time(self.t_decay, "scheduler.t_decay")
        if not 0.0 <= self.alpha_f <= 1.0:
            raise ValueError(f"scheduler.alpha_f must be in [0, 1], got {self.alpha_f}")


# ---------------------------------------------------------------------------------------------------- trainer


@dataclass
class FSDPConfig:
    """Composer FSDP settings. On CPU only FSDP2 works (set ``FSDP_VERSION=2``); FSDP1 needs CUDA."""

    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = "FULL_SHARD"
    state_dict_type: Literal["full", "sharded"] = "full"  # checkpoint layout: one file, or one per rank
    mixed_precision: Literal["DEFAULT", "PURE", "FULL"] = "DEFAULT"
    activation_checkpointing: bool = False
    cpu_offload: bool = False


@dataclass
class TrainerConfig:
    """How the phase runs: duration, batch, parallelism, precision, checkpoints."""

    max_duration: str  # e.g. "2300000000000tok", "600ba"
    global_batch_size: int  # sequences (packed rows) per optimizer step, over all ranks
    device_microbatch_size: int | None = None  # per rank; None = the whole per-rank batch at once
    seed: int = 21
    device: Literal["auto", "cpu", "gpu"] = "auto"
    precision: Literal["auto", "fp32", "amp_bf16", "amp_fp16"] = "auto"  # auto: amp_bf16 on GPU, fp32 on CPU
    parallelism: Literal["auto", "ddp", "fsdp"] = "auto"  # auto: DDP when several ranks; fsdp: see `fsdp`
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    compile: bool = False  # torch.compile the model (GPU)
    # Memory of one GPU the microbatch is sized for ("80GB" = 80e9 bytes, "80GiB" = 80 * 2^30); `mmbert config`
    # warns when the memory planner (mmbert_train.memory) says device_microbatch_size does not fit it.
    gpu_memory: str = "80GB"
    run_name: str | None = None  # None = the recipe's `name`
    save_folder: str | None = None  # None = no checkpoints
    save_interval: str = "1000ba"  # also written at the end of the phase
    save_num_checkpoints_to_keep: int = -1  # -1 = keep all
    save_overwrite: bool = False
    autoresume: bool = True  # continue from save_folder's latest checkpoint when one exists
    progress_bar: bool = True
    log_interval: str = "1ba"  # console logger
    log_to_console: bool = False
    # a NaN or infinite training loss stops the run with an error (before the optimizer steps, so no checkpoint
    # of broken weights is written); true keeps training through it
    allow_nonfinite_loss: bool = False

    def __post_init__(self) -> None:
        parse_time(self.max_duration, "trainer.max_duration")
        parse_time(self.save_interval, "trainer.save_interval")
        parse_time(self.log_interval, "trainer.log_interval")
        if self.global_batch_size < 1:
            raise ValueError(f"trainer.global_batch_size must be >= 1, got {self.global_batch_size}")
        if self.seed < 0:
            raise ValueError(f"trainer.seed must be >= 0, got {self.seed}")
        if parse_time(self.log_interval, "trainer.log_interval")[0] <= 0:
            raise ValueError(
                f"trainer.log_interval must be a positive time (e.g. 10ba), got {self.log_interval!r}"
            )
        if parse_time(self.save_interval, "trainer.save_interval")[0] <= 0:
            raise ValueError(
                f"trainer.save_interval must be a positive time (e.g. 1000ba), got {self.save_interval!r}; "
                "for no checkpoints set trainer.save_folder=null (and trainer.autoresume=false)"
            )
        if self.save_num_checkpoints_to_keep == 0 or self.save_num_checkpoints_to_keep < -1:
            raise ValueError(
                "trainer.save_num_checkpoints_to_keep must be -1 (keep all) or >= 1, got "
                f"{self.save_num_checkpoints_to_keep}; 0 would delete every checkpoint, the final one too"
            )
        if self.device_microbatch_size is not None and self.device_microbatch_size < 1:
            raise ValueError(
                f"trainer.device_microbatch_size must be >= 1, got {self.device_microbatch_size}"
            )
        from mmbert_train.memory import parse_memory

        try:
            parse_memory(self.gpu_memory)
        except ValueError as err:
            raise ValueError(f"trainer.gpu_memory: {err}") from None


@dataclass
class EvalConfig:
    """Held-out evaluation during training (what is read, at which fixed mask ratio and how much of it:
    ``data.eval``)."""

    enabled: bool = True
    interval: str = "1000ba"  # also at the end of the phase

    def __post_init__(self) -> None:
        parse_time(self.interval, "eval.interval")


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "mmbert"
    entity: str | None = None
    group: str | None = None
    # auto: online when the W&B server answers, else offline (sync later with `wandb sync`)
    mode: Literal["auto", "online", "offline"] = "auto"


@dataclass
class LoggingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    packing_efficiency: bool = True  # log the loader's packing efficiency every batch


@dataclass
class Recipe:
    """One training phase."""

    name: str
    phase: Literal["pretrain", "midtrain", "decay", "smoke"]
    model: ModelSection  # type: ignore[valid-type]
    data: DataConfig
    trainer: TrainerConfig
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    init_from: InitFromConfig | None = None
    tokenizer: str | None = None  # Hugging Face id or directory; saved with exports
    description: str = ""

    def __post_init__(self) -> None:
        if self.trainer.run_name is None:  # a recipe names its run once, in `name`
            self.trainer.run_name = self.name

    @property
    def model_config(self) -> ModelConfig:
        """The architecture of the model section (with ``init_from`` the checkpoint must agree with it)."""
        return resolve_model_config(self.model)

    def phase_tokens(self) -> int | None:
        """The phase's length in tokens, from ``trainer.max_duration``: exact in ``tok``; in ``ba`` and ``sp`` the
        upper bound of full rows (``batches x global_batch_size x max_seq_len``, ``samples x max_seq_len``: packed
        rows are nearly full, and batch-size warmup makes early batches smaller); None in ``ep`` or ``dur``.

        The one place a duration becomes tokens: the loader (mask-ratio schedule, Streaming's epoch size) and the
        planner (tokens per language) both use it."""
        value, unit = parse_time(self.trainer.max_duration, "trainer.max_duration")
        if unit == "tok":
            return int(value)
        if unit == "ba":
            return int(value * self.trainer.global_batch_size * self.data.max_seq_len)
        if unit == "sp":
            return int(value * self.data.max_seq_len)
        return None


# ------------------------------------------------------------------------------------------------------- time

_TIME_RE = re.compile(r"^\s*(\d+(?:\.\d*)?(?:e\d+)?)\s*(ep|ba|sp|tok|dur)\s*$")


def parse_time(value: str, where: str = "time") -> tuple[float, str]:
    """``"3000000000tok"`` -> ``(3e9, "tok")``. Units as Composer's: ep, ba, sp, tok, dur."""
    match = _TIME_RE.match(str(value))
    if not match:
        raise ValueError(
            f"{where}: {value!r} is not a Composer time string (a number followed by ep, ba, sp, tok or dur, "
            "e.g. 100ba, 3000000000tok, 0.5dur)"
        )
    number, unit = float(match.group(1)), match.group(2)
    if unit != "dur" and not number.is_integer():
        raise ValueError(f"{where}: {value!r}: only `dur` takes a fraction")
    return number, unit


# ------------------------------------------------------------------------------------------------- validation

# `model:` fields that must be positive (checked before the ModelConfig is built, which divides by some of them)
POSITIVE_MODEL_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "norm_eps",
)


def launcher_world_size() -> int:
    """The number of ranks the launcher starts (``WORLD_SIZE``, as `composer -n N` / torchrun set it; 1 alone)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def check_data_ranges(data: DataConfig, fail: typing.Callable[[str], None]) -> None:
    """Value ranges of the ``data:`` section that its dataclass does not check itself."""
    if data.num_workers < 0:
        fail(f"data.num_workers must be >= 0, got {data.num_workers}")
    if data.shuffle_seed < 0:
        fail(f"data.shuffle_seed must be >= 0, got {data.shuffle_seed}")
    warm = data.batch_warmup
    if warm.tokens < 0:
        fail(f"data.batch_warmup.tokens must be >= 0 (0 = no warmup), got {warm.tokens}")
    if warm.start_batch_size < 0:
        fail(f"data.batch_warmup.start_batch_size must be >= 0, got {warm.start_batch_size}")
    ev = data.eval
    if not 0.0 < ev.mask_ratio < 1.0:
        fail(f"data.eval.mask_ratio must be in (0, 1), got {ev.mask_ratio}")
    if ev.seed < 0:
        fail(f"data.eval.seed must be >= 0, got {ev.seed}")
    if ev.max_seq_len is not None and ev.max_seq_len < 2:
        fail(f"data.eval.max_seq_len must be at least 2 (or null = data.max_seq_len), got {ev.max_seq_len}")
    if ev.max_samples_per_language < 1:
        fail(f"data.eval.max_samples_per_language must be >= 1, got {ev.max_samples_per_language}")
    if ev.batch_size < 1:
        fail(f"data.eval.batch_size must be >= 1, got {ev.batch_size}")


def check_microbatch_split(recipe: Recipe, world: int, where: str = "recipe") -> None:
    """Each of ``world`` ranks gets a whole number of ``trainer.device_microbatch_size`` microbatches."""
    trainer = recipe.trainer
    micro = trainer.device_microbatch_size
    per_rank = trainer.global_batch_size // world
    if micro is not None and per_rank % micro:
        raise ConfigError(
            f"{where}: trainer.global_batch_size {trainer.global_batch_size} / {world} rank(s) = {per_rank} rows "
            f"per rank is not a multiple of trainer.device_microbatch_size {micro}"
        )


def check_recipe(recipe: Recipe, where: str = "recipe") -> None:
    """Consistency across sections; raises `ConfigError` naming the keys involved."""

    def fail(message: str) -> None:
        raise ConfigError(f"{where}: {message}")

    section = recipe.model
    if section.preset is not None and section.preset not in PRESETS:
        close = difflib.get_close_matches(section.preset, list(PRESETS), n=2, cutoff=0.4)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        fail(
            f"model.preset: unknown preset {section.preset!r}{hint} Choose from {', '.join(sorted(PRESETS))}"
        )
    if section.preset is None and recipe.init_from is None:
        fail("model: give model.preset (a new model) or init_from.path (continue from a checkpoint)")
    for key in POSITIVE_MODEL_FIELDS:
        value = getattr(section, key)
        if value is not None and not value > 0:
            fail(f"model.{key} must be > 0, got {value}")
    try:
        model = recipe.model_config
    except (ValueError, ArithmeticError) as err:
        fail(f"model: {err}")

    data = recipe.data
    positions = model.max_position_embeddings
    if data.max_seq_len > positions:
        fail(
            f"data.max_seq_len {data.max_seq_len} is above model.max_position_embeddings {positions}; "
            "raise model.max_position_embeddings or shorten the sequences"
        )
    eval_len = data.eval.max_seq_len
    if eval_len is not None and eval_len > positions:
        fail(f"data.eval.max_seq_len {eval_len} is above model.max_position_embeddings {positions}")

    check_data_ranges(data, fail)

    trainer = recipe.trainer
    micro = trainer.device_microbatch_size
    if micro is not None and micro > trainer.global_batch_size:
        fail(
            f"trainer.device_microbatch_size {micro} is larger than trainer.global_batch_size "
            f"{trainer.global_batch_size}"
        )
    # the per-rank split is checked under a launcher (WORLD_SIZE set): alone, a recipe for N ranks is only viewed
    world = launcher_world_size()
    if trainer.global_batch_size % world:
        fail(
            f"trainer.global_batch_size {trainer.global_batch_size} does not split over {world} ranks "
            "(WORLD_SIZE of the launcher); use a multiple of the number of ranks"
        )
    if "WORLD_SIZE" in os.environ:
        check_microbatch_split(recipe, world, where)
    warm = data.batch_warmup
    try:
        check_batch_warmup(warm.start_batch_size, warm.tokens, trainer.global_batch_size)
    except ValueError as err:
        fail(str(err))
    if warm.tokens > 0:
        if recipe.phase != "pretrain" and recipe.phase != "smoke":
            fail(
                f"data.batch_warmup is pre-training only (the paper's recipe); this is a {recipe.phase} phase"
            )

    duration, duration_unit = parse_time(trainer.max_duration)
    if duration_unit == "dur":
        fail("trainer.max_duration cannot be given in `dur`")
    sched = recipe.scheduler
    spans = {}
    for key in ("t_warmup", "t_decay"):
        value, unit = parse_time(getattr(sched, key))
        if unit == "dur":
            value, unit = value * duration, duration_unit
        if unit != duration_unit and value > 0:
            fail(
                f"scheduler.{key} {getattr(sched, key)!r} must use the unit of trainer.max_duration "
                f"({trainer.max_duration!r}) or `dur`"
            )
        spans[key] = value
    if spans["t_warmup"] + spans["t_decay"] > duration:
        fail(
            f"scheduler.t_warmup + scheduler.t_decay ({sched.t_warmup} + {sched.t_decay}) is longer than "
            f"trainer.max_duration ({trainer.max_duration})"
        )
    if sched.name == "constant" and (spans["t_warmup"] or spans["t_decay"]):
        fail("scheduler.name is 'constant' but t_warmup / t_decay are set; use 'warmup_stable_decay'")

    if recipe.init_from is not None and not recipe.init_from.path:
        fail("init_from.path is empty")
    if trainer.autoresume and trainer.save_folder is None:
        # Composer's autoresume needs a save folder; make the failure early and clear.
        fail("trainer.autoresume needs trainer.save_folder (or set trainer.autoresume=false)")


def load_recipe(path: str | Path, overrides: typing.Iterable[str] = ()) -> Recipe:
    """Read ``path`` (following ``extends:``), apply ``key=value`` overrides, validate; no data is touched."""
    path = Path(path)
    raw = load_yaml(path, overrides)
    where = f"{path}:"
    sources = raw.get("data", {}).get("sources") if isinstance(raw.get("data"), dict) else None
    if isinstance(sources, list):
        raise ConfigError(
            f"{where} data.sources: a mapping keyed by source name is expected, not a list: write "
            "`sources: {fineweb2: {kind: multilingual}, dclm: {kind: fixed, share: 0.3, languages: [eng]}}` "
            "(a recipe extending it then overrides one source by its name)"
        )
    recipe = from_dict(Recipe, raw, where)
    check_recipe(recipe, str(path))
    recipe.data.recipe_dir = str(path.resolve().parent)
    return recipe


def recipe_to_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (what `mmbert config` prints, and what a run saves next to its checkpoints)."""
    from omegaconf import OmegaConf

    resolved = to_dict(recipe)
    # a source's name is its key under data.sources (the output loads again as a recipe)
    for source in resolved["data"]["sources"].values():
        del source["name"]
    # the model section with every field filled in (preset values + overrides), not just what the YAML set
    resolved["model"] = {"preset": recipe.model.preset, **recipe.model_config.to_dict()}
    return OmegaConf.to_yaml(OmegaConf.create(resolved), sort_keys=False)
