"""Training data on storage: the splits written once as parquet shards, read back as streams.

    records (train.data or this run's rationales; train.test_data)
      -> [driver, one streaming pass] example per mode (skipped rows counted by reason),
         split by a hash of (seed, id), training rows subsampled
      -> OUT/data/{train,valid,test}/part-NNNNN.parquet, then OUT/data/manifest.json

The manifest is written last and lists the shards, so a rerun reads it instead of splitting
again and a reader never picks up a shard of an interrupted write. No process holds the
dataset whole: the driver keeps one shard's rows per split, workers stream their share
(Ray Data in the Ray Train shell, `ParquetShards` in a plain `torch.distributed` run).
Pure: no Ray, no torch.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

import pyarrow as pa

from dsbs import storage
from dsbs.config import TrainConfig
from dsbs.records import iter_records
from dsbs.rundir import read_json, write_json
from dsbs.student.export import LABEL_PREFIX, RATIONALE_PREFIX
from dsbs.train.examples import Example, split_of, to_example

SPLITS = ("train", "valid", "test")
SHARD_ROWS = 10_000
"""Rows per parquet shard: the most the driver buffers per split, and Ray Data's unit of
parallel reading and of block-order shuffling."""
MIN_PASS_ROWS = 16_384
"""Rows per pass over the training data below which the training rows are repeated within
the pass (see pass_copies)."""
EXAMPLE_SCHEMA = pa.schema([(f.name, pa.string()) for f in fields(Example)])


@dataclass(frozen=True)
class SplitManifest:
    """What `write_splits` wrote: rows per split, skipped rows by reason, and the shards."""

    rows: dict[str, int]
    skipped: dict[str, int]
    files: dict[str, list[str]]


class _ShardWriter:
    """Buffers one split's examples and writes them as parquet shards of SHARD_ROWS rows."""

    def __init__(self, folder: str) -> None:
        self.folder, self.rows, self.files = folder, 0, list[str]()
        self.buffer: list[dict[str, str]] = []

    def add(self, example: Example) -> None:
        self.buffer.append(asdict(example))
        self.rows += 1
        if len(self.buffer) >= SHARD_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        path = storage.join(self.folder, f"part-{len(self.files):05d}.parquet")
        storage.write_rows(path, self.buffer, "parquet", EXAMPLE_SCHEMA)
        self.files.append(path)
        self.buffer = []


def write_splits(train: TrainConfig, source: str, data_dir: str) -> SplitManifest:
    """Writes the examples of `source` as split parquet shards under `data_dir`, once.

    Args:
        train: the mode, label source, split fractions, subsample, seed and test data.
        source: the records to learn from (a file, folder or s3:// prefix).
        data_dir: where the shards and the manifest go (local or s3://).

    Returns:
        The manifest (read back when an earlier run wrote it).

    Raises:
        StorageError: on an unreadable source or a malformed row, naming file and line.
    """
    manifest_path = storage.join(data_dir, "manifest.json")
    existing = read_json(manifest_path)
    if existing is not None:
        return SplitManifest(**existing)
    writers = {split: _ShardWriter(storage.join(data_dir, split)) for split in SPLITS}
    skipped: Counter[str] = Counter()
    # With an explicit test set, no rows are held out for testing.
    test_share = 0.0 if train.test_data else train.test_fraction
    for record in iter_records(source):
        example = to_example(record, train.mode, train.label_source)
        if isinstance(example, str):
            skipped[example] += 1
            continue
        split = split_of(example.id, train.valid_fraction, test_share, train.subsample, train.seed)
        if split is not None:
            writers[split].add(example)
    if train.test_data:
        # The test set is scored against gold labels: every labeled row counts, whatever the mode.
        for record in iter_records(train.test_data):
            example = to_example(record, "standard_finetune", "gold")
            if not isinstance(example, str):
                writers["test"].add(example)
    for writer in writers.values():
        writer.flush()
    manifest = SplitManifest(
        rows={split: w.rows for split, w in writers.items()},
        skipped=dict(sorted(skipped.items())),
        files={split: w.files for split, w in writers.items()},
    )
    write_json(manifest_path, asdict(manifest))
    return manifest


