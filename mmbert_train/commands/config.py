"""``mmbert config RECIPE [key=value ...]``: print a recipe fully resolved (extends + overrides) and validated.

Validated as `mmbert train` validates it before any work: the schema and cross-field checks of `load_recipe`, plus
the files it names (`mmbert_train.train.preflight`: language sets, vocabulary vs the data's tokenizer)."""

from __future__ import annotations

import argparse
import sys

from mmbert_train.config import Recipe, load_recipe, recipe_to_yaml
from mmbert_train.schema import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mmbert config",
        description="Print a recipe fully resolved (extends + overrides) and validated, as YAML.",
    )
    parser.add_argument("recipe", help="recipe YAML, e.g. recipes/base_pretrain.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_duration=10ba")
    args = parser.parse_args(argv)
    from mmbert_train.train.preflight import check_recipe_files

    try:
        recipe = load_recipe(args.recipe, args.overrides)
        check_recipe_files(recipe, args.recipe)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(recipe_to_yaml(recipe))
    from mmbert_train.data.published import unused_settings

    for key in unused_settings(recipe.data):
        print(f"note: data.{key} is set but unused: every source is published", file=sys.stderr)
    warning = microbatch_memory_warning(recipe, args.recipe)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def microbatch_memory_warning(recipe: Recipe, where: str = "recipe", world_size: int = 8) -> str | None:
    """A warning when the memory planner estimates that ``trainer.device_microbatch_size`` does not fit
    ``trainer.gpu_memory`` (on ``world_size`` GPUs, the paper's 8; CPU recipes are not checked)."""
    if recipe.trainer.device == "cpu":
        return None
    from mmbert_train.memory import format_bytes, plan_recipe

    plan = plan_recipe(recipe, world_size=world_size)
    if plan.fits:
        return None
    return (
        f"{where}: trainer.device_microbatch_size {plan.microbatch} x {plan.seq_len} tokens needs about "
        f"{format_bytes(plan.estimate.peak)} per GPU (memory planner, {world_size} GPUs, dominant term: "
        f"{plan.estimate.dominant}), more than trainer.gpu_memory {recipe.trainer.gpu_memory} leaves after "
        f"{plan.headroom:.0%} headroom ({format_bytes(plan.budget)}); the largest microbatch that fits is "
        f"{plan.max_microbatch} (details: mmbert plan --memory {where})"
    )


if __name__ == "__main__":
    sys.exit(main())
