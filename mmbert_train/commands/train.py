"""`mmbert train RECIPE [key=value ...]` and the repo-root ``train.py``: load, validate, train one phase.

Under the Composer launcher every rank runs this (``composer -n 8 train.py recipes/base_decay.yaml``); in one
process ``python train.py ...`` or ``mmbert train ...`` does the same.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mmbert_train.config import ConfigError, load_recipe


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmbert train",
        description="Train one phase of a recipe with Composer (single process, or every rank under `composer -n N`).",
    )
    parser.add_argument("recipe", help="recipe YAML, e.g. recipes/base_pretrain.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_duration=100ba")
    parser.add_argument("--log-level", default="INFO", help="Python log level of mmbert_train (default INFO)")
    return parser


def project_errors() -> tuple[type[BaseException], ...]:
    """Every error type of the project a run can end with: each says what is wrong and what to change, so it is
    printed as one message (no traceback)."""
    from mmbert_train.checkpoints import CheckpointError
    from mmbert_train.data.languages import LanguageSetError
    from mmbert_train.data.manifest import ManifestError
    from mmbert_train.data.mds import MDSError
    from mmbert_train.data.sampling import DataValidationError
    from mmbert_train.evaluation import EvalError
    from mmbert_train.locks import LockHeldError
    from mmbert_train.train.callbacks import NonFiniteLossError
    from mmbert_train.train.resume import ResumeError
    from mmbert_train.train.trainer import TrainSetupError

    return (
        ConfigError,
        TrainSetupError,
        ResumeError,
        LockHeldError,
        NonFiniteLossError,
        DataValidationError,
        LanguageSetError,
        ManifestError,
        MDSError,
        CheckpointError,
        EvalError,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mmbert_train").setLevel(args.log_level.upper())
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from mmbert_train.train.trainer import train

    errors = project_errors()
    try:
        train(recipe)
    except errors as err:
        print(f"error: {args.recipe}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
