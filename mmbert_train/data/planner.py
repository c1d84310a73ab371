"""The sampling-plan tables behind ``mmbert plan``: what a phase will read, before anyone spends GPU hours.

For each language of the phase (and each fixed-share source) the planner prints the tokens available, the share
of the phase's tokens it gets, the tokens that makes in the phase and the expected number of epochs over its data,
and warns where a language repeats more than 5 epochs (the paper's guideline). It writes the same table as CSV and
a PNG plot (share vs available tokens, log-log, one series per phase) next to it::

    mmbert plan recipes/base_pretrain.yaml [key=value ...]                # a recipe + its manifest
    mmbert plan recipes/base_pretrain.yaml recipes/base_midtrain.yaml     # one plot series per phase
    mmbert plan --counts recipes/languages/language_counts.csv --column pretrain \\
        --counts-are sampled --sampled-tau 0.7 --tau 0.7 0.5 0.3          # what tau does to the paper's data
    mmbert plan --counts recipes/languages/language_counts.csv --column pretrain ext decay-all \\
        --counts-are sampled --sampled-tau 0.7 0.5 0.3 --tau 0.7 0.5 0.3  # the paper's three phases

With a recipe, shares come from `mmbert_train.data.sampling.build_phase_plan` (the same code the loader uses, with
the same data validation) and the phase's tokens from ``trainer.max_duration`` (or ``--phase-tokens``).

With a counts CSV (one column per phase, one row per language id), ``--counts-are`` says what the column holds:

* ``available``: tokens each language HAS (n_i). Shares follow the formula directly.
* ``sampled``: tokens each language GOT in a phase that sampled at ``--sampled-tau`` (the published
  ``language_counts.csv``, the authors' released per-language counts). The phase gave language i
  s_i = M * T * p_i with p_i = (n_i/N)^tau_s / sum_j (n_j/N)^tau_s, so s_i ∝ n_i^tau_s and, inverting,
  n_i = c * s_i^(1/tau_s). The shares at any new tau do not depend on c (it cancels in the normalisation);
  the epochs do, and c is not published (nor are the per-language caps). We choose c so that the inverted
  counts add up to ``--available-total`` (default: the sampled total sum_i s_i, i.e. the phase read its
  multilingual pool once on average); the epochs are then relative to that assumption.

Fixed-share ids in counts mode (``--fixed ID[=SHARE]``, default ``eng`` and ``code``) stay out of the tau split;
with sampled counts their share defaults to their fraction of the column's total.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mmbert_train.data.sampling import SERVED_BY_FIXED, PhasePlan, power_shares, temperature_proportions
from mmbert_train.data.spec import DataValidationError, check_fixed_share, check_fixed_total, check_tau

MAX_EPOCHS = 5.0  # the paper's guideline: no language repeated more than about 5 epochs
CSV_COLUMNS = ("phase", "item", "kind", "tau", "tokens_available", "share", "tokens_in_phase", "epochs")


@dataclass
class PlanRow:
    """One language of the tau split (``kind="language"``), one fixed-share source/id (``kind="fixed"``) or one
    dataset of a published source (``kind="published"``, item = its path relative to the source's folder)."""

    item: str
    kind: str
    tokens_available: float | None  # None: not known (a fixed id read from sampled counts)
    share: float  # of the phase's tokens
    tokens_in_phase: float

    @property
    def epochs(self) -> float | None:
        if not self.tokens_available:
            return None
        return self.tokens_in_phase / self.tokens_available


@dataclass
class PhaseTable:
    name: str
    tau: float | None  # None: every source is published (no tau split)
    phase_tokens: float
    rows: list[PlanRow]
    ignored: dict[str, float] = field(default_factory=dict)  # languages with data that the set leaves out
    notes: list[str] = field(default_factory=list)

    def over(self, max_epochs: float = MAX_EPOCHS) -> list[PlanRow]:
        return [r for r in self.rows if r.epochs is not None and r.epochs > max_epochs]


# ------------------------------------------------------------------------------------------ building tables


def table_from_plan(name: str, plan: PhasePlan, phase_tokens: float) -> PhaseTable:
    """The planner's table for a :class:`PhasePlan` (one row per tau language and per fixed source)."""
    rows = [
        PlanRow(lang, "language", plan.language_tokens[lang], share, share * phase_tokens)
        for lang, share in plan.language_shares.items()
    ]
    fixed_tokens = plan.fixed_tokens
    rows += [
        PlanRow(source, "fixed", fixed_tokens[source], share, share * phase_tokens)
        for source, share in plan.fixed_shares.items()
    ]
    rows.sort(key=lambda r: (-r.share, r.item))
    # published datasets after the rest, in the plan's (source, path) order
    rows += [
        PlanRow(e.folder, "published", e.tokens, e.token_share, e.token_share * phase_tokens)
        for e in plan.entries
        if e.kind == "published"
    ]
    notes = list(plan.notes)
    served = sorted({f"{s.source}/{s.folder}" for s in plan.skipped if s.reason == SERVED_BY_FIXED})
    if served:
        notes.append(f"left to the fixed sources (not in the tau split): {', '.join(served)}")
    return PhaseTable(name, plan.tau, phase_tokens, rows, dict(plan.ignored_languages), notes)


def invert_sampled_counts(
    sampled: Mapping[str, float], sampled_tau: float, available_total: float | None = None
) -> dict[str, float]:
    """Available tokens from tokens sampled at ``sampled_tau``: n_i = c * s_i^(1/tau_s).

    ``c`` makes the result add up to ``available_total`` (default: sum_i s_i). Zero stays zero. Computed in log
    space (s^(1/0.3) overflows nothing here, but 1833 languages over ten orders of magnitude lose precision).
    """
    check_tau(sampled_tau, "--sampled-tau")
    positive = {k: v for k, v in sampled.items() if v > 0}
    if not positive:
        raise DataValidationError("every sampled count is zero")
    total = float(sum(positive.values())) if available_total is None else float(available_total)
    if total <= 0:
        raise DataValidationError(f"--available-total must be positive, got {available_total}")
    shares = power_shares(sampled, 1.0 / sampled_tau)
    return {k: total * share for k, share in shares.items()}


def parse_fixed(items: Sequence[str]) -> dict[str, float | None]:
    """``["eng=0.302", "code"]`` -> ``{"eng": 0.302, "code": None}``; ``["none"]`` -> ``{}``."""
    out: dict[str, float | None] = {}
    for item in items:
        if item == "none":
            out.clear()
            continue
        name, _, share = item.partition("=")
        try:
            out[name] = float(share) if share else None
        except ValueError:
            raise DataValidationError(f"--fixed {item!r}: expected ID or ID=SHARE, e.g. eng=0.302") from None
    return out


def table_from_counts(
    counts: Mapping[str, int],
    *,
    name: str,
    tau: float,
    counts_are: str,
    sampled_tau: float | None = None,
    languages: Sequence[str] | None = None,
    fixed: Mapping[str, float | None] | None = None,
    phase_tokens: float | None = None,
    available_total: float | None = None,
    where: str = "counts",
) -> PhaseTable:
    """The planner's table for per-language counts (see the module docstring for ``counts_are``)."""
    tau = check_tau(tau, "--tau")
    if counts_are not in ("available", "sampled"):
        raise ValueError(f"counts_are must be 'available' or 'sampled', got {counts_are!r}")
    if counts_are == "sampled" and sampled_tau is None:
        raise DataValidationError(
            "--counts-are sampled needs --sampled-tau (the tau the counts were sampled at)"
        )
    fixed = {"eng": None, "code": None} if fixed is None else dict(fixed)
    column_total = float(sum(counts.values()))
    if phase_tokens is None:
        if counts_are == "available":
            raise DataValidationError(
                "--counts-are available needs --phase-tokens (the phase's token budget)"
            )
        phase_tokens = column_total

    language_set = list(languages) if languages is not None else [k for k, v in counts.items() if v > 0]
    fixed_shares: dict[str, float] = {}
    for ident, share in fixed.items():
        if share is None:
            if counts_are == "available":
                raise DataValidationError(
                    f"--fixed {ident}: give its share ({ident}=0.3) when the counts are available tokens"
                )
            if not counts.get(ident):
                raise DataValidationError(f"--fixed {ident}: no tokens for {ident!r} in {where}")
            share = counts[ident] / column_total
        fixed_shares[ident] = check_fixed_share(share, f"--fixed {ident}")
    fixed_total = check_fixed_total(fixed_shares, "--fixed")

    tau_languages = [x for x in language_set if x not in fixed_shares]
    missing = [x for x in tau_languages if not counts.get(x)]
    if missing:
        shown = ", ".join(repr(x) for x in missing[:20]) + (
            f", ... ({len(missing)} in all)" if len(missing) > 20 else ""
        )
        raise DataValidationError(f"no data for language {shown} in {where}")
    if not tau_languages:
        raise DataValidationError(
            "every language of the set is a fixed id; nothing is left for the tau split"
        )
    in_split = {x: counts[x] for x in tau_languages}
    if counts_are == "sampled":
        available = invert_sampled_counts(in_split, sampled_tau, available_total)
    else:
        available = {k: float(v) for k, v in in_split.items()}
    multilingual = 1.0 - fixed_total
    p = temperature_proportions(available, tau)
    rows = [
        PlanRow(x, "language", available[x], multilingual * p[x], multilingual * p[x] * phase_tokens)
        for x in tau_languages
    ]
    for ident, share in fixed_shares.items():
        have = float(counts.get(ident, 0)) if counts_are == "available" else None
        rows.append(PlanRow(ident, "fixed", have, share, share * phase_tokens))
    rows.sort(key=lambda r: (-r.share, r.item))
    in_set = set(language_set) | set(fixed_shares)
    ignored = {k: float(v) for k, v in sorted(counts.items()) if v > 0 and k not in in_set}
    notes = []
    if counts_are == "sampled":
        below = sum(v < 1.0 for v in available.values())
        if below:
            notes.append(
                f"the inversion leaves {below} language(s) with less than one available token: these counts were "
                f"not drawn by tau-sampling at {sampled_tau:g} alone (caps, minimums); their epochs mean little"
            )
        notes.append(
            f"available tokens inferred from counts sampled at tau {sampled_tau:g}: n_i = c * s_i^(1/{sampled_tau:g}), "
            f"c set so they add up to {sum(available.values()):.4g}; epochs are relative to that"
        )
    return PhaseTable(name, tau, phase_tokens, rows, ignored, notes)


# -------------------------------------------------------------------------------------------------- output


def human(n: float | None) -> str:
    """Tokens for people: 2.30T, 600.0B, 4.7M, 812."""
    if n is None:
        return "-"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}" if n / scale < 100 else f"{n / scale:.0f}{unit}"
    return f"{n:.0f}"


