"""Temperature sampling over a phase's language set, and the phase's Streaming streams.

Public API (stable; the loader and the planner build on it)::

    plan = build_phase_plan(data_cfg, manifest=None, recipe_dir=None)   # validates recipe against the data
    streams = plan.streams()                     # list[streaming.Stream] with sample `proportion`s
    dataset = StreamingDataset(streams=streams, epoch_size=plan.samples_for_tokens(phase_tokens), ...)

How a phase's TOKENS are shared (mmBERT, arXiv 2509.06888, "temperature sampling"):

1. Each **fixed** source ``s`` (e.g. DCLM English, StarCoder code) gets its ``share`` f_s of the phase's tokens.
2. The **multilingual** sources share ``M = 1 - sum_s f_s``. Their language folders are grouped by language
   (``rus_Cyrl`` counts toward ``rus``); ids served by a fixed source (``eng``, ``code``) are left out, so nothing
   is counted twice. (A fixed source that names its ``languages`` serves them alone; one that reads all its
   folders, like MegaWika, reads those of the phase's languages, adds its share on top and takes no language
   out of the split.) With n_i the
   available tokens of language i (summed over multilingual sources) and
   N = sum_j n_j over the phase's language set, language i gets ``M * p_i`` where

       p_i = (n_i / N)^tau / sum_j (n_j / N)^tau            (:func:`temperature_proportions`)

   tau = 1 is the natural distribution; smaller tau is flatter (tau -> 0 is uniform).
3. A language (or fixed source) read from several folders splits its share among them by their tokens.
4. A **published** source (a downloaded tree read as published, :mod:`mmbert_train.data.published`) takes its
   ``share`` P_s off the top (M becomes ``1 - sum f_s - sum P_s``), or without a share what the other sources
   leave; its leaf datasets split it by their tokens, ``P_s * n_d / sum_e n_e``: the published mixture, as
   published. Their entries come after the others, in dataset-path order.

Streaming's ``Stream(proportion=...)`` is a share of SAMPLES, not tokens. Stream s with token share t_s and
k_s = tokens_s / samples_s tokens per sample (from the manifest) gets the sample proportion

       q_s = (t_s / k_s) / sum_j (t_j / k_j)

so that the expected tokens delivered, q_s * k_s / sum_j q_j * k_j, equal t_s again.

The entries (and so the streams) come in a fixed order: fixed sources in the order of ``data.sources``, then the
languages in the set's order, each over its sources in that order and its folders by name. The stream list, and with it
Streaming's sample order for a seed, depends only on the recipe and the manifest.

Before any training, :func:`build_phase_plan` checks the recipe against the data and raises
:class:`DataValidationError` naming the item: a language of the set with no data under any source, a source (or a
source's language folder) that does not exist, fixed shares that leave nothing (sum >= 1) or a multilingual share
with no multilingual source. (A share outside (0, 1) and tau outside (0, 1] are refused earlier, when the recipe is
read: :mod:`mmbert_train.data.spec`.) Languages with data but absent from the set are ignored and
listed in :attr:`PhasePlan.skipped` (the planner reports them).
"""

from __future__ import annotations

import math
import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mmbert_train.atomic import atomic_output_file
from mmbert_train.data.languages import LanguageSetError, normalize_language, resolve_language_set
from mmbert_train.data.manifest import MANIFEST_NAME, load_manifest
from mmbert_train.data.spec import DataConfig, DataValidationError, check_fixed_total, check_tau

if TYPE_CHECKING:
    from streaming import Stream

# ------------------------------------------------------------------------------------------- the formula


def temperature_proportions(token_counts: Mapping[str, int], tau: float) -> dict[str, float]:
    """Temperature-sampling shares of languages with ``token_counts`` available tokens.

        p_i = (n_i / N)^tau / sum_j (n_j / N)^tau,   N = sum_j n_j

    Languages with zero tokens get 0. tau = 1 gives the natural distribution n_i / N; as tau -> 0 every
    language with data tends to the same share. Computed in log space so that 1833 languages spanning ten
    orders of magnitude keep full double precision.
    """
    tau = check_tau(tau)
    for name, n in token_counts.items():
        if isinstance(n, bool) or not isinstance(n, (int, float)) or n < 0 or math.isnan(n):
            raise DataValidationError(f"token count of {name!r} must be a non-negative number, got {n!r}")
    if not any(n > 0 for n in token_counts.values()):
        raise DataValidationError("temperature_proportions: every token count is zero")
    return power_shares(token_counts, tau)  # (n_i / N)^tau is proportional to n_i^tau


