"""Held-out MLM scores per language and group, and the report files (JSON, CSV) and table."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmbert_train.atomic import atomic_write_text

from .errors import EvalError


@dataclass
class MLMScore:
    """Sums over masked tokens: ``tokens`` masked positions, ``correct`` top-1 hits, ``loss_sum`` in nats."""

    tokens: int = 0
    correct: int = 0
    loss_sum: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.tokens if self.tokens else math.nan

    @property
    def loss(self) -> float:
        return self.loss_sum / self.tokens if self.tokens else math.nan

    def __add__(self, other: MLMScore) -> MLMScore:
        return MLMScore(
            self.tokens + other.tokens, self.correct + other.correct, self.loss_sum + other.loss_sum
        )


@dataclass
class LanguageResult:
    language: str
    samples: int  # held-out samples read
    input_tokens: int  # their tokens (bos/eos included)
    score: MLMScore

    def as_dict(self) -> dict:
        return {
            "samples": self.samples,
            "input_tokens": self.input_tokens,
            "masked_tokens": self.score.tokens,
            "correct": self.score.correct,
            "accuracy": self.score.accuracy,
            "loss": self.score.loss,
        }


@dataclass
class GroupResult:
    name: str
    languages: list[str]
    score: MLMScore  # token-weighted: sums over the group's languages
    macro_accuracy: float  # unweighted mean of the languages' accuracies
    macro_loss: float

    def as_dict(self) -> dict:
        return {
            "languages": self.languages,
            "masked_tokens": self.score.tokens,
            "correct": self.score.correct,
            "accuracy": self.score.accuracy,
            "loss": self.score.loss,
            "macro_accuracy": self.macro_accuracy,
            "macro_loss": self.macro_loss,
        }


@dataclass
class MLMReport:
    """The result of one evaluation; ``as_dict`` is the JSON written by ``--output``."""

    settings: dict
    languages: dict[str, LanguageResult]
    groups: dict[str, GroupResult] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            **self.settings,
            "languages": {k: v.as_dict() for k, v in self.languages.items()},
            "groups": {k: v.as_dict() for k, v in self.groups.items()},
        }

    def csv_rows(self) -> list[dict]:
        rows = []
        for name, g in self.groups.items():
            rows.append(
                {"kind": "group", "name": name, "languages": len(g.languages), "samples": "",
                 "masked_tokens": g.score.tokens, "correct": g.score.correct, "accuracy": g.score.accuracy,
                 "loss": g.score.loss, "macro_accuracy": g.macro_accuracy, "macro_loss": g.macro_loss}
            )  # fmt: skip
        for name, r in self.languages.items():
            rows.append(
                {"kind": "language", "name": name, "languages": 1, "samples": r.samples,
                 "masked_tokens": r.score.tokens, "correct": r.score.correct, "accuracy": r.score.accuracy,
                 "loss": r.score.loss, "macro_accuracy": r.score.accuracy, "macro_loss": r.score.loss}
            )  # fmt: skip
        return rows


def aggregate_groups(
    results: Mapping[str, LanguageResult], groups: Mapping[str, Sequence[str]]
) -> dict[str, GroupResult]:
    """Token-weighted sums (and unweighted means) over each group's languages.

    Every language of a group must have been evaluated; a missing one is an :class:`EvalError` naming it.
    Languages with no masked token count in the sums but not in the macro means.
    """
    out = {}
    for name, members in groups.items():
        missing = [lang for lang in members if lang not in results]
        if missing:
            raise EvalError(
                f"group {name!r}: language(s) {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''} "
                "were not evaluated; add them to --languages"
            )
        if not members:
            raise EvalError(f"group {name!r} has no languages")
        total = MLMScore()
        for lang in members:
            total = total + results[lang].score
        scored = [results[lang].score for lang in members if results[lang].score.tokens]
        macro_acc = float(np.mean([s.accuracy for s in scored])) if scored else math.nan
        macro_loss = float(np.mean([s.loss for s in scored])) if scored else math.nan
        out[name] = GroupResult(name, list(members), total, macro_acc, macro_loss)
    return out


def write_json(report: MLMReport, path: str | os.PathLike) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps(report.as_dict(), indent=2, allow_nan=True) + "\n")
    return path


def write_csv(report: MLMReport, path: str | os.PathLike) -> Path:
    path = Path(path)
    buf = io.StringIO()
    rows = report.csv_rows()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return path


def format_report(report: MLMReport, max_languages: int = 40) -> str:
    lines = [f"{'':<8}{'name':<24}{'langs':>6}{'masked':>10}{'accuracy':>10}{'loss':>9}{'macro acc':>11}"]
    for name, g in report.groups.items():
        lines.append(
            f"{'group':<8}{name:<24}{len(g.languages):>6}{g.score.tokens:>10}{g.score.accuracy:>10.4f}"
            f"{g.score.loss:>9.4f}{g.macro_accuracy:>11.4f}"
        )
    shown = list(report.languages.items())
    for name, r in shown[:max_languages]:
        lines.append(
            f"{'lang':<8}{name:<24}{1:>6}{r.score.tokens:>10}{r.score.accuracy:>10.4f}{r.score.loss:>9.4f}"
        )
    if len(shown) > max_languages:
        lines.append(f"... {len(shown) - max_languages} more languages (see --output / --csv)")
    return "\n".join(lines)
