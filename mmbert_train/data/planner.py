"""``mmbert plan``: what a phase will read, before anyone spends GPU hours.

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
  ``language_counts.csv``; RECIPE.md, "Temperature sampling"). The phase gave language i
  s_i = M * T * p_i with p_i = (n_i/N)^tau_s / sum_j (n_j/N)^tau_s, so s_i ∝ n_i^tau_s and, inverting,
  n_i = c * s_i^(1/tau_s). The shares at any new tau do not depend on c (it cancels in the normalisation);
  the epochs do, and c is not published (nor are the per-language caps). We choose c so that the inverted
  counts add up to ``--available-total`` (default: the sampled total sum_i s_i, i.e. the phase read its
  multilingual pool once on average); the epochs are then relative to that assumption.

Fixed-share ids in counts mode (``--fixed ID[=SHARE]``, default ``eng`` and ``code``) stay out of the tau split;
with sampled counts their share defaults to their fraction of the column's total.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmbert_train.data.languages import LanguageSetError, read_counts_csv, read_language_file
from mmbert_train.data.sampling import (
    SERVED_BY_FIXED,
    DataValidationError,
    PhasePlan,
    build_phase_plan,
    check_tau,
    temperature_proportions,
)

MAX_EPOCHS = 5.0  # the paper's guideline: no language repeated more than about 5 epochs
CSV_COLUMNS = ("phase", "item", "kind", "tau", "tokens_available", "share", "tokens_in_phase", "epochs")


@dataclass
class PlanRow:
    """One language of the tau split (``kind="language"``) or one fixed-share source/id (``kind="fixed"``)."""

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
    tau: float
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
    notes = []
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
    logs = {k: math.log(v) / sampled_tau for k, v in positive.items()}
    top = max(logs.values())
    weights = {k: math.exp(v - top) for k, v in logs.items()}
    norm = math.fsum(weights.values())
    return {k: total * weights[k] / norm if k in weights else 0.0 for k in sampled}


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
        if not 0.0 < share < 1.0:
            raise DataValidationError(f"--fixed {ident}: the share must be in (0, 1), got {share}")
        fixed_shares[ident] = share
    fixed_total = math.fsum(fixed_shares.values())
    if fixed_total >= 1.0:
        raise DataValidationError(
            f"the fixed shares add up to {fixed_total:g} ({', '.join(fixed_shares)}); need < 1"
        )

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
    n_fixed = len(table.rows) - n_lang
    lines = [
        f"phase {table.name}: tau {table.tau:g}, {human(table.phase_tokens)} tokens; "
        f"{n_lang} languages by tau ({lang_share:.1%}), {n_fixed} fixed ({1 - lang_share:.1%})",
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


def _num(x: float | None) -> str:
    if x is None:
        return ""
    if isinstance(x, int):
        return str(x)
    return repr(float(x))


def write_csv(tables: Sequence[PhaseTable], path: str | os.PathLike) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for t in tables:
            for r in t.rows:
                writer.writerow(
                    [
                        t.name,
                        r.item,
                        r.kind,
                        repr(t.tau),
                        _num(r.tokens_available),
                        _num(r.share),
                        _num(r.tokens_in_phase),
                        _num(r.epochs),
                    ]
                )
    os.replace(tmp, path)
    return path


def write_plot(tables: Sequence[PhaseTable], path: str | os.PathLike, title: str | None = None) -> Path:
    """Share vs available tokens, log-log, one series per phase (languages of the tau split only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    for t in tables:
        points = [
            (r.tokens_available, r.share) for r in t.rows if r.kind == "language" and r.tokens_available
        ]
        if not points:
            continue
        x, y = zip(*points)
        ax.scatter(x, y, s=10, alpha=0.7, label=f"{t.name} (tau {t.tau:g}, {len(points)} languages)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens available")
    ax.set_ylabel("share of the phase's tokens")
    ax.set_title(title or "Temperature sampling: share vs available tokens")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------------- recipes


def _load_data_section(path: Path, overrides: Sequence[str]):
    """(data section, trainer section or None) of a recipe, via `mmbert_train.config.load_recipe` when present."""
    try:
        from mmbert_train.config import load_recipe
    except ModuleNotFoundError as err:  # the recipe module is not there: validate the data section alone
        if err.name != "mmbert_train.config":
            raise
        from mmbert_train.data.spec import DataConfig
        from mmbert_train.schema import from_dict, load_yaml

        raw = load_yaml(path, overrides)
        return from_dict(DataConfig, raw.get("data"), f"{path}: data"), None
    recipe = load_recipe(path, overrides)
    return recipe.data, recipe.trainer


def phase_tokens_of(trainer, data_cfg, path: Path) -> tuple[float, str]:
    """The phase's token budget from ``trainer.max_duration`` (and how it was derived)."""
    if trainer is None:
        raise DataValidationError(f"{path}: no trainer section read; pass --phase-tokens N")
    from mmbert_train.config import parse_time

    value, unit = parse_time(trainer.max_duration, "trainer.max_duration")
    if unit == "tok":
        return value, "trainer.max_duration"
    if unit == "ba":
        return (
            value * trainer.global_batch_size * data_cfg.max_seq_len,
            "max_duration x batch x seq len (upper bound)",
        )
    if unit == "sp":
        return value * data_cfg.max_seq_len, "max_duration x seq len (upper bound)"
    raise DataValidationError(
        f"{path}: trainer.max_duration {trainer.max_duration!r} is not in tokens; pass --phase-tokens N"
    )


# ---------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmbert plan",
        description="Print a phase's sampling plan (tokens available, share, tokens in the phase, epochs) and "
        "write it as CSV + PNG. Give recipes (with key=value overrides), or a counts CSV.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  mmbert plan recipes/base_pretrain.yaml data.tau=0.5\n"
        "  mmbert plan --counts recipes/languages/language_counts.csv --column pretrain "
        "--counts-are sampled --sampled-tau 0.7 --tau 0.7 0.5 0.3",
    )
    p.add_argument(
        "recipes", nargs="*", metavar="RECIPE|key=value", help="recipe YAMLs and overrides for all"
    )
    p.add_argument("--counts", metavar="FILE", help="per-language counts CSV (header: language,<column>,...)")
    p.add_argument("--column", nargs="+", help="counts column(s) to read, e.g. pretrain ext decay-all")
    p.add_argument("--counts-are", choices=("available", "sampled"), help="what the column holds")
    p.add_argument("--sampled-tau", type=float, nargs="+", help="the tau the sampled counts were drawn at")
    p.add_argument(
        "--tau",
        type=float,
        nargs="+",
        help="tau(s) to plan with (counts mode: several taus for one column, or one per column)",
    )
    p.add_argument("--languages", metavar="FILE", help="language set (counts mode; default: ids with counts)")
    p.add_argument(
        "--fixed",
        action="append",
        metavar="ID[=SHARE]",
        help="fixed-share id kept out of the tau split (counts mode; default eng, code; 'none')",
    )
    p.add_argument("--available-total", type=float, help="sampled counts: total available tokens to assume")
    p.add_argument("--phase-tokens", type=float, help="the phase's token budget (overrides the recipe's)")
    p.add_argument("--max-epochs", type=float, default=MAX_EPOCHS, help="warn above this (default 5)")
    p.add_argument("--no-check-files", action="store_true", help="recipes: trust the manifest, skip the disk")
    p.add_argument("--top", type=int, default=0, help="print only the first N rows per phase (CSV has all)")
    p.add_argument("--out", metavar="STEM", help="write STEM.csv and STEM.png (default: plan_<name>)")
    p.add_argument("--title", help="plot title")
    return p