def power_shares(counts: Mapping[str, float], exponent: float) -> dict[str, float]:
    """``x_i^e / sum_j x_j^e`` over the positive ``counts`` (zero stays zero), computed in log space (max
    subtracted before exponentiating) so that values spanning many orders of magnitude keep full double
    precision. The sampling formula (``e = tau``) and the planner's inversion of sampled counts (``e = 1/tau``)
    both use it."""
    logs = {k: exponent * math.log(x) for k, x in counts.items() if x > 0}
    top = max(logs.values())
    weights = {k: math.exp(v - top) for k, v in logs.items()}
    norm = math.fsum(weights.values())
    return {k: weights[k] / norm if k in weights else 0.0 for k in counts}


def token_to_sample_proportions(
    token_shares: Sequence[float], tokens_per_sample: Sequence[float]
) -> list[float]:
    """Streaming sample proportions that deliver ``token_shares``: q_s = (t_s / k_s) / sum_j (t_j / k_j)."""
    if len(token_shares) != len(tokens_per_sample):
        raise ValueError("token_shares and tokens_per_sample differ in length")
    for k in tokens_per_sample:
        if not k > 0:
            raise ValueError(f"tokens per sample must be positive, got {k}")
    raw = [t / k for t, k in zip(token_shares, tokens_per_sample)]
    norm = math.fsum(raw)
    if norm <= 0:
        raise ValueError("every token share is zero")
    return [r / norm for r in raw]


# ------------------------------------------------------------------------------------------- manifest


def fetch_manifest(remote: str, local_root: str | os.PathLike, timeout: float = 60.0) -> Path:
    """Copy ``<remote>/manifest.json`` into ``<local_root>/`` unless it is there (any Streaming remote: s3://,
    gs://, a path, ...). Downloaded to a temporary name unique to the process, then renamed
    (:func:`mmbert_train.atomic.atomic_output_file`): ranks fetching at once do not collide."""
    local = Path(local_root) / MANIFEST_NAME
    if local.is_file():
        return local
    from streaming.base.storage import CloudDownloader

    source = posixpath.join(remote, MANIFEST_NAME)
    try:
        with atomic_output_file(local) as tmp:
            CloudDownloader.direct_download(source, str(tmp), timeout)
    except Exception as err:  # each cloud client raises its own error types
        raise DataValidationError(f"data.remote: cannot fetch {source}: {err}") from None
    return local


# ------------------------------------------------------------------------------------------- the plan

# why a folder of the manifest is not read (SkippedFolder.reason)
NOT_IN_SET = "not in the phase's language set"
SERVED_BY_FIXED = "served by a fixed-share source"
NOT_SELECTED = "not in the source's `languages`"
NO_TOKENS = "no training tokens"


@dataclass(frozen=True)
class StreamPlan:
    """One MDS folder ``<root>/<source>/<folder>/`` read in the phase."""

    source: str
    folder: str  # folder name under the source, as on disk (``rus_Cyrl``)
    language: str  # the language it counts toward (``rus``)
    kind: Literal["multilingual", "fixed", "published"]
    tokens: int  # available training tokens (manifest; published: stats.json or counted)
    samples: int  # training samples (manifest; published: index.json)
    token_share: float  # share of the phase's tokens
    proportion: float  # Streaming's `proportion`: share of the phase's samples
    # published: the normalized folder Streaming reads (folder = the dataset's path in the download)
    local: str | None = None

    @property
    def tokens_per_sample(self) -> float:
        return self.tokens / self.samples


@dataclass(frozen=True)
class SkippedFolder:
    """Data in the manifest that the phase does not read, and why (the planner reports these)."""

    source: str
    folder: str
    language: str
    tokens: int
    reason: str


