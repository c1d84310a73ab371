"""Held-out masked-LM accuracy and loss per language and per group of languages: ``mmbert eval-mlm`` and the in-training callback.

    mmbert eval-mlm MODEL --data MDS --languages FILE [--group NAME=FILE ...] [--mask-ratio 0.15] [--seed 1234]

``MODEL`` is a checkpoint of any format :func:`mmbert_train.model.load_pretrained` reads (a Hugging Face
directory, a ``.safetensors`` file, one of our Composer checkpoints, a FlexBert checkpoint, a sharded FSDP
directory). The text is the held-out split that ``mmbert prep tokenize`` wrote
to ``MDS/<source>/<language>/heldout/``: documents no phase trains on.

What is measured. Every held-out sample is cut into pieces of at most ``max_seq_len`` tokens (the loader's
:func:`~mmbert_train.data.packing.cut_sample`) and corrupted with the training code's
:func:`~mmbert_train.data.masking.mask_tokens` (80/10/10, specials never picked) at ONE fixed ``mask_ratio``.
The generator of piece ``j`` of language ``L`` is ``mask_generator(seed, key(L), j)``, so the masks depend
only on ``(seed, language, piece)``: not on the model, the batch size, or which other languages are
evaluated. Two checkpoints are therefore scored on exactly the same masked tokens, whatever mask ratio their
phase trained with. Pieces are scored as separate documents (flat packed batches: attention never crosses a
piece), so batching does not change the result. For language ``L`` with masked positions ``M_L``::

    accuracy_L = #{i in M_L : argmax_v logits_i[v] == x_i} / |M_L|
    loss_L     = sum_{i in M_L} -log softmax(logits_i)[x_i] / |M_L|          (nats per masked token)

A group ``G`` aggregates its languages weighted by masked tokens (``accuracy_G = sum correct / sum |M_L|``,
likewise the loss) and also reports the unweighted mean over its languages (``macro_accuracy``,
``macro_loss``), which is what a "typical language of the group" sees when the languages differ in size.
"""

from __future__ import annotations

from .errors import EvalError
from .heldout import (
    HELDOUT_DIR,
    HeldoutLanguage,
    HeldoutSet,
    MaskedPiece,
    all_heldout_languages,
    heldout_folders,
    language_key,
    load_heldout,
)
from .report import (
    GroupResult,
    LanguageResult,
    MLMReport,
    MLMScore,
    aggregate_groups,
    format_report,
    write_csv,
    write_json,
)
from .scoring import DEFAULT_BATCH_TOKENS, evaluate_model, score_pieces

__all__ = [
    "DEFAULT_BATCH_TOKENS",
    "HELDOUT_DIR",
    "EvalError",
    "GroupResult",
    "HeldoutLanguage",
    "HeldoutSet",
    "LanguageResult",
    "MLMReport",
    "MLMScore",
    "MaskedPiece",
    "aggregate_groups",
    "all_heldout_languages",
    "evaluate_model",
    "format_report",
    "heldout_folders",
    "language_key",
    "load_heldout",
    "score_pieces",
    "write_csv",
    "write_json",
]