def _counts_jobs(
    columns: Sequence[str], taus: Sequence[float], sampled_taus: Sequence[float] | None
) -> list[tuple[str, float, float | None]]:
    """(column, tau, sampled tau) per table: one column with several taus (what tau does to one phase), or
    several columns (phases), each with its own tau and sampled tau (or one value for all)."""
    sampled_taus = list(sampled_taus or [None])
    if len(columns) == 1:
        if len(sampled_taus) != 1:
            raise DataValidationError("--sampled-tau: give one value for one --column")
        return [(columns[0], tau, sampled_taus[0]) for tau in taus]
    for flag, values in (("--tau", taus), ("--sampled-tau", sampled_taus)):
        if len(values) not in (1, len(columns)):
            raise DataValidationError(
                f"{flag}: give one value, or one per --column ({len(columns)}), got {len(values)}"
            )
    taus = list(taus) * len(columns) if len(taus) == 1 else list(taus)
    sampled_taus = sampled_taus * len(columns) if len(sampled_taus) == 1 else sampled_taus
    return list(zip(columns, taus, sampled_taus))


def build_tables(args: argparse.Namespace) -> list[PhaseTable]:
    recipes = [r for r in args.recipes if "=" not in r]
    overrides = [r for r in args.recipes if "=" in r]
    if args.counts:
        if recipes or overrides:
            raise DataValidationError("give either recipes or --counts, not both")
        for flag in ("column", "counts_are", "tau"):
            if getattr(args, flag) is None:
                raise DataValidationError(f"--counts needs --{flag.replace('_', '-')}")
        languages = read_language_file(args.languages) if args.languages else None
        fixed = parse_fixed(args.fixed) if args.fixed else None
        tables = []
        for column, tau, sampled_tau in _counts_jobs(args.column, args.tau, args.sampled_tau):
            tables.append(
                table_from_counts(
                    read_counts_csv(args.counts, column),
                    name=column,
                    tau=tau,
                    counts_are=args.counts_are,
                    sampled_tau=sampled_tau,
                    languages=languages,
                    fixed=fixed,
                    phase_tokens=args.phase_tokens,
                    available_total=args.available_total,
                    where=f"{args.counts} column {column!r}",
                )
            )
        return tables
    if not recipes:
        raise DataValidationError("give a recipe (mmbert plan recipes/base_pretrain.yaml) or --counts FILE")
    tables = []
    for recipe in recipes:
        path = Path(recipe)
        data_cfg, trainer = _load_data_section(path, overrides)
        plan = build_phase_plan(data_cfg, recipe_dir=path.parent, check_files=not args.no_check_files)
        if args.phase_tokens is not None:
            tokens, how = args.phase_tokens, "--phase-tokens"
        else:
            tokens, how = phase_tokens_of(trainer, data_cfg, path)
        table = table_from_plan(path.stem, plan, tokens)
        table.notes.insert(0, f"phase tokens from {how}")
        tables.append(table)
    return tables


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        tables = build_tables(args)
    except (DataValidationError, LanguageSetError, ValueError) as err:
        print(f"mmbert plan: error: {err}", file=sys.stderr)
        return 2
    for t in tables:
        print(format_table(t, max_epochs=args.max_epochs, top=args.top or None))
        for note in t.notes:
            print(f"  note: {note}")
        if t.ignored:
            shown = ", ".join(f"{k} ({human(v)})" for k, v in list(t.ignored.items())[:15])
            more = f", ... ({len(t.ignored)} in all)" if len(t.ignored) > 15 else ""
            print(
                f"  note: {len(t.ignored)} language(s) with data are not in the phase's set, ignored: {shown}{more}"
            )
        over = t.over(args.max_epochs)
        if over:
            shown = ", ".join(f"{r.item} {r.epochs:.4g}" for r in sorted(over, key=lambda r: -r.epochs)[:15])
            print(
                f"warning: phase {t.name}: {len(over)} item(s) repeat more than {args.max_epochs:g} epochs: {shown}",
                file=sys.stderr,
            )
        print()
    stem = args.out or "plan_" + "-".join(dict.fromkeys(t.name for t in tables))
    csv_path = write_csv(tables, f"{stem}.csv")
    png_path = write_plot(tables, f"{stem}.png", args.title)
    print(f"wrote {csv_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
