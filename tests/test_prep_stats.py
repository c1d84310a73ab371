"""`mmbert prep stats`: rebuild the manifest from MDS folders, ours and pre-tokenized ones in other encodings."""

from __future__ import annotations

import numpy as np
import pytest
from streaming import MDSWriter

from data_prep.cli import main as prep_main
from data_prep.stats import StatsError, rebuild_manifest
from data_prep.testing import make_mds
from mmbert_train.data.manifest import MANIFEST_NAME, load_manifest
from mmbert_train.data.mds import MDSError, iter_input_ids

RNG = np.random.default_rng(0)
LENGTHS = [5, 17, 1, 64, 33]


def _samples(lengths=LENGTHS) -> list[np.ndarray]:
    return [np.concatenate([[2], RNG.integers(5, 60000, n - 2 if n > 2 else 0), [1]])[:n] for n in lengths]


def write_foreign(folder, encoding: str, samples: list[np.ndarray], compression: str | None = "zstd") -> None:
    with MDSWriter(
        out=str(folder), columns={"input_ids": encoding, "url": "str"}, compression=compression
    ) as w:
        for ids in samples:
            if encoding == "bytes":
                value = ids.astype(np.int32).tobytes()
            elif encoding == "ndarray":
                value = ids.astype(np.int64)
            else:
                value = ids.astype(encoding.split(":")[1])
            w.write({"input_ids": value, "url": "https://example.org"})


def test_rebuilds_our_own_manifest_exactly(tmp_path, capsys):
    mds = make_mds(tmp_path)
    original = load_manifest(mds)
    (mds / MANIFEST_NAME).unlink()
    assert prep_main(["stats", str(mds)]) == 0
    assert load_manifest(mds) == original
    assert f"{len(original['sources']['web'])} dataset(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "encoding", ["ndarray:uint16", "ndarray:int32", "ndarray:uint32", "ndarray:int64", "ndarray", "bytes"]
)
@pytest.mark.parametrize("compression", ["zstd", None])
def test_pretokenized_input_ids_in_any_integer_encoding(tmp_path, encoding, compression):
    train, heldout = _samples(), _samples([7, 9])
    write_foreign(tmp_path / "mds" / "published" / "rus_Cyrl", encoding, train, compression)
    write_foreign(tmp_path / "mds" / "published" / "rus_Cyrl" / "heldout", encoding, heldout, compression)
    got = [
        ids.astype(np.int64).tolist() for ids in iter_input_ids(tmp_path / "mds" / "published" / "rus_Cyrl")
    ]
    assert got == [ids.tolist() for ids in train]
    manifest = rebuild_manifest(tmp_path / "mds", tokenizer="jhu-clsp/mmBERT-base")
    assert manifest == load_manifest(tmp_path / "mds")
    assert manifest["tokenizer"] == "jhu-clsp/mmBERT-base"
    assert manifest["max_seq_len"] == max(LENGTHS)  # the longest sample when nothing else is known
    assert manifest["sources"] == {
        "published": {
            "rus_Cyrl": {
                "documents": len(LENGTHS) + 2,  # unknown boundaries: one document per sample
                "samples": len(LENGTHS),
                "tokens": sum(LENGTHS),
                "skipped": 0,
                "heldout_documents": 2,
            }
        }
    }


def test_max_seq_len_and_tokenizer_flags(tmp_path):
    write_foreign(tmp_path / "mds" / "pub" / "eng", "ndarray:uint32", _samples())
    assert prep_main(["stats", str(tmp_path / "mds"), "--tokenizer", "tok", "--max-seq-len", "8192"]) == 0
    assert load_manifest(tmp_path / "mds")["max_seq_len"] == 8192
    # a later rebuild (new data added) keeps the tokenizer recorded before
    write_foreign(tmp_path / "mds" / "pub" / "fra", "ndarray:uint32", _samples())
    assert prep_main(["stats", str(tmp_path / "mds")]) == 0
    manifest = load_manifest(tmp_path / "mds")
    assert manifest["tokenizer"] == "tok" and set(manifest["sources"]["pub"]) == {"eng", "fra"}


def test_errors_name_the_file(tmp_path, capsys):
    write_foreign(tmp_path / "a" / "pub" / "eng", "ndarray:uint32", _samples())
    with pytest.raises(StatsError, match="pass --tokenizer"):
        rebuild_manifest(tmp_path / "a")
    with MDSWriter(out=str(tmp_path / "b" / "pub" / "eng"), columns={"tokens": "ndarray:uint32"}) as w:
        w.write({"tokens": np.arange(3, dtype=np.uint32)})
    with pytest.raises(MDSError, match=r"eng/index.json shard 0: no column 'input_ids' \(columns: tokens\)"):
        rebuild_manifest(tmp_path / "b", tokenizer="t")
    with MDSWriter(out=str(tmp_path / "c" / "pub" / "eng"), columns={"input_ids": "ndarray:float32"}) as w:
        w.write({"input_ids": np.arange(3, dtype=np.float32)})
    with pytest.raises(MDSError, match="holds float32 arrays, expected integer ids"):
        rebuild_manifest(tmp_path / "c", tokenizer="t")
    with MDSWriter(out=str(tmp_path / "d" / "pub" / "eng"), columns={"input_ids": "bytes"}) as w:
        w.write({"input_ids": b"\x01\x02\x03"})
    with pytest.raises(MDSError, match="3 bytes is not a whole number of 4-byte ids"):
        rebuild_manifest(tmp_path / "d", tokenizer="t")
    write_foreign(tmp_path / "e" / "pub" / "English", "ndarray:uint32", _samples())
    assert prep_main(["stats", str(tmp_path / "e"), "--tokenizer", "t"]) == 2
    assert "language folder 'English'" in capsys.readouterr().err
    (tmp_path / "f").mkdir()
    assert prep_main(["stats", str(tmp_path / "f")]) == 2
    assert "no MDS/<source>/<language>/index.json found" in capsys.readouterr().err
