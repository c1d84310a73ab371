"""`mmbert export` and `mmbert fill-mask`: from a training checkpoint to a Hugging Face model, and a quick look at it.

    mmbert export CHECKPOINT --out DIR [--tokenizer TOK]
    mmbert fill-mask MODEL "text with <mask>" [--top-k 5] [--json]

``CHECKPOINT`` is anything ``mmbert_train.model`` reads (a Hugging Face directory, one of our Composer ``.pt``
checkpoints, a published Composer checkpoint with FlexBert names) or a sharded FSDP checkpoint directory, as
Composer writes it with ``torch.distributed.checkpoint`` (``.metadata`` + ``__<rank>_0.distcp``); its config comes
from the ``ModelConfigRecorder`` state the trainer saves. The export is a ``ModernBertForMaskedLM`` directory
(``config.json`` with the RoPE thetas, window and special ids; ``model.safetensors``; tokenizer files), written to
a temporary sibling and renamed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from mmbert_train.checkpoints import CheckpointError, load_checkpoint
from mmbert_train.merge.writer import TOKENIZER_FILES


def _find_tokenizer(checkpoint: Path, tokenizer: str | Path | None):
    """A transformers tokenizer from ``tokenizer`` (a directory or a tokenizer.json), else from the checkpoint's
    own directory when it holds one, else None."""
    if tokenizer is None:
        folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
        if not (folder / "tokenizer.json").is_file():
            return None
        tokenizer = folder
    tokenizer = Path(tokenizer)
    if tokenizer.is_file():
        return tokenizer  # a tokenizer.json: save_pretrained wraps it with the config's special ids
    if not tokenizer.is_dir() or not any((tokenizer / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"tokenizer not found: {tokenizer} (expected a tokenizer directory or tokenizer.json)"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer))


def export(
    checkpoint: str | Path,
    out: str | Path,
    *,
    tokenizer: str | Path | None = None,
    trust_pickle: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``checkpoint`` as a Hugging Face ``ModernBertForMaskedLM`` directory ``out``; returns ``out``."""
    from mmbert_train.model import save_pretrained

    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"output {out} already exists (pass --overwrite to replace it)")
    model = load_checkpoint(checkpoint, trust_pickle=trust_pickle)
    return save_pretrained(model, out, tokenizer=_find_tokenizer(checkpoint, tokenizer))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mmbert export",
        description="Export a checkpoint (HF dir, Composer .pt, sharded FSDP dir) as a Hugging Face "
        "ModernBertForMaskedLM directory.",
    )
    parser.add_argument("checkpoint", help="checkpoint file or directory")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--tokenizer", help="tokenizer directory or tokenizer.json (default: the checkpoint's own)"
    )
    parser.add_argument("--trust-pickle", action="store_true", help="allow full-pickle Composer checkpoints")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    try:
        out = export(
            args.checkpoint,
            args.out,
            tokenizer=args.tokenizer,
            trust_pickle=args.trust_pickle,
            overwrite=args.overwrite,
        )
    except (CheckpointError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"mmbert export: error: {err}", file=sys.stderr)
        return 1
    print(f"exported to {out}")
    return 0


# ---------------------------------------------------------------------------------------------------- fill-mask


def fill_mask(model_dir: str | Path, text: str, top_k: int = 5) -> list[list[dict]]:
    """transformers' fill-mask pipeline on a Hugging Face directory: for each mask in ``text``, the ``top_k``
    predictions as ``{"score", "token", "token_str", "sequence"}`` (score = softmax of the logits)."""
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(model_dir), tokenizer=str(model_dir), device="cpu")
    mask = fill.tokenizer.mask_token
    if mask is None or mask not in text:
        raise ValueError(f"the text must contain the mask token {mask!r}, got {text!r}")
    result = fill(text, top_k=top_k)
    return [result] if result and isinstance(result[0], dict) else result


def fill_mask_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mmbert fill-mask",
        description="Top-k predictions for each <mask> in a text (transformers' fill-mask pipeline).",
    )
    parser.add_argument(
        "model", help="an exported Hugging Face directory (or any checkpoint, with --tokenizer)"
    )
    parser.add_argument("text", help='text with the mask token, e.g. "Paris is the <mask> of France."')
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--tokenizer", help="for a checkpoint that is not a Hugging Face directory")
    parser.add_argument("--trust-pickle", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the predictions as JSON")
    args = parser.parse_args(argv)
    model = Path(args.model)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if not (model / "config.json").is_file():  # a training checkpoint: export it first
                model = export(
                    model, Path(tmp) / "model", tokenizer=args.tokenizer, trust_pickle=args.trust_pickle
                )
            predictions = fill_mask(model, args.text, args.top_k)
    except (CheckpointError, ValueError, FileNotFoundError, OSError) as err:
        print(f"mmbert fill-mask: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(predictions, ensure_ascii=False))
        return 0
    for i, options in enumerate(predictions):
        if len(predictions) > 1:
            print(f"mask {i + 1}:")
        for option in options:
            print(f"{option['score']:8.4f}  {option['token_str']!r:20}  {option['sequence']}")
    return 0
