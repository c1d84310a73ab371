"""``mmbert prep <udhr | train-tokenizer | tokenize | stats>``: each subcommand's module parses its own flags."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "udhr": ("data_prep.udhr", "write the UDHR sample corpus (~450 languages) as RAW/udhr/<language>/"),
    "train-tokenizer": ("data_prep.tokenizer", "train a small byte-fallback BPE with Gemma 2 special ids"),
    "tokenize": ("data_prep.tokenize", "raw text or a Hugging Face dataset -> MDS shards + manifest.json"),
    "stats": ("data_prep.stats", "rebuild manifest.json from existing MDS folders (also pre-tokenized data)"),
}


def _usage() -> str:
    lines = ["usage: mmbert prep COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<16} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "`mmbert prep COMMAND --help` lists a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] not in SUBCOMMANDS:
        print(f"mmbert prep: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from data_prep.errors import USER_ERRORS

    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    try:
        return int(module.main(argv[1:]) or 0)
    except USER_ERRORS as exc:
        print(f"mmbert prep {argv[0]}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmbert prep {argv[0]}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