def read_examples(files: list[str]) -> Iterator[Example]:
    """The examples of parquet shards, streamed a row group at a time."""
    for file in files:
        for row in storage.iter_rows(file):
            if row.data is not None:  # shards written by write_splits have no bad rows
                yield Example(**row.data)


def read_table(file: str) -> pa.Table:
    """One shard as an arrow table (at most SHARD_ROWS rows)."""
    return storage.read_table(file, EXAMPLE_SCHEMA)


def read_shards(batch: pa.Table) -> pa.Table:
    """A Ray Data batch of shard paths (column `file`) -> the shards' rows."""
    return pa.concat_tables([read_table(str(f)) for f in batch.column("file").to_pylist()])


def split_examples(manifest: SplitManifest, split: str) -> list[Example]:
    """Every row of a split, in id order: the same list on every rank.

    Evaluation needs that (each rank scores its slice of it); validation and test sets are
    small enough to hold.
    """
    return sorted(read_examples(manifest.files[split]), key=lambda e: e.id)


def tokenizer_texts(manifest: SplitManifest, sample_rows: int) -> list[str]:
    """The texts a tokenizer is trained on: an even sample of at most `sample_rows` training rows.

    Every k-th row, so the sample spans all shards; memory is bounded by the sample, not the
    dataset.
    """
    stride = max(1, -(-manifest.rows["train"] // sample_rows))
    texts: list[str] = []
    for i, example in enumerate(read_examples(manifest.files["train"])):
        if i % stride:
            continue
        texts += [
            LABEL_PREFIX + example.input,
            RATIONALE_PREFIX + example.input,
            example.target_label,
        ]
        if example.rationale:
            texts.append(example.rationale)
    return texts


def pass_copies(train_rows: int, train: TrainConfig) -> int:
    """How many times one pass over the data holds the training rows.

    Every pass over a Ray Data dataset starts a new streaming execution, which costs about a
    second per worker: as much as a whole epoch of a small dataset (the paper's SVAMP has 800
    rows). Small datasets are therefore repeated within a pass, to at least MIN_PASS_ROWS rows
    (never more epochs than the run needs). The copies are read again, not held in memory.
    """
    if not train_rows:
        return 1
    per_step = train.num_workers * train.micro_batch_size * train.grad_accum_steps
    needed = -(-train.max_steps * per_step // train_rows)
    return max(1, min(needed, -(-MIN_PASS_ROWS // train_rows)))


class ParquetShards:
    """One rank's share of the split shards, for a plain `torch.distributed` run (no Ray).

    Rank r takes every world-th row, and every rank the same number of rows (the remainder is
    left out of the pass), so all ranks run the same number of steps.
    """

    def __init__(self, manifest: SplitManifest, train: TrainConfig, rank: int, world: int) -> None:
        """Reads nothing yet: each pass streams the shards again."""
        self.manifest, self.train, self.rank, self.world = manifest, train, rank, world

    def epoch(self, seed: int) -> Iterator[dict[str, list[str]]]:
        """One pass of this rank's rows, shuffled through a bounded buffer, in fetched batches."""
        rng = random.Random(seed)  # noqa: S311 - data order, not security
        fetch = self.train.micro_batch_size * self.train.length_grouping
        rows = self.manifest.rows["train"]
        buffer: list[Example] = []
        batch: list[Example] = []
        for _ in range(pass_copies(rows, self.train)):
            files = list(self.manifest.files["train"])
            rng.shuffle(files)
            for i, example in enumerate(read_examples(files)):
                if i % self.world != self.rank or i >= rows - rows % self.world:
                    continue
                buffer.append(example)
                if len(buffer) < self.train.shuffle_buffer_rows:
                    continue
                batch.append(buffer.pop(rng.randrange(len(buffer))))
                if len(batch) == fetch:
                    yield _columns(batch)
                    batch = []
        rng.shuffle(buffer)
        for example in buffer:
            batch.append(example)
            if len(batch) == fetch:
                yield _columns(batch)
                batch = []
        if batch:
            yield _columns(batch)

    def examples(self, split: str) -> list[Example]:
        """Every row of a validation or test split, in id order (the same list on every rank)."""
        return split_examples(self.manifest, split)


def _columns(examples: list[Example]) -> dict[str, list[str]]:
    return {f.name: [getattr(e, f.name) for e in examples] for f in fields(Example)}
