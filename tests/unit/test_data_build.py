"""Building a dataset: text -> tokenizer -> shards, every token equal to a direct ``Tokenizer.encode`` of the
documents the corpus files contain (invalid UTF-8 replaced), split by the documented content-hash rule; reading it
back locally (resume, failed downloads).
"""

from __future__ import annotations

import gc
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.data import (
    assert_ok,
    isolated_environ,
    run_cli,
)
from tests.helpers.data_fixtures import SEQ_LEN, VAL_FRACTION, VOCAB, local_samples


def test_tokenizer_records_special_tokens_and_normalises_nfc(tokenizer: Path) -> None:
    from tokenizers import Tokenizer

    data = json.loads(tokenizer.read_text())
    specials = {t["content"]: t["id"] for t in data["added_tokens"] if t["special"]}
    assert specials == {"<|endoftext|>": 0, "<|padding|>": 1}
    tok = Tokenizer.from_file(str(tokenizer))
    assert tok.get_vocab_size() == VOCAB
    assert tok.encode("café coração").ids == tok.encode("cafe\u0301 corac\u0327a\u0303o").ids
    text = "Educação pública no Brasil: 2024, açaí e guaraná!"
    assert tok.decode(tok.encode(text).ids) == text


def test_build_manifest_and_tokens_match_direct_tokenization(dataset: Path, tokenizer: Path, corpus, expected) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["vocab_size"] == VOCAB and manifest["seq_len"] == SEQ_LEN and manifest["eos_id"] == 0
    assert manifest["dtype"] == "uint16" and manifest["sample_len"] == SEQ_LEN + 1
    assert len(manifest["tokenizer"]["sha256"]) == 64 and len(manifest["dataset_hash"]) == 64
    assert [i["path"].rsplit("/", 1)[-1] for i in manifest["inputs"]] == ["a.txt", "b.jsonl.gz", "c.txt.zst", "e.jsonl"]
    assert all(i["bytes"] > 0 for i in manifest["inputs"])
    assert manifest["stats"]["invalid_utf8_replaced"] == 4 and manifest["stats"]["bad_records_skipped"] == 2
    assert manifest["stats"]["empty_documents"] == 1
    docs = corpus[1]
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"] == len(docs)
    assert manifest["splits"]["train"]["shards"] > 3
    for split in ("train", "val"):
        got = local_samples(dataset, split)
        assert manifest["splits"][split]["samples"] == len(got) == len(expected[split]) > 0
        assert manifest["splits"][split]["tokens"] == got.size
        np.testing.assert_array_equal(got, expected[split])


