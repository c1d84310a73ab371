"""``mmbert merge``: a merge recipe (``recipes/{small,base}_merge.yaml``) or the same settings as flags.

mmbert merge recipes/base_merge.yaml [key=value ...]
mmbert merge --method ties --base A --models B C D --density 0.5 --out DIR
mmbert merge --method ema --models 'runs/small-decay-all/ep*-ba*-rank0.pt' --last 4 --beta 0.5 --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from mmbert_train.checkpoints import CheckpointError
from mmbert_train.merge.config import MergeConfig, run_config
from mmbert_train.merge.engine import MergeError
from mmbert_train.merge.methods import DEFAULT_CHUNK_NUMEL

# MergeConfig's fields, each also a flag (--trust-pickle for trust_pickle); their defaults live in MergeConfig only
_FIELDS = {f.name: f for f in dataclasses.fields(MergeConfig)}
_REQUIRED = [name for name, f in _FIELDS.items() if f.default is dataclasses.MISSING]


def _default(name: str) -> str:
    return f" (default {_FIELDS[name].default})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmbert merge",
        description="Merge checkpoints (TIES, linear, exponentially weighted average) into a Hugging Face "
        "ModernBertForMaskedLM directory. Give a recipe (plus key=value overrides) or the flags.",
    )
    parser.add_argument("recipe", nargs="*", help="a merge recipe YAML, then key=value overrides")
    parser.add_argument("--method", choices=("ties", "linear", "ema"))
    parser.add_argument("--base", help="TIES: the checkpoint the task vectors are taken against")
    parser.add_argument("--models", nargs="+", help="checkpoints to merge (ema: oldest first; globs allowed)")
    parser.add_argument("--out", help="output directory (written to a temporary name, then renamed)")
    parser.add_argument(
        "--density", type=float, help="TIES: share of each task vector kept" + _default("density")
    )
    parser.add_argument("--weights", type=float, nargs="+", help="one weight per model (default: equal)")
    parser.add_argument(
        "--scale", type=float, help="TIES: lambda, the merged delta's factor" + _default("scale")
    )
    parser.add_argument(
        "--beta", type=float, help="ema: weight ratio between consecutive checkpoints" + _default("beta")
    )
    parser.add_argument("--last", type=int, help="use only the newest N of --models")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="output dtype")
    parser.add_argument("--tokenizer", help="tokenizer directory or tokenizer.json to ship with the output")
    parser.add_argument(
        "--trust-pickle", action="store_true", default=None, help="allow full-pickle Composer checkpoints"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--chunk-numel", type=int, default=DEFAULT_CHUNK_NUMEL, help="entries per chunk (memory vs. overhead)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.recipe:
            config = _config_from_recipe(parser, args)
        else:
            missing = [_flag(name) for name in _REQUIRED if getattr(args, name) is None]
            if missing:
                parser.error(f"give a recipe, or at least {', '.join(missing)}")
            config = MergeConfig(**_given(args))
        out = run_config(
            config, overwrite=args.overwrite, progress=not args.no_progress, chunk_numel=args.chunk_numel
        )
    except (MergeError, CheckpointError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"mmbert merge: error: {err}", file=sys.stderr)
        return 1
    print(f"merged model written to {out}")
    return 0


def _config_from_recipe(parser: argparse.ArgumentParser, args: argparse.Namespace) -> MergeConfig:
    from mmbert_train.schema import from_dict, load_yaml

    recipe, *overrides = args.recipe
    bad = [item for item in overrides if "=" not in item]
    if bad:
        parser.error(f"after the recipe only key=value overrides are accepted, got {bad}")
    given = [_flag(name) for name in _given(args)]
    if given:
        parser.error(f"with a recipe, set {', '.join(given)} as key=value overrides instead")
    return from_dict(MergeConfig, load_yaml(recipe, overrides), f"{recipe}:")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _given(args: argparse.Namespace) -> dict:
    """The MergeConfig fields set on the command line (flags left out keep MergeConfig's defaults)."""
    return {name: getattr(args, name) for name in _FIELDS if getattr(args, name) is not None}
