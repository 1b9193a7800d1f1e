"""End to end over a real S3 server: publish -> verify -> stream back every token; a changed remote never serves
stale samples; verify catches damaged shards; streaming with cache eviction and loader workers.
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.data import (
    assert_ok,
    assert_one_line_error,
    isolated_environ,
    run_cli,
)
from tests.helpers.data_fixtures import SEQ_LEN, local_samples


def test_publish_verify_and_stream_back_every_token(
    s3_server, dataset: Path, expected, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
            ds = build_dataset(url, split, cache_root=str(tmp_path / "cache"), batch_size=4, shuffle=False, seed=0)
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
        shuffled = build_dataset(url, "train", cache_root=str(tmp_path / "cache"), batch_size=4, shuffle=True, seed=3)
        ids = [it["sample_id"] for it in shuffled]
        assert sorted(ids) == list(range(len(expected["train"]))) and ids != sorted(ids)
        del shuffled
        gc.collect()


def test_changed_remote_gets_a_new_cache_and_never_stale_samples(
    s3_server, dataset: Path, dataset_b: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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


def test_stream_with_eviction_and_dataloader_workers(
    s3_server, dataset: Path, expected, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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

        ds = build_dataset(
            url,
            "train",
            cache_root=str(tmp_path / "cache"),
            batch_size=4,
            shuffle=False,
            seed=2,
            cache_limit=4 * biggest,
        )
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