def test_rebuild_is_a_noop(dataset: Path, corpus, tokenizer: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    proc = run_cli(
        "shards",
        "build",
        "--input",
        str(corpus[0]),
        "--tokenizer",
        str(tokenizer),
        "--output",
        str(dataset),
        "--seq-len",
        str(SEQ_LEN),
        "--val-fraction",
        str(VAL_FRACTION),
        "--shard-size",
        "8kb",
        "--workers",
        "1",
    )
    assert_ok(proc)
    assert "up to date" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == before


def test_overwrite_builds_another_version(dataset_b: Path, dataset: Path) -> None:
    a = json.loads((dataset / "manifest.json").read_text())
    b = json.loads((dataset_b / "manifest.json").read_text())
    assert b["seq_len"] == 16 and b["dataset_hash"] != a["dataset_hash"]
    assert sorted(p.name for p in dataset_b.iterdir()) == ["manifest.json", "tokenizer.json", "train", "val"]
    assert local_samples(dataset_b, "train").shape[1] == 17


@pytest.mark.slow  # several seconds of its own: in tests/unit, out of -m "not slow"
def test_resume_continues_exactly_and_refuses_iterated_dataset(dataset: Path, tmp_path: Path) -> None:
    from ptbr.errors import DataError

    with isolated_environ():
        from ptbr.data import build_dataset, prepare_streaming_env

        prepare_streaming_env()

        def fresh():
            return build_dataset(
                str(dataset),
                "train",
                cache_root=str(tmp_path / "cache"),
                batch_size=4,
                shuffle=True,
                seed=11,
                num_canonical_nodes=2,
            )

        ds = fresh()
        assert Path(ds._filelock_root).name.startswith("ptbr-")  # streaming's locks in the per-job dir
        order = [it["sample_id"] for it in ds]
        state = ds.state_dict(num_samples=37, from_beginning=False)
        with pytest.raises(DataError, match="already iterated"):
            ds.load_state_dict(state)
        del ds
        gc.collect()
        resumed = fresh()
        resumed.load_state_dict(state)
        assert [it["sample_id"] for it in resumed] == order[37:]
        del resumed
        gc.collect()


def test_a_failed_download_is_an_error_not_the_end_of_the_epoch(dataset: Path, tmp_path: Path) -> None:
    """streaming 0.13 ends an epoch silently when a download thread fails; TokenDataset must raise, with one
    line naming the missing shard (a contract that an upgrade of streaming must keep)."""

    from ptbr.errors import CorruptDataError

    source = tmp_path / "source"
    shutil.copytree(dataset, source)
    index = json.loads((source / "train" / "index.json").read_text())
    assert len(index["shards"]) >= 3
    (source / "train" / index["shards"][1]["zip_data"]["basename"]).unlink()  # gone at the source
    with isolated_environ():
        from ptbr.data import build_dataset, prepare_streaming_env

        prepare_streaming_env()
        # Which of streaming's threads meets the failure first varies from run to run; a thread that died
        # once left the epoch's end waiting for it for ever (1 run in 8 here): several runs, each bounded.
        for attempt in range(4):
            ds = build_dataset(
                str(source),
                "train",
                cache_root=str(tmp_path / f"cache{attempt}"),
                batch_size=4,
                shuffle=False,
                seed=0,
                download_retry_s=0,
            )
            read: list[int] = []
            outcome: list[BaseException | None] = []

            def iterate(dataset, read=read, outcome=outcome) -> None:
                try:
                    read.extend(it["sample_id"] for it in dataset)
                    outcome.append(None)
                except BaseException as exc:  # noqa: BLE001 - the outcome is what the test checks
                    outcome.append(exc)

            thread = threading.Thread(target=iterate, args=(ds,), daemon=True)
            thread.start()
            thread.join(timeout=60)
            assert not thread.is_alive(), f"run {attempt}: the epoch never ended after the failed download"
            [err] = outcome
            assert isinstance(err, CorruptDataError), err
            assert "shard.00001" in str(err) and "missing" in str(err) and "\n" not in str(err)
            assert len(read) < ds.num_samples
            del ds
            gc.collect()


def test_a_shard_whose_download_failed_fails_every_reader_instead_of_hanging_one(dataset: Path, tmp_path: Path) -> None:
    """streaming 0.13 leaves a shard PREPARING when its download fails, and every other reader on the node
    (another rank, a loader worker) then waits for it for ever: the job hangs instead of stopping with the
    error. Each reader must get the error (here: corrupt at the source, one line)."""
    from ptbr.errors import CorruptDataError

    source = tmp_path / "source"
    shutil.copytree(dataset, source)
    index = json.loads((source / "train" / "index.json").read_text())
    bad = source / "train" / index["shards"][1]["zip_data"]["basename"]
    body = bytearray(bad.read_bytes())
    body[len(body) // 2] ^= 0xFF
    bad.write_bytes(bytes(body))
    first_of_bad = index["shards"][0]["samples"]
    with isolated_environ():
        from ptbr.data import build_dataset, prepare_streaming_env

        prepare_streaming_env()
        ds = build_dataset(
            str(source),
            "train",
            cache_root=str(tmp_path / "cache"),
            batch_size=4,
            shuffle=False,
            seed=0,
            download_retry_s=0,
        )
        outcomes: list[BaseException | None] = []

        def read(dataset) -> None:
            try:
                dataset.get_item(first_of_bad)
                outcomes.append(None)
            except BaseException as exc:  # noqa: BLE001 - the outcome is what the test checks
                outcomes.append(exc)

        for _reader in range(2):  # the one whose download fails, then one that needs the same shard
            thread = threading.Thread(target=read, args=(ds,), daemon=True)
            thread.start()
            thread.join(timeout=30)
            assert not thread.is_alive(), "a reader of the shard whose download failed waits for ever"
        assert len(outcomes) == 2 and all(isinstance(e, CorruptDataError) for e in outcomes), outcomes
        assert all("corrupt at the source" in str(e) and bad.name in str(e) for e in outcomes)
        del ds
        gc.collect()
