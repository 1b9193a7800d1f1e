"""End to end: text -> tokenizer -> shards -> publish (real S3) -> verify -> stream back.

Every streamed token must equal a direct ``Tokenizer.encode`` of the documents the corpus files
contain (invalid UTF-8 replaced), split by the documented content-hash rule.
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ptbr.data.mds import decompress, read_samples
from tests.test_data_common import (
    as_samples,
    assert_ok,
    assert_one_line_error,
    direct_tokens,
    isolated_environ,
    run_cli,
    write_corpus,
)

SEQ_LEN = 32
VAL_FRACTION = 0.1
VOCAB = 400


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("corpus")
    return root, write_corpus(root)


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    proc = run_cli("tokenizer", "train", "--input", str(corpus[0]), "--output", str(out),
                   "--vocab-size", str(VOCAB))
    assert_ok(proc)
    assert "invalid UTF-8 sequences replaced: 4" in proc.stdout  # 2 files x b"\\xff\\xfe" = 4 U+FFFD
    assert "bad records skipped: 2" in proc.stdout
    return out


@pytest.fixture(scope="module")
def dataset(corpus, tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "dataset"
    proc = run_cli("shards", "build", "--input", str(corpus[0]), "--tokenizer", str(tokenizer), "--output",
                   str(out), "--seq-len", str(SEQ_LEN), "--val-fraction", str(VAL_FRACTION),
                   "--shard-size", "8kb", "--workers", "2")
    assert_ok(proc)
    return out


@pytest.fixture(scope="module")
def expected(corpus, tokenizer) -> dict[str, np.ndarray]:
    streams = direct_tokens(tokenizer, corpus[1], val_fraction=VAL_FRACTION, split_seed=0)
    return {k: as_samples(v, SEQ_LEN + 1) for k, v in streams.items()}


@pytest.fixture(scope="module")
def dataset_b(dataset, corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another dataset version: a copy of ``dataset`` rebuilt with --overwrite at seq_len 16."""
    out = tmp_path_factory.mktemp("dsb") / "dataset"
    shutil.copytree(dataset, out)
    args = ["shards", "build", "--input", str(corpus[0]), "--tokenizer", str(out / "tokenizer.json"), "--output",
            str(out), "--seq-len", "16", "--val-fraction", str(VAL_FRACTION), "--workers", "1", "--quiet"]
    refused = run_cli(*args)
    assert_one_line_error(refused, "not empty", "--overwrite")
    assert_ok(run_cli(*args, "--overwrite"))
    return out


def local_samples(dataset: Path, split: str) -> np.ndarray:
    """All samples of a local split, read without mosaicml-streaming."""
    manifest = json.loads((dataset / "manifest.json").read_text())
    index = json.loads((dataset / split / "index.json").read_text())
    parts = []
    for shard in index["shards"]:
        data = (dataset / split / shard["zip_data"]["basename"]).read_bytes()
        parts.append(read_samples(decompress(data, shard["compression"]), manifest["sample_len"],
                                  manifest["dtype"]))
    return np.concatenate(parts).astype(np.int64)


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


def test_build_manifest_and_tokens_match_direct_tokenization(dataset: Path, tokenizer: Path, corpus,
                                                            expected) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["vocab_size"] == VOCAB and manifest["seq_len"] == SEQ_LEN and manifest["eos_id"] == 0
    assert manifest["dtype"] == "uint16" and manifest["sample_len"] == SEQ_LEN + 1
    assert len(manifest["tokenizer"]["sha256"]) == 64 and len(manifest["dataset_hash"]) == 64
    assert [i["path"].rsplit("/", 1)[-1] for i in manifest["inputs"]] == ["a.txt", "b.jsonl.gz", "c.txt.zst",
                                                                          "e.jsonl"]
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
    proc = run_cli("shards", "build", "--input", str(corpus[0]), "--tokenizer", str(tokenizer), "--output",
                   str(dataset), "--seq-len", str(SEQ_LEN), "--val-fraction", str(VAL_FRACTION),
                   "--shard-size", "8kb", "--workers", "1")
    assert_ok(proc)
    assert "up to date" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == before


