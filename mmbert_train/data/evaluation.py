"""Held-out evaluation data for training: one packed, masked dataloader per language and per language group.

``data.eval`` (:class:`~mmbert_train.data.spec.EvalDataConfig`) names the languages reported one by one (a
list, a language file, or None for the phase's language set) and named groups (e.g. ``pretrain`` /
``midtrain_added`` / ``decay_added``, each a list or a language file) reported as aggregates.

The masked tokens are exactly those of ``mmbert eval-mlm`` (:func:`mmbert_train.evaluate.load_heldout`): the
first ``max_samples_per_language`` held-out samples of ``root/<source>/<language>/heldout/`` (the phase's
sources), cut to ``max_seq_len`` and masked at the FIXED ``eval.mask_ratio`` with generator
``mask_generator(eval.seed, key(language), piece index)``. A loss measured during training therefore equals
the offline one for the same checkpoint, and is comparable across phases whose training mask ratios differ.
The masked pieces are then packed into rows by best fit (packing.py) and served as contract-3 batches.

For the trainer::

    loaders = build_eval_dataloaders(data_cfg, vocab_size=..., mask_token_id=...)
    evaluators = [Evaluator(label=label, dataloader=spec, metric_names=[...]) for label, spec in loaders.items()]

Labels are ``heldout/<language>`` and ``heldout/group/<name>``. A group's loader holds the rows of all its
languages that have held-out data, so Composer's metrics over it are weighted by masked tokens. Languages
without held-out data (e.g. one with a single document) are skipped with a warning; a group with none of its
languages is skipped too. Under several ranks each loader uses Composer's distributed sampler (no shuffle).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset

from mmbert_train.data.masking import DEFAULT_MASK_TOKEN_ID, DEFAULT_SPECIAL_IDS
from mmbert_train.data.packing import best_fit_rows

if TYPE_CHECKING:
    from composer.core import DataSpec

    from mmbert_train.data.spec import DataConfig

log = logging.getLogger(__name__)

LANGUAGE_LABEL = "heldout/{}"
GROUP_LABEL = "heldout/group/{}"


def pack_masked_pieces(
    pieces: Sequence[tuple[torch.Tensor, torch.Tensor]], max_seq_len: int, pad_id: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Best-fit pack ``(inputs, labels)`` pieces into rows: ``input_ids``, ``labels``, ``attention_mask`` (L,)
    and ``doc_lens`` (documents in the row,) int32. Rows are ordered as :func:`best_fit_rows` opens them."""
    rows = []
    for members in best_fit_rows([len(p[0]) for p in pieces], max_seq_len):
        input_ids = torch.full((max_seq_len,), pad_id, dtype=torch.int64)
        labels = torch.full((max_seq_len,), -100, dtype=torch.int64)
        offset, lens = 0, []
        for i in members:
            inputs, piece_labels = pieces[i]
            n = len(inputs)
            input_ids[offset : offset + n] = inputs
            labels[offset : offset + n] = piece_labels
            lens.append(n)
            offset += n
        attention_mask = torch.zeros(max_seq_len, dtype=torch.int64)
        attention_mask[:offset] = 1
        rows.append(
            {
                "input_ids": input_ids,
                "labels": labels,
                "attention_mask": attention_mask,
                "doc_lens": torch.tensor(lens, dtype=torch.int32),
            }
        )
    return rows


