"""The `data:` section of a training recipe, as dataclasses.

These are pure schema (no I/O): `mmbert_train.schema.from_dict` validates a recipe's ``data:`` mapping into
:class:`DataConfig` without touching any data. Checking the recipe against the data on disk (languages present,
source folders, shares) is a separate step, done by `mmbert_train.data.sampling` before training or planning.

A phase reads ``root/manifest.json`` (written by ``mmbert prep tokenize`` or ``mmbert prep stats``) and the MDS
folders ``root/<source>/<language>/`` it lists. Token shares of the phase:

* each **fixed** source gets ``share`` of the phase's tokens (e.g. DCLM English 0.302, StarCoder code 0.051);
* the **multilingual** sources share the rest, ``1 - sum(fixed shares)``, split across the phase's language set
  by temperature sampling over available tokens (``p_i ∝ n_i^tau``); ids served by a fixed source that names its
  ``languages`` (``eng``, ``code``) are left out of that split.

`mmbert_train.data.sampling.build_phase_plan` turns this section plus the manifest into streams.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal


class DataValidationError(ValueError):
    """A recipe's data section is wrong or does not fit the data on disk; the message names the item."""


def check_tau(tau: float, where: str = "tau") -> float:
    """Return ``tau`` as a float if it is a number in (0, 1], else raise :class:`DataValidationError` naming
    ``where``. The one home of the rule: the recipe schema (``data.tau``), the sampling formula and the planner's
    ``--tau`` all call it."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 < tau <= 1.0 or math.isnan(tau):
        raise DataValidationError(f"{where} must be in (0, 1], got {tau!r}")
    return float(tau)


def check_fixed_share(share: float | None, who: str) -> float:
    """A fixed share of the phase's tokens must be in (0, 1) (the one check: recipe sources, the planner's
    ``--fixed``)."""
    if share is None or isinstance(share, bool) or not 0.0 < share < 1.0:
        raise DataValidationError(f"{who} needs a share in (0, 1), got {share}")
    return float(share)


def check_fixed_total(shares: Mapping[str, float], where: str) -> float:
    """The fixed shares together must leave a share (> 0) for the multilingual split; returns their sum."""
    total = math.fsum(shares.values())
    if total >= 1.0:
        parts = " + ".join(f"{name} {share:g}" for name, share in shares.items())
        raise DataValidationError(
            f"{where}: the fixed shares add up to {total:g} ({parts}); they must leave a share (< 1) for the "
            "multilingual sources"
        )
    return total


def _named_sources(sources: Mapping[str, SourceConfig | None]) -> dict[str, SourceConfig]:
    """``data.sources`` without the removed (null) entries, each source's ``name`` set from its key."""
    if not isinstance(sources, Mapping):
        raise ValueError(
            "data.sources must be a mapping of source name -> {kind, share, languages} "
            f"(e.g. {{fineweb2: {{kind: multilingual}}}}), got {type(sources).__name__}"
        )
    named: dict[str, SourceConfig] = {}
    for key, source in sources.items():
        if source is None:  # removed by a recipe that extends the one listing it
            continue
        if source.name and source.name != key:
            raise ValueError(f"data.sources.{key}: its name is {source.name!r}; the key is the name")
        source.name = key
        named[key] = source
    if not named:
        raise ValueError("data.sources: no source left (every entry is null)")
    return named