@dataclass
class PhasePlan:
    """What a phase reads: one :class:`StreamPlan` per MDS folder, with token shares and sample proportions."""

    root: str
    remote: str | None
    tau: float | None  # None when every source is published
    languages: list[str]  # the phase's language set (normalized ids)
    fixed_shares: dict[str, float]  # fixed source -> share of the phase's tokens
    fixed_languages: list[str]  # ids served by fixed sources (kept out of the tau split)
    language_tokens: dict[str, int]  # tau-split language -> available tokens (all multilingual sources)
    language_shares: dict[str, float]  # tau-split language -> share of the phase's tokens
    entries: list[StreamPlan]
    skipped: list[SkippedFolder] = field(default_factory=list)
    published_shares: dict[str, float] = field(default_factory=dict)  # published source -> share of the phase
    notes: list[str] = field(default_factory=list)  # e.g. where published token counts come from

    @property
    def multilingual_share(self) -> float:
        return 1.0 - math.fsum(self.fixed_shares.values()) - math.fsum(self.published_shares.values())

    @property
    def fixed_tokens(self) -> dict[str, int]:
        """Fixed source -> available tokens over the folders it reads."""
        out: dict[str, int] = {}
        for e in self.entries:
            if e.kind == "fixed":
                out[e.source] = out.get(e.source, 0) + e.tokens
        return out

    @property
    def ignored_languages(self) -> dict[str, int]:
        """Languages with data that the phase's language set leaves out -> their tokens."""
        out: dict[str, int] = {}
        for s in self.skipped:
            if s.reason == NOT_IN_SET:
                out[s.language] = out.get(s.language, 0) + s.tokens
        return dict(sorted(out.items()))

    @property
    def mean_tokens_per_sample(self) -> float:
        """Expected tokens per sample drawn from the mixture: sum_s q_s * k_s."""
        return math.fsum(e.proportion * e.tokens_per_sample for e in self.entries)

    def samples_for_tokens(self, tokens: int) -> int:
        """Samples to draw (Streaming's ``epoch_size``) for about ``tokens`` tokens of raw (unpacked) data."""
        return max(1, math.ceil(tokens / self.mean_tokens_per_sample))

    def local_path(self, entry: StreamPlan) -> str:
        if entry.local is not None:
            return entry.local
        return os.path.join(self.root, entry.source, entry.folder)

    def streams(
        self, *, remote: str | None = None, local: str | None = None, **stream_kwargs: Any
    ) -> list[Stream]:
        """One ``streaming.Stream`` per entry, with its sample ``proportion``.

        ``local`` / ``remote`` replace the plan's root / remote (e.g. a per-node cache); ``stream_kwargs`` go to
        every ``Stream`` (``download_retry``, ``keep_zip``, ...).
        """
        from streaming import Stream

        local_root = self.root if local is None else local
        remote_root = self.remote if remote is None else remote
        return [
            Stream(local=e.local, remote=None, proportion=e.proportion, **stream_kwargs)
            if e.local is not None  # published: the normalized folder, never the download itself
            else Stream(
                local=os.path.join(local_root, e.source, e.folder),
                remote=posixpath.join(remote_root, e.source, e.folder) if remote_root else None,
                proportion=e.proportion,
                **stream_kwargs,
            )
            for e in self.entries
        ]


def _folder_counts(manifest: Mapping, source: str, folder: str) -> tuple[int, int]:
    counts = manifest["sources"][source][folder]
    return int(counts.get("tokens", 0)), int(counts.get("samples", 0))


