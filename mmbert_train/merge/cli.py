"""`mmbert merge`: a merge recipe (``recipes/{small,base}_merge.yaml``) or the same settings as flags.

mmbert merge recipes/base_merge.yaml [key=value ...]
mmbert merge --method ties --base A --models B C D --density 0.5 --out DIR
mmbert merge --method ema --models 'runs/small-decay-all/ep*-ba*-rank0.pt' --last 4 --beta 0.5 --out DIR
"""

from __future__ import annotations

import argparse
import glob
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from .engine import MergeError, merge_checkpoints
from .methods import DEFAULT_CHUNK_NUMEL
from .sources import CheckpointError, checkpoint_order

_GLOB_CHARS = set("*?[")


@dataclass
class MergeConfig:
    """A merge recipe. Paths are relative to the directory ``mmbert merge`` runs in.

    ``models`` are the checkpoints to merge; for ``ema`` (and ``linear``) entries may be glob patterns, whose
    matches are ordered by Composer's batch count (``ep0-ba4000-rank0.pt``), oldest first, and ``last`` keeps the
    newest ``last`` of them. ``weights`` go with ``models`` (TIES normalises them per entry by the models that
    agree; ``linear`` by their sum); ``ema`` sets them to ``beta^(N-k)``.
    """

    method: Literal["ties", "linear", "ema"]
    models: list[str]
    out: str
    base: str | None = None
    density: float = 0.5
    weights: list[float] | None = None
    scale: float = 1.0
    beta: float = 0.5
    last: int | None = None
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    tokenizer: str | None = None
    trust_pickle: bool = False

    def __post_init__(self) -> None:
        if self.last is not None and self.last < 1:
            raise ValueError(f"last must be >= 1, got {self.last}")
        if self.method == "ties" and self.base is None:
            raise ValueError("method 'ties' needs `base` (the checkpoint the task vectors are taken against)")


def expand_models(patterns: list[str], last: int | None) -> list[str]:
    """Glob patterns expanded (matches in training order), then the newest ``last`` entries."""
    paths: list[str] = []
    for pattern in patterns:
        if _GLOB_CHARS & set(pattern):
            matches = sorted((Path(p) for p in glob.glob(pattern)), key=checkpoint_order)
            if not matches:
                raise MergeError(f"no checkpoint matches {pattern!r}")
            paths.extend(str(p) for p in matches)
        else:
            paths.append(pattern)
    if last is not None:
        if last > len(paths):
            raise MergeError(f"last: {last} asks for more checkpoints than the {len(paths)} given: {paths}")
        paths = paths[-last:]
    return paths


def run_config(
    config: MergeConfig, *, overwrite=False, progress=True, chunk_numel=DEFAULT_CHUNK_NUMEL
) -> Path:
    models = expand_models(config.models, config.last)
    weights = config.weights
    if weights is not None and config.last is not None and len(weights) != len(models):
        raise MergeError(f"{len(weights)} weights for the {len(models)} models left after last={config.last}")
    return merge_checkpoints(
        method=config.method,
        models=models,
        out=config.out,
        base=config.base,
        density=config.density,
        weights=weights,
        scale=config.scale,
        beta=config.beta,
        dtype=config.dtype,
        tokenizer=config.tokenizer,
        trust_pickle=config.trust_pickle,
        overwrite=overwrite,
        chunk_numel=chunk_numel,
        progress=progress,
        record=asdict(config),
    )


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
    parser.add_argument("--density", type=float, default=0.5, help="TIES: share of each task vector kept")
    parser.add_argument("--weights", type=float, nargs="+", help="one weight per model (default: equal)")
    parser.add_argument("--scale", type=float, default=1.0, help="TIES: lambda, the merged delta's factor")
    parser.add_argument(
        "--beta", type=float, default=0.5, help="ema: weight ratio between consecutive checkpoints"
    )
    parser.add_argument("--last", type=int, help="use only the newest N of --models")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="output dtype")
    parser.add_argument("--tokenizer", help="tokenizer directory or tokenizer.json to ship with the output")
    parser.add_argument("--trust-pickle", action="store_true", help="allow full-pickle Composer checkpoints")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--chunk-numel", type=int, default=DEFAULT_CHUNK_NUMEL, help="entries per chunk (memory vs. overhead)"
    )
    return parser


_DIRECT_FLAGS = ("method", "base", "models", "out", "weights", "last", "dtype", "tokenizer")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.recipe:
            config = _config_from_recipe(parser, args)
        else:
            missing = [f"--{name}" for name in ("method", "models", "out") if getattr(args, name) is None]
            if missing:
                parser.error(f"give a recipe, or at least {', '.join(missing)}")
            config = MergeConfig(
                method=args.method,
                models=args.models,
                out=args.out,
                base=args.base,
                density=args.density,
                weights=args.weights,
                scale=args.scale,
                beta=args.beta,
                last=args.last,
                dtype=args.dtype,
                tokenizer=args.tokenizer,
                trust_pickle=args.trust_pickle,
            )
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
    given = [f"--{name}" for name in _DIRECT_FLAGS if getattr(args, name) is not None]
    if given:
        parser.error(f"with a recipe, set {', '.join(given)} as key=value overrides instead")
    return from_dict(MergeConfig, load_yaml(recipe, overrides), f"{recipe}:")
