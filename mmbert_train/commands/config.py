"""``mmbert config RECIPE [key=value ...]``: print a recipe fully resolved (extends + overrides) and validated.

Validated as `mmbert train` validates it before any work: the schema and cross-field checks of `load_recipe`, plus
the files it names (`mmbert_train.train.preflight`: language sets, vocabulary vs the data's tokenizer)."""

from __future__ import annotations

import argparse
import sys

from mmbert_train.config import load_recipe, recipe_to_yaml
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
