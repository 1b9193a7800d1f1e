"""User errors of publishing against a real S3 server: one line 'ptbr: error: ...', exit code != 0, no traceback."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.data import assert_one_line_error, run_cli
from tests.helpers.data_fixtures import NO_IMDS


def test_missing_bucket_wrong_or_missing_credentials(s3_server, small) -> None:
    env = {**s3_server.env(), **NO_IMDS}
    ds = str(small["ds"])
    assert_one_line_error(
        run_cli("shards", "publish", ds, "s3://no-such-bucket/x", env=env), "bucket 'no-such-bucket' does not exist"
    )
    assert_one_line_error(run_cli("shards", "verify", "s3://no-such-bucket/x", env=env), "does not exist")
    s3_server.create_bucket("creds")
    wrong = {**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret-" + "x" * 20}
    line = assert_one_line_error(
        run_cli("shards", "publish", ds, "s3://creds/x", env=wrong), "rejected the credentials"
    )
    assert wrong["AWS_SECRET_ACCESS_KEY"] not in line and s3_server.secret_key not in line
    unknown = {**env, "AWS_ACCESS_KEY_ID": "nobody"}
    assert_one_line_error(run_cli("shards", "verify", "s3://creds/x", env=unknown), "rejected the credentials")
    none = {k: v for k, v in env.items() if not k.startswith("AWS_ACCESS") and k != "AWS_SECRET_ACCESS_KEY"}
    none.update(
        AWS_ACCESS_KEY_ID="",
        AWS_SECRET_ACCESS_KEY="",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_CONFIG_FILE="/nonexistent",
    )
    assert_one_line_error(run_cli("shards", "publish", ds, "s3://creds/x", env=none), "no usable S3 credentials")
    assert_one_line_error(run_cli("shards", "publish", ds, "s3://", env=env), "no bucket")
    assert_one_line_error(run_cli("shards", "verify", "s3://creds/never-published", env=env), "no manifest.json")


def test_publish_refuses_incomplete_local_build(s3_server, tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train").mkdir()
    env = {**s3_server.env(), **NO_IMDS}
    assert_one_line_error(
        run_cli("shards", "publish", str(tmp_path / "half"), "s3://creds/y", env=env), "no manifest.json"
    )
