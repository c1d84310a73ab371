"""``mmbert plan``: print each phase's sampling plan and write it as CSV + PNG.

    mmbert plan recipes/base_pretrain.yaml [key=value ...]                # a recipe + its manifest
    mmbert plan recipes/base_pretrain.yaml recipes/base_midtrain.yaml     # one plot series per phase
    mmbert plan --counts recipes/languages/language_counts.csv --column pretrain \\
        --counts-are sampled --sampled-tau 0.7 --tau 0.7 0.5 0.3          # what tau does to the paper's data
    mmbert plan --memory recipes/base_pretrain.yaml [--gpu-memory 80GB] [--world-size 8]   # memory per GPU

The tables and their meaning: :mod:`mmbert_train.data.planner`; the memory estimate: :mod:`mmbert_train.memory`.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mmbert_train.atomic import atomic_output_file
from mmbert_train.config import Recipe, load_recipe, parse_time
from mmbert_train.data.languages import LanguageSetError, read_counts_csv, read_language_file
from mmbert_train.data.planner import (
    CSV_COLUMNS,
    MAX_EPOCHS,
    PhaseTable,
    format_table,
    human,
    parse_fixed,
    table_from_counts,
    table_from_plan,
)
from mmbert_train.data.sampling import DataValidationError, build_phase_plan
from mmbert_train.schema import ConfigError


def _num(x: float | None) -> str:
    if x is None:
        return ""
    if isinstance(x, int):
        return str(x)
    return repr(float(x))


def write_csv(tables: Sequence[PhaseTable], path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_output_file(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for t in tables:
            for r in t.rows:
                writer.writerow(
                    [
                        t.name,
                        r.item,
                        r.kind,
                        "" if t.tau is None else repr(t.tau),
                        _num(r.tokens_available),
                        _num(r.share),
                        _num(r.tokens_in_phase),
                        _num(r.epochs),
                    ]
                )
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
        tau = "-" if t.tau is None else f"{t.tau:g}"
        ax.scatter(x, y, s=10, alpha=0.7, label=f"{t.name} (tau {tau}, {len(points)} languages)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens available")
    ax.set_ylabel("share of the phase's tokens")
    ax.set_title(title or "Temperature sampling: share vs available tokens")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------- recipes


def phase_tokens_of(recipe: Recipe, path: Path) -> tuple[float, str]:
    """The phase's token budget (:meth:`Recipe.phase_tokens`) and how it was derived, for the table's note."""
    tokens = recipe.phase_tokens()
    if tokens is None:
        raise DataValidationError(
            f"{path}: trainer.max_duration {recipe.trainer.max_duration!r} is not in tokens, batches or samples; "
            "pass --phase-tokens N"
        )
    unit = parse_time(recipe.trainer.max_duration)[1]
    how = {
        "tok": "trainer.max_duration",
        "ba": "max_duration x batch x seq len (upper bound)",
        "sp": "max_duration x seq len (upper bound)",
    }[unit]
    return tokens, how


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
    memory = p.add_argument_group("memory (--memory: peak memory per GPU instead of the sampling plan)")
    memory.add_argument("--memory", action="store_true", help="estimate each recipe's peak memory per rank")
    memory.add_argument(
        "--gpu-memory", help="memory of one GPU, e.g. 80GB or 80GiB (default: trainer.gpu_memory)"
    )
    memory.add_argument("--world-size", type=int, default=8, help="GPUs (default 8, as the paper)")
    memory.add_argument("--headroom", type=float, default=None, help="share of the memory kept free (0.1)")
    memory.add_argument("--head", choices=("chunked", "plain"), help="MLM loss (default: the model's own)")
    memory.add_argument("--backend", choices=("flash", "flex", "sdpa", "eager"), help="attention (flash)")
    return p


def memory_main(args: argparse.Namespace) -> int:
    """``--memory``: the planner's estimate of every recipe at its microbatch, and the largest that fits."""
    from mmbert_train.memory import DEFAULT_HEADROOM, plan_recipe

    recipes = [r for r in args.recipes if "=" not in r]
    overrides = [r for r in args.recipes if "=" in r]
    if not recipes:
        raise DataValidationError("--memory: give a recipe (mmbert plan --memory recipes/base_pretrain.yaml)")
    if args.world_size < 1:
        raise DataValidationError(f"--world-size must be >= 1, got {args.world_size}")
    headroom = DEFAULT_HEADROOM if args.headroom is None else args.headroom
    for path in recipes:
        recipe = load_recipe(path, overrides)
        plan = plan_recipe(
            recipe,
            memory=args.gpu_memory,
            world_size=args.world_size,
            headroom=headroom,
            head=args.head,
            backend=args.backend,
        )
        print(f"{path}: " + plan.format())
        if not plan.fits:
            print(
                f"warning: {path}: trainer.device_microbatch_size {plan.microbatch} does not fit; the largest "
                f"microbatch that fits is {plan.max_microbatch}",
                file=sys.stderr,
            )
    return 0


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
        recipe_obj = load_recipe(path, overrides)
        plan = build_phase_plan(recipe_obj.data, check_files=not args.no_check_files)
        if args.phase_tokens is not None:
            tokens, how = args.phase_tokens, "--phase-tokens"
        else:
            tokens, how = phase_tokens_of(recipe_obj, path)
        table = table_from_plan(path.stem, plan, tokens)
        table.notes.insert(0, f"phase tokens from {how}")
        tables.append(table)
    return tables


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.memory:
            return memory_main(args)
        tables = build_tables(args)
    except (ConfigError, DataValidationError, LanguageSetError, ValueError) as err:
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