@dataclass
class SourceConfig:
    """One source folder under the data root (``root/<name>/<language>/``).

    In a recipe a source is an entry of the ``data.sources`` mapping; its key is the ``name`` (filled in by
    :class:`DataConfig`), so the YAML entry holds only ``kind``, ``share`` and ``languages``."""

    name: str = ""  # the folder name under the data root = the key under data.sources
    kind: Literal["multilingual", "fixed", "published"] = "multilingual"
    # fixed sources: share of the phase's TOKENS (not samples), in (0, 1); published: in (0, 1] or None (the rest)
    share: float | None = None
    # language folders of this source to read (``rus`` selects a ``rus_Cyrl`` folder); None = all folders the
    # manifest lists for it. A fixed source that names its languages (["eng"] for DCLM, ["code"] for StarCoder)
    # serves them alone: they stay out of the tau split. A fixed source without a list (MegaWika) reads all its
    # folders of the phase's languages, adds its share on top of the tau split and takes no language out of it.
    languages: list[str] | None = None
    # published sources (a downloaded tree read as published, `mmbert_train.data.published`): the folder (e.g. the
    # `train/` of jhu-clsp/mmBERT-decay-data) and globs over its dataset paths (`textbooks/*`); None = every dataset
    path: str | None = None
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # the one check of a source's share; from a recipe the error is prefixed with data.sources.<name>
        who = f"source {self.name!r}: " if self.name else ""
        if self.kind == "published":
            if not self.path:
                raise ValueError(f"{who}a published source needs a path (the downloaded folder)")
            if self.share is not None and not 0.0 < self.share <= 1.0:
                raise ValueError(f"{who}a published share must be in (0, 1], got {self.share}")
            if self.languages is not None:
                raise ValueError(
                    f"{who}a published source takes no languages (its mixture is the data); select datasets "
                    "with include / exclude"
                )
            return
        if self.path is not None or self.include is not None or self.exclude:
            raise ValueError(f"{who}path / include / exclude are for kind: published")
        if self.kind == "fixed":
            check_fixed_share(self.share, f"{who}a fixed source")
        if self.kind == "multilingual" and self.share is not None:
            raise ValueError(
                f"{who}a multilingual source takes no share (it splits what the fixed sources leave, by tau)"
            )


@dataclass
class BatchWarmupConfig:
    """Linear batch-size warmup (pre-training only in the paper: 48 -> 4608 sequences over 60B tokens).

    ``batch(t) = start + (full - start) * min(1, t / tokens)`` sequences after ``t`` training tokens, rounded
    down to a multiple of the number of ranks; ``tokens = 0`` disables it.
    """

    start_batch_size: int = 0
    tokens: int = 0


@dataclass
class EvalDataConfig:
    """Held-out evaluation: read from ``root/<source>/<language>/heldout/`` at a FIXED mask ratio and seed so
    that numbers are comparable across phases whose training mask ratios differ."""

    # languages to report one by one: a list of ids, a language-list file, or None for every phase language
    languages: list[str] | str | None = None
    # named groups reported as aggregates, e.g. {pretrain: languages/phase1_pretrain.txt, ...}
    groups: dict[str, list[str] | str] = field(default_factory=dict)
    mask_ratio: float = 0.15
    seed: int = 1234
    max_seq_len: int | None = None  # None = the phase's max_seq_len
    max_samples_per_language: int = 64
    batch_size: int = 16


@dataclass(kw_only=True)
class DataConfig:
    """Everything the phase dataloader needs to know."""

    root: str  # local MDS root holding manifest.json
    # the phase's language set (a list of ids or a file with one id per line) and the sampling temperature in
    # (0, 1]: needed by multilingual sources, unused when every source is published
    languages: list[str] | str | None = None
    tau: float | None = None
    # source name -> source, in reading order. A mapping so that a recipe extending another overrides one
    # entry key by key (``megawika: {share: 0.05}``); ``name: null`` removes a source the parent lists.
    sources: dict[str, SourceConfig | None]
    max_seq_len: int  # packed row length (the phase's sequence length)
    mask_ratio: float  # MLM mask ratio at the start of the phase
    mask_ratio_end: float | None = None  # linear schedule to this ratio at phase end; None = constant
    remote: str | None = None  # optional remote root (s3://, gs://, ...); `root` is then the local cache
    # where published sources get their normalized index.json files and token counts (never inside a download);
    # None = $MMBERT_CACHE, else ~/.cache/mmbert_train
    cache: str | None = None
    batch_warmup: BatchWarmupConfig = field(default_factory=BatchWarmupConfig)
    shuffle: bool = True
    shuffle_seed: int = 21
    num_workers: int = 2
    eval: EvalDataConfig = field(default_factory=EvalDataConfig)

    # The folder of the recipe file this section was read from (set by `mmbert_train.config.load_recipe`; not a
    # recipe key). Relative language files are looked up there first, then in the working directory.
    recipe_dir = None

    def __post_init__(self) -> None:
        if self.tau is not None:
            check_tau(self.tau, "data.tau")
        self.sources = _named_sources(self.sources)
        for name in ("mask_ratio", "mask_ratio_end"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"data.{name} must be in (0, 1), got {value}")
        if self.max_seq_len < 2:
            raise ValueError(f"data.max_seq_len must be at least 2, got {self.max_seq_len}")