def format_table(table: PhaseTable, *, max_epochs: float = MAX_EPOCHS, top: int | None = None) -> str:
    n_lang = sum(r.kind == "language" for r in table.rows)
    lang_share = math.fsum(r.share for r in table.rows if r.kind == "language")
    n_pub = sum(r.kind == "published" for r in table.rows)
    pub_share = math.fsum(r.share for r in table.rows if r.kind == "published")
    n_fixed = len(table.rows) - n_lang - n_pub
    tau = "-" if table.tau is None else f"{table.tau:g}"
    head = f"phase {table.name}: tau {tau}, {human(table.phase_tokens)} tokens; "
    parts = []
    if n_lang:
        parts.append(f"{n_lang} languages by tau ({lang_share:.1%})")
    if n_fixed:
        parts.append(f"{n_fixed} fixed ({1 - lang_share - pub_share:.1%})")
    if n_pub:
        parts.append(f"{n_pub} published datasets ({pub_share:.1%})")
    lines = [
        head + ", ".join(parts),
        f"  {'item':<14} {'kind':<8} {'available':>10} {'share':>9} {'in phase':>10} {'epochs':>8}",
    ]
    rows = table.rows if not top else table.rows[:top]
    for r in rows:
        epochs = "-" if r.epochs is None else f"{r.epochs:.2f}"
        flag = f"  ! over {max_epochs:g} epochs" if r.epochs is not None and r.epochs > max_epochs else ""
        lines.append(
            f"  {r.item:<14} {r.kind:<8} {human(r.tokens_available):>10} {r.share:>9.3%} "
            f"{human(r.tokens_in_phase):>10} {epochs:>8}{flag}"
        )
    if top and len(table.rows) > top:
        lines.append(f"  ... {len(table.rows) - top} more rows in the CSV")
    return "\n".join(lines)
