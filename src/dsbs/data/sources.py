"""Input sources for the stages: row files (local or s3://) and Hugging Face datasets.

A source string is one of:
- a jsonl/parquet/csv file, or a folder/prefix of them, local or `s3://`;
- `hf:NAME[:CONFIG][@SPLIT]`, a dataset on the Hugging Face hub (for users with a network);
- a folder written by `datasets.Dataset.save_to_disk` (or `DatasetDict.save_to_disk`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsbs import storage
from dsbs.errors import InputError

if TYPE_CHECKING:
    import datasets
    import ray.data

HF_PREFIX = "hf:"


def is_hf_source(source: str) -> bool:
    """Whether `source` is a hub dataset or a `save_to_disk` folder."""
    if source.startswith(HF_PREFIX):
        return True
    path = Path(source)
    # save_to_disk writes state.json (a Dataset) or dataset_dict.json (a DatasetDict).
    return not storage.is_s3(source) and (
        (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()
    )


def load_hf(source: str, split: str = "train") -> datasets.Dataset:
    """A Hugging Face dataset from the hub (`hf:NAME[:CONFIG][@SPLIT]`) or a disk folder.

    Args:
        source: the source string.
        split: the split to take from a DatasetDict when the source names none.

    Raises:
        ValueError: when the split is not in the dataset.
    """
    import datasets

    if source.startswith(HF_PREFIX):
        spec, _, named_split = source.removeprefix(HF_PREFIX).partition("@")
        name, _, config = spec.partition(":")
        return datasets.load_dataset(name, config or None, split=named_split or split)
    loaded = datasets.load_from_disk(source)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise InputError(f"{source}: no split '{split}' (has {', '.join(loaded)})")
        return loaded[split]
    return loaded


def read_source_rows(source: str, split: str = "train") -> list[dict[str, Any]]:
    """All rows of a source as dicts (small data and tests; stages stream with Ray Data)."""
    if is_hf_source(source):
        return list(load_hf(source, split))
    return storage.read_rows(source)


def read_dataset(source: str, split: str = "train") -> ray.data.Dataset:
    """A Ray Dataset over a source, streaming files through Ray Data's readers.

    s3:// goes through a pyarrow filesystem built from the same environment as boto3.
    """
    import ray.data

    if is_hf_source(source):
        return ray.data.from_huggingface(load_hf(source, split))
    files = storage.row_files(source)
    formats = {storage.format_of(f) for f in files}
    if len(formats) > 1:
        raise storage.StorageError(f"{source}: mixes formats {sorted(formats)}; use one")
    filesystem, _ = storage.pyarrow_filesystem(source)
    paths = [storage.pyarrow_filesystem(f)[1] for f in files]
    readers = {
        "jsonl": ray.data.read_json,
        "parquet": ray.data.read_parquet,
        "csv": ray.data.read_csv,
    }
    return readers[formats.pop()](paths, filesystem=filesystem)


def iter_source_rows(source: str, split: str = "train") -> Iterator[storage.SourceRow]:
    """Every row of a source in a stable order, bad ones included with the reason.

    Files stream one at a time (in name order); an HF dataset's rows are numbered from 1.
    """
    if is_hf_source(source):
        for number, row in enumerate(load_hf(source, split), start=1):
            yield storage.SourceRow(source, number, dict(row))
        return
    for file in storage.row_files(source):
        yield from storage.iter_rows(file)
