"""The `mmbert` command.

Each subcommand is a module of :mod:`mmbert_train.commands` (``prep``: :mod:`data_prep.cli`) exposing ``main(argv: list[str]) -> int | None``.
Modules are imported only when their subcommand runs, so ``mmbert --help`` is instant and a subcommand never
pays for another one's imports (torch, transformers, streaming).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> ("module:function", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prep": ("data_prep.cli:main", "data preparation: udhr, train-tokenizer, tokenize, stats"),
    "plan": (
        "mmbert_train.commands.plan:main",
        "print a phase's sampling plan (tokens, shares, epochs) + plot",
    ),
    "data": (
        "mmbert_train.commands.data_check:main",
        "data check DIR: validate downloaded MDS data (published layout) before a run",
    ),
    "config": ("mmbert_train.commands.config:main", "print a recipe fully resolved and validated, as YAML"),
    "train": (
        "mmbert_train.commands.train:main",
        "train a recipe in this process (same as `python train.py`)",
    ),
    "merge": ("mmbert_train.commands.merge:main", "merge checkpoints (TIES, linear, EMA over checkpoints)"),
    "export": (
        "mmbert_train.commands.export:main",
        "export a checkpoint as a Hugging Face ModernBertForMaskedLM dir",
    ),
    "fill-mask": (
        "mmbert_train.commands.export:fill_mask_main",
        "top-k predictions for <mask> with transformers",
    ),
    "eval-mlm": ("mmbert_train.commands.eval_mlm:main", "held-out MLM loss / accuracy per language"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmbert",
        description="mmbert-train: pretrain, merge and export multilingual ModernBERT encoders.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = _parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0 if argv else 2
    target, _ = COMMANDS[argv[0]]
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    result = func(argv[1:])
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
