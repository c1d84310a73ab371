"""Tokenizing a very long document in pieces, with the same ids as tokenizing it whole.

Why: a ``tokenizers`` ``Encoding`` keeps, per token, its string, offsets, masks and word ids (~270 bytes per
token measured with our BPE), so encoding a 20 MB document at once needs gigabytes. Here the text is encoded in
windows of ``piece_chars`` characters and only the ids are kept (4 bytes per token), so memory is bounded by the
window, not by the document.

Stitching. Window ``k`` covers ``text[s_k : s_k + piece_chars]``. Its last tokens may be wrong (the window cuts
a word the tokenizer would have merged), and the first tokens of the next window may be too (it lacks the text
before it, e.g. a Metaspace ``prepend_scheme="first"`` marks its first word as a text start). So the next window
starts ``overlap_chars`` before the end of this one, at a token start of this window, and the two windows are
joined at the first position ``q`` in the overlap where

* both windows have a token starting at ``q`` (and the token before it ends there: the byte-fallback tokens
  of one character share its offsets, and a join never splits them) and
* the next ``AGREE_TOKENS`` tokens from ``q`` (ids and character offsets) are the same in both

(fewer when the overlap ends first). Left of ``q`` the earlier window's tokens are kept, from ``q`` on the later
one's. Tokenizers whose choices depend only on nearby text (BPE and unigram models with the usual
pre-tokenizers, Gemma's included) agree again within a few tokens, so the result equals the whole-document
encoding; :func:`encode_in_pieces` counts the joins where no agreement was found (then it cuts at the window
start, which can differ from the whole-document encoding in a token or two around that spot).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PIECE_CHARS = 1 << 16  # characters per window: ~20k tokens, a few MB of Encoding
OVERLAP_CHARS = 1024  # characters the next window re-reads; far longer than any token
AGREE_TOKENS = 8


@dataclass
class _Window:
    ids: np.ndarray  # uint32
    starts: np.ndarray  # absolute character offsets of each token's start
    ends: np.ndarray


def _encode_window(tokenizer, text: str, start: int, stop: int) -> _Window:
    enc = tokenizer.encode(text[start:stop], add_special_tokens=False)
    offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2) + start
    return _Window(np.asarray(enc.ids, dtype=np.uint32), offsets[:, 0], offsets[:, 1])


def _join_point(a: _Window, b: _Window, begin: int, limit: int) -> tuple[int, int] | None:
    """Indices ``(i, j)``: token ``i`` of ``a`` and token ``j`` of ``b`` start at the same place, at or after
    ``begin``, and the following tokens starting before ``limit`` agree (at least one, at most AGREE_TOKENS)."""
    i = int(np.searchsorted(a.starts, begin))
    j = 0
    n_a = int(np.searchsorted(a.starts, limit))
    n_b = int(np.searchsorted(b.starts, limit))
    while i < n_a and j < n_b:
        if a.starts[i] < b.starts[j]:
            i += 1
        elif a.starts[i] > b.starts[j]:
            j += 1
        elif (i and a.ends[i - 1] > a.starts[i]) or (j and b.ends[j - 1] > b.starts[j]):
            i += 1  # inside one character's byte-fallback tokens (they share its offsets): not a boundary
            j += 1
        else:
            k = 0
            want = min(AGREE_TOKENS, n_a - i, n_b - j)
            while (
                k < want
                and a.ids[i + k] == b.ids[j + k]
                and a.starts[i + k] == b.starts[j + k]
                and a.ends[i + k] == b.ends[j + k]
            ):
                k += 1
            if k == want:
                return i, j
            i += 1
            j += 1
    return None


def encode_in_pieces(
    tokenizer, text: str, piece_chars: int = PIECE_CHARS, overlap_chars: int = OVERLAP_CHARS
) -> tuple[np.ndarray, int]:
    """``(ids, unmatched_joins)`` of ``text`` encoded window by window (see the module docstring).

    ``tokenizer`` is a ``tokenizers.Tokenizer``; ``ids`` is uint32 without special tokens.
    """
    if overlap_chars * 2 > piece_chars:
        raise ValueError("overlap_chars must be at most half of piece_chars")
    n = len(text)
    parts: list[np.ndarray] = []
    unmatched = 0
    window = _encode_window(tokenizer, text, 0, min(piece_chars, n))
    first = 0  # tokens of `window` before this index were already taken from the previous window
    stop = min(piece_chars, n)
    while stop < n:
        # the next window starts at a token start of this one, overlap_chars before this window's end
        at = int(np.searchsorted(window.starts, stop - overlap_chars))
        at = max(at, first)
        begin = int(window.starts[at]) if at < len(window.ids) else stop - overlap_chars
        next_stop = min(begin + piece_chars, n)
        following = _encode_window(tokenizer, text, begin, next_stop)
        # tokens near this window's cut may be wrong: only look for agreement in the first 3/4 of the overlap
        join = _join_point(window, following, begin, stop - overlap_chars // 4)
        if join is None:
            unmatched += 1
            join = (int(np.searchsorted(window.starts, begin)), 0)
        i, j = join
        parts.append(window.ids[first:i])
        window, first, stop = following, j, next_stop
    parts.append(window.ids[first:])
    return (np.concatenate(parts) if parts else np.empty(0, dtype=np.uint32)), unmatched
