"""`mmbert export` and `mmbert fill-mask`: from a training checkpoint to a Hugging Face model, and a quick look at it.

    mmbert export CHECKPOINT --out DIR [--tokenizer TOK]
    mmbert fill-mask MODEL "text with <mask>" [--top-k 5] [--json] [--tokenizer TOK]

``CHECKPOINT`` / ``MODEL`` is a checkpoint of any format ``mmbert_train.checkpoints`` reads: a Hugging Face
directory (safetensors, sharded safetensors, ``pytorch_model.bin``; either transformers config generation), a
``.safetensors`` file, one of our Composer ``.pt`` checkpoints, a published Composer checkpoint with FlexBert
names, or a sharded FSDP checkpoint directory (``torch.distributed.checkpoint``). The export is a
``ModernBertForMaskedLM`` directory that transformers 4.48+ and 5.x load with the same logits (``config.json`` in
both config generations; ``model.safetensors``; the tokenizer, checked against the model config), written to a
temporary sibling and renamed. An output that resolves to the input is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from mmbert_train.checkpoints import (
    CheckpointError,
    check_output_path,
    find_tokenizer,
    load_pretrained,
    save_pretrained,
)


def export(
    checkpoint: str | Path,
    out: str | Path,
    *,
    tokenizer: str | Path | None = None,
    trust_pickle: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``checkpoint`` as a Hugging Face ``ModernBertForMaskedLM`` directory ``out``; returns ``out``.

    ``tokenizer``: a tokenizer directory or ``tokenizer.json``; default: the checkpoint's own directory's, if any.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.exists():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    check_output_path(out, {"checkpoint": checkpoint})
    if out.exists() and not overwrite:
        raise FileExistsError(f"output {out} already exists (pass --overwrite to replace it)")
    model = load_pretrained(checkpoint, trust_pickle=trust_pickle)
    return save_pretrained(model, out, tokenizer=find_tokenizer(checkpoint, tokenizer), overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mmbert export",
        description="Export a checkpoint (HF dir, .safetensors, Composer .pt, sharded FSDP dir) as a Hugging Face "
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


def fill_mask(
    model_path: str | Path,
    text: str,
    top_k: int = 5,
    *,
    tokenizer: str | Path | None = None,
    trust_pickle: bool = False,
) -> list[list[dict]]:
    """transformers' fill-mask pipeline on a checkpoint of any format: for each mask in ``text``, the ``top_k``
    predictions as ``{"score", "token", "token_str", "sequence"}`` (score = softmax of the logits).

    The model goes through our reader and ``save_pretrained`` into a temporary directory, so the pipeline sees
    the thetas and layer types the checkpoint says, whichever config generation it was written in.
    """
    from transformers import pipeline

    model_path = Path(model_path)
    source = find_tokenizer(model_path, tokenizer)
    if source is None:
        raise CheckpointError(
            f"{model_path}: no tokenizer next to this checkpoint; pass --tokenizer DIR (the tokenizer directory "
            "`mmbert prep train-tokenizer` wrote, or a tokenizer.json)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        save_pretrained(load_pretrained(model_path, trust_pickle=trust_pickle), model_dir, tokenizer=source)
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
    parser.add_argument("model", help="a checkpoint of any format (HF dir, .pt, sharded FSDP dir)")
    parser.add_argument("text", help='text with the mask token, e.g. "Paris is the <mask> of France."')
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument(
        "--tokenizer", help="tokenizer directory or tokenizer.json (default: the model's own)"
    )
    parser.add_argument("--trust-pickle", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the predictions as JSON")
    args = parser.parse_args(argv)
    try:
        predictions = fill_mask(
            args.model, args.text, args.top_k, tokenizer=args.tokenizer, trust_pickle=args.trust_pickle
        )
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
