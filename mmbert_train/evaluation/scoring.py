"""Scoring a model on a held-out set: flat packed batches of masked pieces, accuracy and loss per language."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence

import torch

from mmbert_train.constants import IGNORE_INDEX

from .errors import EvalError
from .heldout import HeldoutSet, MaskedPiece
from .report import LanguageResult, MLMReport, MLMScore, aggregate_groups

DEFAULT_BATCH_TOKENS = 16384


def _flat_batches(pieces: Sequence[MaskedPiece], batch_tokens: int) -> Iterable[list[MaskedPiece]]:
    batch: list[MaskedPiece] = []
    n = 0
    for piece in pieces:
        if batch and n + len(piece.input_ids) > batch_tokens:
            yield batch
            batch, n = [], 0
        batch.append(piece)
        n += len(piece.input_ids)
    if batch:
        yield batch


@torch.no_grad()
def score_pieces(model: torch.nn.Module, pieces: Sequence[MaskedPiece], batch_tokens: int) -> MLMScore:
    """Sum of correct top-1 predictions and cross-entropy over the masked tokens of ``pieces``.

    Pieces go through the model as flat packed batches (contract 1, form 3) of about ``batch_tokens`` tokens;
    the model's sparse head returns logits for the labelled positions only, in flat order.
    """
    device = next(model.parameters()).device
    total = MLMScore()
    for batch in _flat_batches(pieces, batch_tokens):
        labels = torch.cat([p.labels for p in batch])
        if not bool((labels != IGNORE_INDEX).any()):
            continue
        input_ids = torch.cat([p.input_ids for p in batch])
        lens = torch.tensor([len(p.input_ids) for p in batch], dtype=torch.int32)
        cu_seqlens = torch.nn.functional.pad(torch.cumsum(lens, 0, dtype=torch.int32), (1, 0))
        out = model(
            input_ids.to(device),
            labels=labels.to(device),
            cu_seqlens=cu_seqlens.to(device),
            max_seqlen=int(lens.max()),
        )
        targets = labels[labels != IGNORE_INDEX].to(device)
        logits = out.logits.float()
        total = total + MLMScore(
            tokens=int(targets.numel()),
            correct=int((logits.argmax(dim=-1) == targets).sum()),
            loss_sum=float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum").double()),
        )
    return total


def evaluate_model(
    model: torch.nn.Module,
    heldout: HeldoutSet,
    groups: Mapping[str, Sequence[str]] | None = None,
    *,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: bool = False,
) -> MLMReport:
    """Score ``model`` on every language of ``heldout`` and aggregate ``groups`` (language lists)."""
    config = getattr(model, "config", None)
    if config is not None and heldout.max_seq_len > config.max_position_embeddings:
        raise EvalError(
            f"--max-seq-len {heldout.max_seq_len} is above the model's max_position_embeddings "
            f"({config.max_position_embeddings}); pass --max-seq-len {config.max_position_embeddings} or less"
        )
    was_training = model.training
    model.eval()
    results: dict[str, LanguageResult] = {}
    items = heldout.languages.values()
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="eval-mlm", unit="lang", file=sys.stderr)
    try:
        for lang in items:
            score = score_pieces(model, lang.pieces, batch_tokens)
            results[lang.language] = LanguageResult(lang.language, lang.samples, lang.input_tokens, score)
    finally:
        model.train(was_training)
    return MLMReport(
        settings=heldout.settings(), languages=results, groups=aggregate_groups(results, groups or {})
    )
