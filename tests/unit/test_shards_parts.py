"""``ptbr shards build --part I/N`` + ``--merge N``: one dataset with one manifest that verify and the streaming
reader accept; the same documents, split and sample count as a one-machine build, and samples that differ from
it only as documented (each part packed from its own start, the parts' tails packed at the end); idempotent
parts; a part of another tokenizer refused with one line."""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ptbr.data.build import BuildSettings, build_shards
from ptbr.data.build_parts import build_part, merge_shards
from ptbr.data.corpus import ReadStats, discover_inputs, iter_units, units_of
from ptbr.data.parts import PartSpec, assign
from ptbr.errors import DataError
from tests.helpers.data import (
    as_samples,
    assert_one_line_error,
    direct_tokens,
    isolated_environ,
    run_cli,
    train_tokenizer,
)
from tests.helpers.data_fixtures import local_samples

SEQ, VAL = 24, 0.15
SETTINGS = BuildSettings(seq_len=SEQ, val_fraction=VAL, shard_size=4096)
QUIET = {"log": lambda _m: None}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    from ptbr.devtools.sample_text import portuguese_documents

    root = tmp_path_factory.mktemp("shards-parts")
    corpus = root / "corpus"
    corpus.mkdir()
    docs = portuguese_documents(150, seed=21, max_sentences=10)
    for i in range(3):
        (corpus / f"f{i}.jsonl").write_text(
            "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs[i * 50 : (i + 1) * 50])
        )
    train_tokenizer(str(corpus), str(root / "tok.json"), 300)
    train_tokenizer(str(corpus / "f0.jsonl"), str(root / "tok2.json"), 290)
    build_shards([str(corpus)], root / "tok.json", root / "one", SETTINGS, workers=1, progress=False, **QUIET)
    for i in range(3):
        build_part(
            [str(corpus)],
            root / "tok.json",
            root / "three.parts",
            SETTINGS,
            PartSpec(i, 3),
            workers=1,
            progress=False,
            **QUIET,
        )
    merge_shards([str(corpus)], root / "tok.json", root / "three", SETTINGS, 3, work=root / "three.parts", **QUIET)
    return {"root": root, "corpus": corpus, "tok": root / "tok.json"}


def part_documents(corpus: Path, n: int) -> list[list[str]]:
    files = discover_inputs([corpus])
    units = units_of(files)
    owner = assign([u.size for u in units], n)
    return [[t for _, t in iter_units([u for u, p in zip(units, owner) if p == i], ReadStats())] for i in range(n)]


def test_merged_manifest_counts_equal_the_one_machine_build(built):
    one = json.loads((built["root"] / "one" / "manifest.json").read_text())
    three = json.loads((built["root"] / "three" / "manifest.json").read_text())
    assert three["parts"] == 3 and three["tokenizer"] == one["tokenizer"] and three["split"] == one["split"]
    assert [i["path"] for i in three["inputs"]] == [i["path"] for i in one["inputs"]]
    assert three["stats"] == one["stats"]
    for split in ("train", "val"):
        a, b = one["splits"][split], three["splits"][split]
        for key in ("samples", "tokens", "documents", "stream_tokens", "dropped_tokens"):
            assert a[key] == b[key], (split, key)
    assert three["dataset_hash"] != one["dataset_hash"] and three["build_key"] != one["build_key"]


def test_samples_are_each_parts_samples_then_the_joined_tails(built):
    """The documented difference, exactly: part i's stream T_i packed from its own start, the tails r_i joined in
    part order and packed after the last part's samples."""
    sample_len = SEQ + 1
    per_part = part_documents(built["corpus"], 3)
    assert all(per_part)  # every part got documents
    for split in ("train", "val"):
        heads, tails = [], []
        for docs in per_part:
            stream = direct_tokens(built["tok"], docs, val_fraction=VAL, split_seed=0)[split]
            cut = len(stream) // sample_len * sample_len
            heads.append(stream[:cut])
            tails.append(stream[cut:])
        expected = as_samples(np.concatenate(heads + [np.concatenate(tails)]), sample_len)
        got = local_samples(built["root"] / "three", split)
        np.testing.assert_array_equal(got, expected)
        one = local_samples(built["root"] / "one", split)
        assert one.shape == got.shape
        # the same tokens overall except the final remainder (< one sample) each build drops
        remainder = sum(len(t) for t in tails) % sample_len
        assert (
            np.abs(np.bincount(one.ravel(), minlength=300) - np.bincount(got.ravel(), minlength=300)).sum()
            <= 2 * remainder
        )


def test_verify_and_the_streaming_reader_accept_the_merged_dataset(built, tmp_path):
    from ptbr.data.verify import verify

    dataset = built["root"] / "three"
    report = verify(str(dataset), progress=False)
    assert report.ok, report.problems
    index = json.loads((dataset / "train" / "index.json").read_text())
    assert {s["zip_data"]["basename"].split("/")[0] for s in index["shards"]} == {
        "part-00000",
        "part-00001",
        "part-00002",
        "tail",
    }
    with isolated_environ():
        from ptbr.data import build_dataset, prepare_streaming_env

        prepare_streaming_env()
        ds = build_dataset(
            str(dataset), "train", cache_root=str(tmp_path / "cache"), batch_size=4, shuffle=False, seed=0
        )
        rows = [np.concatenate([it["input"].numpy(), it["target"].numpy()[-1:]]) for it in ds]
        np.testing.assert_array_equal(np.stack(rows), local_samples(dataset, "train"))
        del ds
        gc.collect()


def test_parts_are_idempotent_and_a_foreign_tokenizer_is_refused(built, tmp_path):
    root, corpus = built["root"], [str(built["corpus"])]
    lines: list[str] = []
    build_part(
        corpus,
        built["tok"],
        root / "three.parts",
        SETTINGS,
        PartSpec(2, 3),
        workers=1,
        progress=False,
        log=lines.append,
    )
    assert len(lines) == 1 and "done already" in lines[0]
    lines.clear()
    merge_shards(corpus, built["tok"], root / "three", SETTINGS, 3, work=root / "three.parts", log=lines.append)
    assert "up to date" in lines[0]

    work = tmp_path / "w.parts"
    shutil.copytree(root / "three.parts", work)
    shutil.rmtree(work / "part-00001-of-00003")
    build_part(corpus, root / "tok2.json", work, SETTINGS, PartSpec(1, 3), workers=1, progress=False, **QUIET)
    with pytest.raises(DataError, match=r"part 1/3 in .* was built with another tokenizer \(.*tok2.json"):
        merge_shards(corpus, built["tok"], tmp_path / "w", SETTINGS, 3, work=work, **QUIET)
    assert not (tmp_path / "w").exists()
    proc = run_cli(
        "shards",
        "build",
        "--input",
        *corpus,
        "--tokenizer",
        str(built["tok"]),
        "--output",
        str(tmp_path / "w"),
        "--seq-len",
        str(SEQ),
        "--val-fraction",
        str(VAL),
        "--shard-size",
        "4kb",
        "--merge",
        "3",
        "--work",
        str(work),
    )
    assert_one_line_error(proc, "part 1/3", "another tokenizer")
