"""Constants shared by the data, the model and the evaluation: one home for each.

Special token ids follow Gemma 2's tokenizer, which mmBERT uses: ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>``
3, ``<mask>`` 4; a sequence is ``<bos> ... <eos>``.
"""

from __future__ import annotations

IGNORE_INDEX = -100  # label of a token that is not predicted (PyTorch's cross-entropy default)

PAD_ID, EOS_ID, BOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3, 4
SPECIAL_IDS: tuple[int, ...] = (PAD_ID, EOS_ID, BOS_ID, UNK_ID, MASK_ID)  # never chosen for masking
