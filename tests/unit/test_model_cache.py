"""The node's model cache: one setting for its place, one download per content, safe to race.

Real processes (spawned, as 8 training ranks or several Serve replicas on one node are) and
the test S3 server.
"""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path

from dsbs import storage
from dsbs.model_cache import CACHE_ENV, cache_root, download_s3, fetch_folder


def _fetch(prefix: str, root: str, log_file: str) -> str:
    handler = logging.FileHandler(log_file)
    logging.getLogger("dsbs").addHandler(handler)
    logging.getLogger("dsbs").setLevel(logging.INFO)
    folder = download_s3(prefix, Path(root))
    handler.close()
    return str(folder)


def _publish(prefix: str, version: str) -> None:
    for i in range(3):
        storage.write_bytes(f"{prefix}/shard-{i}.bin", f"{version}:{i}".encode() * 50_000)
    storage.write_bytes(f"{prefix}/nested/config.json", f'{{"version": "{version}"}}'.encode())


def test_processes_fetching_one_prefix_at_once_share_one_download(s3_bucket, tmp_path):
    """They raced: each downloaded, and one's rename failed under another's reader."""
    prefix = f"{s3_bucket}/models/student"
    _publish(prefix, "a")
    logs = [str(tmp_path / f"p{i}.log") for i in range(4)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        folders = pool.starmap(_fetch, [(prefix, str(tmp_path / "cache"), log) for log in logs])
    assert len(set(folders)) == 1
    folder = Path(folders[0])
    assert (folder / "nested" / "config.json").read_text() == '{"version": "a"}'
    assert (folder / "shard-2.bin").read_bytes() == b"a:2" * 50_000
    downloads = sum(Path(log).read_text().count("downloaded 4 files") for log in logs)
    assert downloads == 1
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".") and p.is_dir()]


def test_a_model_re_published_under_the_same_prefix_is_fetched_again(s3_bucket, tmp_path):
    """The cache was keyed by the prefix alone: nodes that had it served the old model."""
    prefix = f"{s3_bucket}/models/re-published"
    _publish(prefix, "old")
    first = download_s3(prefix, tmp_path)
    assert download_s3(prefix, tmp_path) == first  # unchanged: no second download
    _publish(prefix, "new")
    second = download_s3(prefix, tmp_path)
    assert second != first
    assert (second / "nested" / "config.json").read_text() == '{"version": "new"}'


def test_one_setting_places_the_cache(monkeypatch, tmp_path, s3_bucket):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "pod-volume"))
    assert cache_root() == tmp_path / "pod-volume"
    assert cache_root(str(tmp_path / "given")) == tmp_path / "given"
    prefix = f"{s3_bucket}/models/placed"
    _publish(prefix, "v")
    assert fetch_folder(prefix).startswith(str(tmp_path / "pod-volume"))
    monkeypatch.delenv(CACHE_ENV)
    assert cache_root() == Path.home() / ".cache" / "dsbs"
