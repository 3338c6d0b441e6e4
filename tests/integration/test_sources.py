"""Input sources through a real local Ray: row files (local and s3://) and HF datasets."""

import pytest

from dsbs import storage
from dsbs.data.sources import is_hf_source, load_hf, read_dataset, read_source_rows

ROWS = [{"input": f"Q{i}?", "label": f"( {i}.0 + 1.0 )"} for i in range(20)]

pytestmark = pytest.mark.slow


@pytest.fixture
def hf_folder(tmp_path):
    import datasets

    dataset = datasets.Dataset.from_list(ROWS)
    plain = tmp_path / "hf_plain"
    dataset.save_to_disk(str(plain))
    split = tmp_path / "hf_dict"
    datasets.DatasetDict({"train": dataset, "test": dataset.select(range(5))}).save_to_disk(
        str(split)
    )
    return plain, split


def test_hf_save_to_disk_folders_via_datasets(hf_folder):
    plain, split = hf_folder
    assert is_hf_source(str(plain)) and is_hf_source(str(split)) and is_hf_source("hf:org/name")
    assert read_source_rows(str(plain)) == ROWS
    assert len(load_hf(str(split), "test")) == 5
    with pytest.raises(ValueError, match="no split 'valid'"):
        load_hf(str(split), "valid")


def test_hf_folder_via_ray_data(ray_cluster, hf_folder):
    plain, split = hf_folder
    assert sorted(read_dataset(str(plain)).take_all(), key=lambda r: r["input"]) == sorted(
        ROWS, key=lambda r: r["input"]
    )
    assert read_dataset(str(split), "test").count() == 5


@pytest.mark.parametrize("ext", ["jsonl", "parquet", "csv"])
def test_row_files_via_ray_data(ray_cluster, tmp_path, ext):
    storage.write_rows(str(tmp_path / "in" / f"a.{ext}"), ROWS[:10])
    storage.write_rows(str(tmp_path / "in" / f"b.{ext}"), ROWS[10:])
    rows = read_dataset(str(tmp_path / "in")).take_all()
    assert sorted(rows, key=lambda r: r["input"]) == sorted(ROWS, key=lambda r: r["input"])


def test_s3_prefix_via_ray_data(ray_cluster, s3_bucket):
    storage.write_rows(f"{s3_bucket}/in/a.parquet", ROWS[:10])
    storage.write_rows(f"{s3_bucket}/in/b.parquet", ROWS[10:])
    assert read_dataset(f"{s3_bucket}/in").count() == 20


def test_mixed_formats_are_refused(tmp_path):
    storage.write_rows(str(tmp_path / "in" / "a.jsonl"), ROWS)
    storage.write_rows(str(tmp_path / "in" / "b.csv"), ROWS)
    with pytest.raises(storage.StorageError, match="mixes formats"):
        read_dataset(str(tmp_path / "in"))
