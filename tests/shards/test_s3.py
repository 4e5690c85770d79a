"""Shards on object storage: a real S3 API (moto in server mode) on 127.0.0.1."""
from __future__ import annotations

import json
import os
import socket

import pytest

from laion_audio.shards import verify, write_shards

from .test_verify import cli
from .test_writer import tree_bytes

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def s3(monkeypatch):
    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing")
    fs.mkdir("corpus")
    try:
        yield endpoint, fs
    finally:
        server.stop()


def test_shards_on_s3_match_local_ones_and_verify_reads_them_back(records, tmp_path, s3):
    endpoint, fs = s3
    options = {"endpoint_url": endpoint}
    written, report = write_shards(records, "s3://corpus/webdataset_tar", samples_per_shard=8,
                                   storage_options=options, workers=2)
    assert report["totals"]["samples"] == len(records)
    write_shards(records, tmp_path / "local", samples_per_shard=8)
    local = tree_bytes(tmp_path / "local")

    remote = {p[len("corpus/webdataset_tar/"):] for p in fs.find("corpus/webdataset_tar")}
    assert remote == set(local)
    for rel, data in local.items():
        assert fs.cat_file(f"corpus/webdataset_tar/{rel}") == data, rel
    assert not [p for p in remote if ".tmp-" in p]

    result = verify("s3://corpus/webdataset_tar", storage_options=options)
    assert result.ok, result.problems
    assert result.totals["samples"] == len(records)

    # A rerun finds the uploaded tars complete and uploads nothing.
    _, again = write_shards(records, "s3://corpus/webdataset_tar", samples_per_shard=8,
                            storage_options=options)
    assert again["shards_written"] == 0

    # The CLI reaches the same bucket through --storage-option; damage is reported there too.
    sizes_key = "corpus/webdataset_tar/colobot/train/sizes.json"
    sizes = json.loads(fs.cat_file(sizes_key))
    sizes["0.tar"] += 1
    fs.pipe_file(sizes_key, json.dumps(sizes).encode())
    done = cli("verify", "s3://corpus/webdataset_tar", "--storage-option",
               f"endpoint_url={endpoint}")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "s3://corpus/webdataset_tar/colobot/train/0.tar: holds" in done.stdout
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"