def collate_eval_rows(rows: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack rows into a contract-3 batch (``doc_lens`` zero-padded to the row with most documents)."""
    width = max(len(r["doc_lens"]) for r in rows)
    doc_lens = torch.zeros((len(rows), width), dtype=torch.int32)
    for i, r in enumerate(rows):
        doc_lens[i, : len(r["doc_lens"])] = r["doc_lens"]
    batch = {k: torch.stack([r[k] for r in rows]) for k in ("input_ids", "labels", "attention_mask")}
    batch["doc_lens"] = doc_lens
    return batch


class HeldoutRows(Dataset):
    """Packed held-out rows (map-style, fixed order)."""

    def __init__(self, rows: list[dict[str, torch.Tensor]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.rows[index]


def _data_spec(rows: list[dict[str, torch.Tensor]], batch_size: int) -> DataSpec:
    from composer.core import DataSpec
    from composer.utils import dist

    from mmbert_train.data.loader import num_rows_in_batch, num_tokens_in_batch, split_packed_batch

    dataset = HeldoutRows(rows)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=dist.get_sampler(dataset, shuffle=False, drop_last=False),
        collate_fn=collate_eval_rows,
        num_workers=0,
    )
    return DataSpec(
        loader,
        split_batch=split_packed_batch,
        get_num_samples_in_batch=num_rows_in_batch,
        get_num_tokens_in_batch=num_tokens_in_batch,
    )


def eval_language_sets(
    data_cfg: DataConfig, recipe_dir: str | os.PathLike | None = None
) -> tuple[list[str], dict[str, list[str]]]:
    """(languages reported one by one, groups name -> languages) of ``data_cfg.eval``."""
    from mmbert_train.data.languages import resolve_language_set

    eval_cfg = data_cfg.eval
    spec = data_cfg.languages if eval_cfg.languages is None else eval_cfg.languages
    languages = resolve_language_set(spec, recipe_dir=recipe_dir, where="data.eval.languages")
    groups = {
        name: resolve_language_set(members, recipe_dir=recipe_dir, where=f"data.eval.groups.{name}")
        for name, members in eval_cfg.groups.items()
    }
    return languages, groups


def build_eval_dataloaders(
    data_cfg: DataConfig,
    *,
    vocab_size: int,
    mask_token_id: int = DEFAULT_MASK_TOKEN_ID,
    special_ids: Sequence[int] = DEFAULT_SPECIAL_IDS,
    pad_id: int = 0,
    recipe_dir: str | os.PathLike | None = None,
) -> dict[str, DataSpec]:
    """``{label: DataSpec}`` for every reported language and group with held-out data (module docstring)."""
    from mmbert_train.evaluate import heldout_folders, load_heldout, read_manifest

    eval_cfg = data_cfg.eval
    root = Path(data_cfg.root)
    max_seq_len = eval_cfg.max_seq_len or data_cfg.max_seq_len
    languages, groups = eval_language_sets(data_cfg, recipe_dir)
    manifest = read_manifest(root)
    sources = [s.name for s in data_cfg.sources]
    wanted = list(dict.fromkeys([*languages, *(lang for members in groups.values() for lang in members)]))
    present = [lang for lang in wanted if heldout_folders(root, manifest, lang, sources)]
    missing = sorted(set(wanted) - set(present))
    if missing:
        log.warning(
            "held-out evaluation: no held-out data for %d language(s), skipped: %s",
            len(missing),
            ", ".join(missing),
        )
    if not present:
        return {}
    heldout = load_heldout(
        root,
        present,
        mask_ratio=eval_cfg.mask_ratio,
        seed=eval_cfg.seed,
        max_seq_len=max_seq_len,
        max_samples_per_language=eval_cfg.max_samples_per_language,
        sources=sources,
        vocab_size=vocab_size,
        mask_token_id=mask_token_id,
        special_ids=tuple(special_ids),
    )
    rows = {
        lang: pack_masked_pieces([(p.input_ids, p.labels) for p in item.pieces], max_seq_len, pad_id)
        for lang, item in heldout.languages.items()
    }
    out: dict[str, DataSpec] = {}
    for lang in languages:
        if rows.get(lang):
            out[LANGUAGE_LABEL.format(lang)] = _data_spec(rows[lang], eval_cfg.batch_size)
    for name, members in groups.items():
        group_rows = [row for lang in members for row in rows.get(lang, [])]
        if group_rows:
            out[GROUP_LABEL.format(name)] = _data_spec(group_rows, eval_cfg.batch_size)
        else:
            log.warning("held-out evaluation: group %r has no language with held-out data; skipped", name)
    return out