def _list_items(items: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(x) for x in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def build_phase_plan(
    data_cfg: DataConfig,
    manifest: Mapping | str | os.PathLike | None = None,
    *,
    recipe_dir: str | os.PathLike | None = None,
    check_files: bool = True,
) -> PhasePlan:
    """Validate ``data_cfg`` against the data and return the phase's :class:`PhasePlan`.

    Published sources (``kind: published``) are planned by :func:`mmbert_train.data.published.plan_source`: one
    entry per leaf dataset, the source's share split by its datasets' tokens. Their shares come off the top and
    the other sources share the rest as the module docstring says. A published source without a share takes
    what the others leave (the whole phase when it is alone); no multilingual source is needed then.
    """
    published = [s for s in data_cfg.sources.values() if s.kind == "published"]
    own = [s for s in data_cfg.sources.values() if s.kind != "published"]
    if not published:
        return _plan_own_sources(data_cfg, own, manifest, recipe_dir=recipe_dir, check_files=check_files)
    return _with_published(data_cfg, published, own, manifest, recipe_dir=recipe_dir, check_files=check_files)


def _with_published(data_cfg, published, own, manifest, *, recipe_dir, check_files) -> PhasePlan:
    from mmbert_train.data.published import PublishedDataError, plan_source

    open_ended = [s.name for s in published if s.share is None]
    if len(open_ended) > 1:
        raise DataValidationError(
            f"data.sources: published sources {', '.join(map(repr, open_ended))} have no share; at most one "
            "may take the rest of the phase, give the others a share"
        )
    given = math.fsum(s.share for s in published if s.share is not None)
    has_multi = any(s.kind == "multilingual" for s in own)
    if open_ended and has_multi:
        raise DataValidationError(
            f"data.sources: published source {open_ended[0]!r} needs a share next to the multilingual "
            "source(s), which take the rest by tau"
        )
    total_given = given + math.fsum(s.share or 0.0 for s in own)
    if not open_ended and not has_multi and abs(total_given - 1.0) > 1e-9:
        raise DataValidationError(
            f"data.sources: the shares add up to {total_given:g}; with no multilingual source they must add "
            "up to 1 (or leave one published source without a share: it takes the rest)"
        )
    own_plan = None
    if own:
        own_plan = _plan_own_sources(
            data_cfg,
            own,
            manifest,
            recipe_dir=recipe_dir,
            check_files=check_files,
            reserved=given,
            rest_taken=bool(open_ended),
        )
    own_total = math.fsum(e.token_share for e in own_plan.entries) if own_plan else 0.0
    shares = {s.name: s.share for s in published}
    if open_ended:
        rest = 1.0 - given - own_total
        if rest <= 1e-12:
            raise DataValidationError(
                f"data.sources: nothing is left for published source {open_ended[0]!r} (the other shares add "
                f"up to {given + own_total:g})"
            )
        shares[open_ended[0]] = rest
    keys = ("source", "folder", "language", "kind", "tokens", "samples", "token_share", "local")
    raw: list[dict] = [{k: getattr(e, k) for k in keys} for e in (own_plan.entries if own_plan else [])]
    notes: list[str] = []
    for source in published:
        where = f"data.sources[{source.name}]"
        try:
            streams = plan_source(
                source.path, include=source.include, exclude=source.exclude, cache=data_cfg.cache, where=where
            )
        except PublishedDataError as err:
            raise DataValidationError(str(err)) from None
        total = sum(x.tokens for x in streams)
        for x in streams:
            raw.append(
                dict(
                    source=source.name,
                    folder=x.path,
                    language="",
                    kind="published",
                    tokens=x.tokens,
                    samples=x.samples,
                    token_share=shares[source.name] * x.tokens / total,
                    local=x.local,
                )
            )
        origins = sorted({x.tokens_from for x in streams})
        notes.append(
            f"published source {source.name!r} ({source.path}): {len(streams)} datasets, tokens from "
            + " and ".join(f"{h} ({sum(x.tokens_from == h for x in streams)})" for h in origins)
        )
    proportions = token_to_sample_proportions(
        [r["token_share"] for r in raw], [r["tokens"] / r["samples"] for r in raw]
    )
    entries = [StreamPlan(**r, proportion=q) for r, q in zip(raw, proportions)]
    published_shares = {s: float(v) for s, v in shares.items()}
    if own_plan is None:
        return PhasePlan(
            root=str(data_cfg.root),
            remote=None,
            tau=None,
            languages=[],
            fixed_shares={},
            fixed_languages=[],
            language_tokens={},
            language_shares={},
            entries=entries,
            published_shares=published_shares,
            notes=notes,
        )
    own_plan.entries = entries
    own_plan.published_shares = published_shares
    own_plan.notes = notes
    return own_plan


def _plan_own_sources(
    data_cfg: DataConfig,
    sources: Sequence,
    manifest: Mapping | str | os.PathLike | None = None,
    *,
    recipe_dir: str | os.PathLike | None = None,
    check_files: bool = True,
    reserved: float = 0.0,
    rest_taken: bool = False,
) -> PhasePlan:
    """The plan of the multilingual and fixed ``sources`` over ``data.root``'s manifest (see build_phase_plan).

    ``reserved``: the share of the phase that published sources take; ``rest_taken``: a published source takes
    what is left, so no multilingual source is needed.

    ``manifest``: a manifest dict, a path to it, or None to read ``<data_cfg.root>/manifest.json`` (fetched from
    ``<data_cfg.remote>/manifest.json`` first when the recipe has a remote and the local copy is missing).
    ``recipe_dir``: where to look first for a language file named by a relative path (default: the folder of the
    recipe ``data_cfg`` was read from, :attr:`DataConfig.recipe_dir`; then the working directory).
    ``check_files``: also check that every folder read holds an MDS ``index.json`` (skipped when the recipe has a
    ``remote``: the local root is then only a cache).
    """
    has_multi = any(s.kind != "fixed" for s in sources)
    tau = data_cfg.tau  # checked by DataConfig, as are the shares
    if has_multi and tau is None:
        raise DataValidationError("data.tau: missing; the multilingual sources sample languages by tau")
    if manifest is None:
        manifest = data_cfg.root
        if data_cfg.remote:
            fetch_manifest(data_cfg.remote, data_cfg.root)
    if not isinstance(manifest, Mapping):
        manifest = load_manifest(manifest)  # ManifestError is a DataValidationError
    available: Mapping[str, Mapping] = manifest.get("sources", {})
    needs_languages = has_multi or any(s.languages is None for s in sources)
    if data_cfg.languages is None and needs_languages:
        raise DataValidationError(
            "data.languages: missing; the multilingual sources (and fixed ones without `languages`) read the "
            "phase's language set"
        )
    try:
        languages = (
            resolve_language_set(
                data_cfg.languages,
                recipe_dir=recipe_dir if recipe_dir is not None else data_cfg.recipe_dir,
                where="data.languages",
            )
            if data_cfg.languages is not None
            else []
        )
    except LanguageSetError as err:
        raise DataValidationError(str(err)) from None
    language_set = set(languages)

    # ---- sources: exist, shares add up
    for name in (s.name for s in sources):
        if name not in available:
            raise DataValidationError(
                f"data.sources: source {name!r} does not exist in the manifest (sources there: "
                f"{_list_items(sorted(available))})"
            )
    fixed = [s for s in sources if s.kind == "fixed"]
    multi = [s for s in sources if s.kind != "fixed"]
    fixed_shares = {s.name: float(s.share) for s in fixed}
    # published sources take `reserved` off the top: the fixed shares and it must leave some for the rest
    check_fixed_total({**fixed_shares, **({"published": reserved} if reserved else {})}, "data.sources")
    fixed_total = math.fsum(fixed_shares.values())
    if not multi and not rest_taken:
        raise DataValidationError(
            f"data.sources: no multilingual source to take the remaining share {1 - fixed_total:g} "
            f"(fixed: {', '.join(fixed_shares) or 'none'}); add a source with kind: multilingual"
        )

    def selected_folders(source) -> tuple[list[str], list[str]]:
        """(folders read, folders left out) of a source, honouring its `languages` filter."""
        folders = sorted(available[source.name])
        if source.languages is None:
            return folders, []
        try:
            wanted = {
                normalize_language(x, f"data.sources[{source.name}].languages") for x in source.languages
            }
        except LanguageSetError as err:
            raise DataValidationError(str(err)) from None
        have = {normalize_language(f, f"manifest sources.{source.name}") for f in folders}
        missing = sorted(wanted - have)
        if missing:
            raise DataValidationError(
                f"data.sources: source {source.name!r} has no folder for language {_list_items(missing)} "
                f"(its folders: {_list_items(folders)})"
            )
        keep = [f for f in folders if normalize_language(f) in wanted]
        return keep, [f for f in folders if f not in keep]

    def select_and_report(source) -> list[str]:
        """The source's folders to read; the others are reported as skipped (not selected)."""
        keep, left = selected_folders(source)
        for folder in left:
            tokens = _folder_counts(manifest, source.name, folder)[0]
            skipped.append(
                SkippedFolder(source.name, folder, normalize_language(folder), tokens, NOT_SELECTED)
            )
        return keep

    entries_raw: list[dict] = []  # filled with tokens/samples, shares later
    skipped: list[SkippedFolder] = []

    def entry(kind: str, source, folder: str, language: str, tokens: int, samples: int) -> dict:
        """A stream's fields but its shares (added once every source is counted)."""
        return dict(
            source=source.name, folder=folder, language=language, kind=kind, tokens=tokens, samples=samples
        )

    # ---- fixed sources. One that names its `languages` (DCLM: [eng], StarCoder: [code]) serves them alone: those
    # ids stay out of the tau split. One that reads every folder it has (MegaWika) adds its share on top of the
    # tau split and takes no language out of it.
    fixed_languages: set[str] = set()
    for source in fixed:
        keep = select_and_report(source)
        rows = []
        for folder in keep:
            tokens, samples = _folder_counts(manifest, source.name, folder)
            language = normalize_language(folder, f"manifest sources.{source.name}")
            if source.languages is not None:
                fixed_languages.add(language)
            elif language not in language_set:  # reading all its folders = all the phase's languages it has
                skipped.append(SkippedFolder(source.name, folder, language, tokens, NOT_IN_SET))
                continue
            if tokens > 0 and samples > 0:
                rows.append(entry("fixed", source, folder, language, tokens, samples))
            else:
                skipped.append(SkippedFolder(source.name, folder, language, tokens, NO_TOKENS))
        if not rows:
            raise DataValidationError(
                f"data.sources: fixed source {source.name!r} has no training tokens"
                + ("" if source.languages is not None else " in the phase's languages")
            )
        total = sum(r["tokens"] for r in rows)
        for r in rows:
            r["token_share"] = fixed_shares[source.name] * r["tokens"] / total
        entries_raw += rows

    # ---- multilingual sources: group folders by language
    tau_languages = [x for x in languages if x not in fixed_languages] if multi else []
    if multi and not tau_languages:
        raise DataValidationError(
            f"data.languages: every language of the set is served by a fixed source "
            f"({_list_items(sorted(fixed_languages))}); nothing is left for the multilingual sources"
        )
    tau_set = set(tau_languages)
    by_language: dict[str, list[dict]] = {x: [] for x in tau_languages}
    for source in multi:
        keep = select_and_report(source)
        for folder in keep:
            tokens, samples = _folder_counts(manifest, source.name, folder)
            language = normalize_language(folder, f"manifest sources.{source.name}")
            if language not in language_set:
                skipped.append(SkippedFolder(source.name, folder, language, tokens, NOT_IN_SET))
            elif language not in tau_set:
                skipped.append(SkippedFolder(source.name, folder, language, tokens, SERVED_BY_FIXED))
            elif tokens <= 0 or samples <= 0:
                skipped.append(SkippedFolder(source.name, folder, language, tokens, NO_TOKENS))
            else:
                by_language[language].append(entry("multilingual", source, folder, language, tokens, samples))
    empty = [x for x in tau_languages if not by_language[x]]
    if empty:
        raise DataValidationError(
            f"data.languages: no data for language {_list_items(empty)} under the multilingual source(s) "
            f"{', '.join(repr(s.name) for s in multi)}; remove it from the set or prepare its data"
        )
    language_tokens = {x: sum(r["tokens"] for r in by_language[x]) for x in tau_languages}
    multilingual_share = 1.0 - fixed_total - reserved
    p = temperature_proportions(language_tokens, tau) if multi else {}
    language_shares = {x: multilingual_share * p[x] for x in tau_languages}
    for x in tau_languages:
        for r in by_language[x]:
            r["token_share"] = language_shares[x] * r["tokens"] / language_tokens[x]
        entries_raw += by_language[x]

    # ---- files on disk
    if check_files and not data_cfg.remote:
        for source in sources:
            if not os.path.isdir(os.path.join(data_cfg.root, source.name)):
                raise DataValidationError(
                    f"data.sources: source folder {os.path.join(data_cfg.root, source.name)} does not exist"
                )
        for r in entries_raw:
            index = os.path.join(data_cfg.root, r["source"], r["folder"], "index.json")
            if not os.path.isfile(index):
                raise DataValidationError(
                    f"data: folder {os.path.dirname(index)} (source {r['source']!r}, language {r['folder']!r}) "
                    "is in the manifest but holds no MDS index.json"
                )

    proportions = token_to_sample_proportions(
        [r["token_share"] for r in entries_raw], [r["tokens"] / r["samples"] for r in entries_raw]
    )
    entries = [StreamPlan(**r, proportion=q) for r, q in zip(entries_raw, proportions)]
    return PhasePlan(
        root=str(data_cfg.root),
        remote=data_cfg.remote,
        tau=tau,
        languages=languages,
        fixed_shares=fixed_shares,
        fixed_languages=sorted(fixed_languages),
        language_tokens=language_tokens,
        language_shares=language_shares,
        entries=entries,
        skipped=skipped,
    )
