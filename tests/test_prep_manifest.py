"""`mmbert_train.data.manifest.load_manifest`: reads MDS/manifest.json and checks the schema of Contract 2."""

from __future__ import annotations

import copy
import json

import pytest

from mmbert_train.data.manifest import ManifestError, load_manifest

GOOD = {
    "tokenizer": "jhu-clsp/mmBERT-base",
    "max_seq_len": 8192,
    "sources": {
        "fineweb2": {
            "rus_Cyrl": {
                "documents": 10,
                "samples": 12,
                "tokens": 9000,
                "skipped": 1,
                "heldout_documents": 1,
            },
            "eng": {"documents": 0, "samples": 0, "tokens": 0, "skipped": 3, "heldout_documents": 0},
        }
    },
}


def write(tmp_path, manifest) -> str:
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return str(tmp_path / "manifest.json")


def test_loads_from_file_or_folder(tmp_path):
    write(tmp_path, GOOD)
    assert load_manifest(tmp_path) == GOOD
    assert load_manifest(tmp_path / "manifest.json") == GOOD


def _edit(path, value):
    manifest = copy.deepcopy(GOOD)
    *head, last = path
    target = manifest
    for key in head:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return manifest


@pytest.mark.parametrize(
    "path, value, message",
    [
        (["tokenizer"], KeyError, "missing key 'tokenizer'"),
        (["max_seq_len"], "8192", "'max_seq_len' should be an integer >= 3, got '8192'"),
        (["max_seq_len"], True, "'max_seq_len' should be an integer >= 3, got True"),
        (["sources"], [], "'sources' should be an object"),
        (
            ["sources", "fineweb2", "Russian"],
            GOOD["sources"]["fineweb2"]["eng"],
            "sources.fineweb2.Russian: language",
        ),
        (
            ["sources", "fineweb2", "eng", "tokens"],
            -1,
            "sources.fineweb2.eng.tokens should be a non-negative integer",
        ),
        (["sources", "fineweb2", "eng", "skipped"], KeyError, "sources.fineweb2.eng is missing skipped"),
        (
            ["sources", "fineweb2", "rus_Cyrl", "heldout_documents"],
            11,
            "heldout_documents should be at most documents",
        ),
    ],
)
def test_schema_errors_name_the_key(tmp_path, path, value, message):
    where = write(tmp_path, _edit(path, value))
    with pytest.raises(ManifestError, match=None) as info:
        load_manifest(where)
    assert message in str(info.value) and where in str(info.value)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ManifestError, match="manifest.json: no manifest here; run `mmbert prep tokenize`"):
        load_manifest(tmp_path)
    with pytest.raises(ManifestError, match="nowhere/manifest.json: no manifest here"):
        load_manifest(tmp_path / "nowhere")  # a folder that does not exist
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)