def test_overwrite_builds_another_version(dataset_b: Path, dataset: Path) -> None:
    a = json.loads((dataset / "manifest.json").read_text())
    b = json.loads((dataset_b / "manifest.json").read_text())
    assert b["seq_len"] == 16 and b["dataset_hash"] != a["dataset_hash"]
    assert sorted(p.name for p in dataset_b.iterdir()) == ["manifest.json", "tokenizer.json", "train", "val"]
    assert local_samples(dataset_b, "train").shape[1] == 17


def test_publish_verify_and_stream_back_every_token(s3_server, dataset: Path, expected, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    s3_server.create_bucket("e2e")
    env = s3_server.env()
    url = "s3://e2e/ptbr/v1"
    proc = run_cli("shards", "publish", str(dataset), url, "--jobs", "4", env=env)
    assert_ok(proc)
    assert "skipped 0" in proc.stdout and "_SUCCESS" in proc.stdout
    assert env["AWS_SECRET_ACCESS_KEY"] not in proc.stdout + proc.stderr
    assert_ok(run_cli("shards", "verify", url, env=env))

    again = run_cli("shards", "publish", str(dataset), url, "--json", env=env)
    assert_ok(again)
    report = json.loads(again.stdout)
    assert report["uploaded"] == 0 and report["skipped"] == report["objects"]

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with isolated_environ():
        from ptbr.data import build_dataset, prepare_streaming_env, read_manifest

        prepare_streaming_env()
        manifest = read_manifest(url)
        assert manifest["dataset_hash"] == json.loads((dataset / "manifest.json").read_text())["dataset_hash"]
        for split in ("train", "val"):
            ds = build_dataset(url, split, cache_root=str(tmp_path / "cache"), batch_size=4, shuffle=False,
                               seed=0)
            items = list(ds)
            assert [it["sample_id"] for it in items] == list(range(len(expected[split])))
            first = items[0]
            assert first["input"].dtype == first["target"].dtype == __import__("torch").int64
            assert first["input"].shape == first["target"].shape == (SEQ_LEN,)
            got = np.stack([np.concatenate([it["input"].numpy(), it["target"].numpy()[-1:]]) for it in items])
            np.testing.assert_array_equal(got, expected[split])
            for it in items[:50]:
                np.testing.assert_array_equal(it["input"].numpy()[1:], it["target"].numpy()[:-1])
            del ds, items
            gc.collect()
        shuffled = build_dataset(url, "train", cache_root=str(tmp_path / "cache"), batch_size=4, shuffle=True,
                                 seed=3)
        ids = [it["sample_id"] for it in shuffled]
        assert sorted(ids) == list(range(len(expected["train"]))) and ids != sorted(ids)
        del shuffled
        gc.collect()


def test_resume_continues_exactly_and_refuses_iterated_dataset(dataset: Path, tmp_path: Path) -> None:
    from ptbr.errors import DataError

    with isolated_environ():
        from ptbr.data import build_dataset, prepare_streaming_env

        prepare_streaming_env()

        def fresh():
            return build_dataset(str(dataset), "train", cache_root=str(tmp_path / "cache"), batch_size=4,
                                 shuffle=True, seed=11, num_canonical_nodes=2)

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


def test_changed_remote_gets_a_new_cache_and_never_stale_samples(s3_server, dataset: Path, dataset_b: Path,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    s3_server.create_bucket("versions")
    env = s3_server.env()
    url = "s3://versions/ds"
    assert_ok(run_cli("shards", "publish", str(dataset), url, "--quiet", env=env))
    refused = run_cli("shards", "publish", str(dataset_b), url, "--quiet", env=env)
    assert_one_line_error(refused, "already holds dataset", "--force")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cache = tmp_path / "cache"
    with isolated_environ():
        from ptbr.data import build_dataset, dataset_cache_dir, read_manifest

        first = build_dataset(url, "val", cache_root=str(cache), batch_size=2, shuffle=False, seed=0)
        a_samples = np.stack([it["input"].numpy() for it in first])
        cache_a = dataset_cache_dir(cache, first.manifest, "val")
        del first
        gc.collect()
        assert_ok(run_cli("shards", "publish", str(dataset_b), url, "--force", "--quiet", env=env))
        assert_ok(run_cli("shards", "verify", url, "--quiet", env=env))
        second = build_dataset(url, "val", cache_root=str(cache), batch_size=2, shuffle=False, seed=0)
        assert dataset_cache_dir(cache, read_manifest(url), "val") != cache_a
        b_samples = np.stack([it["input"].numpy() for it in second])
        del second
        gc.collect()
    assert a_samples.shape[1] == SEQ_LEN and b_samples.shape[1] == 16
    np.testing.assert_array_equal(b_samples, local_samples(dataset_b, "val")[:, :-1])


def test_verify_catches_truncated_and_corrupted_shards(s3_server, dataset: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    shards = sorted((broken / "train").glob("shard.*.mds.zstd"))
    truncated, corrupted = shards[1], shards[2]
    truncated.write_bytes(truncated.read_bytes()[:-7])
    data = bytearray(corrupted.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    proc = run_cli("shards", "verify", str(broken), "--quiet")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"train/{truncated.name}" in proc.stderr and "truncated" in proc.stderr
    assert f"train/{corrupted.name}" in proc.stderr and "hash mismatch" in proc.stderr
    assert "2 problem(s)" in proc.stderr

    # the same on S3: publish the good dataset, then overwrite one object behind ptbr's back
    s3_server.create_bucket("corrupt")
    env = s3_server.env()
    assert_ok(run_cli("shards", "publish", str(dataset), "s3://corrupt/x", "--quiet", env=env))
    s3_server.client().put_object(Bucket="corrupt", Key=f"x/train/{corrupted.name}", Body=bytes(data))
    remote = run_cli("shards", "verify", "s3://corrupt/x", "--quiet", env=env)
    assert remote.returncode == 1 and f"train/{corrupted.name}" in remote.stderr
    assert "hash mismatch" in remote.stderr

    # a token id beyond the vocabulary (manifest claims a smaller vocabulary than the shards use)
    small = tmp_path / "small-vocab"
    shutil.copytree(dataset, small)
    manifest = json.loads((small / "manifest.json").read_text())
    manifest["vocab_size"] = 100
    (small / "manifest.json").write_text(json.dumps(manifest))
    vocab = run_cli("shards", "verify", str(small), "--quiet")
    assert vocab.returncode == 1 and ">= vocab size 100" in vocab.stderr


def test_stream_with_eviction_and_dataloader_workers(s3_server, dataset: Path, expected, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache smaller than the dataset (shards evicted and fetched again) read by 2 loader workers."""
    import torch

    s3_server.create_bucket("evict")
    env = s3_server.env()
    url = "s3://evict/ds"
    assert_ok(run_cli("shards", "publish", str(dataset), url, "--quiet", env=env))
    index = json.loads((dataset / "train" / "index.json").read_text())
    biggest = max(s["raw_data"]["bytes"] + s["zip_data"]["bytes"] for s in index["shards"])
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with isolated_environ():
        from ptbr.data import build_dataset

        ds = build_dataset(url, "train", cache_root=str(tmp_path / "cache"), batch_size=4, shuffle=False, seed=2,
                           cache_limit=4 * biggest)
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
        ids, rows = [], []
        for batch in loader:
            ids.extend(batch["sample_id"].tolist())
            rows.append(torch.cat([batch["input"], batch["target"][:, -1:]], dim=1).numpy())
        del ds, loader
        gc.collect()
    got = np.concatenate(rows)
    assert sorted(ids) == list(range(len(expected["train"])))
    np.testing.assert_array_equal(got, expected["train"][ids])
    cached = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("shard.*"))
    assert cached <= 4 * biggest


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
        ds = build_dataset(str(source), "train", cache_root=str(tmp_path / "cache"), batch_size=4, shuffle=False,
                           seed=0, download_retry_s=0)
        read = []
        with pytest.raises(CorruptDataError) as info:
            read.extend(it["sample_id"] for it in ds)
        assert "shard.00001" in str(info.value) and "missing" in str(info.value) and "\n" not in str(info.value)
        assert len(read) < ds.num_samples
        del ds
        gc.collect()
