"""Where training checkpoints go and come back from, and which of their files a rank reads.

The loop (loop.py) saves a DeepSpeed checkpoint into a local folder and hands it to a
`CheckpointStore`: Ray Train's storage in trainer.py, or `FolderCheckpoints` (`root/step<N>/`,
local, shared or s3://) for a run without Ray Train. Resuming, each rank fetches only its own
ZeRO partitions (`rank_files`).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from dsbs import storage

STATE_FILE = "dsbs_state.json"
"""Loop state saved beside DeepSpeed's files in every checkpoint: step and metric history."""


class CheckpointStore(Protocol):
    """Where checkpoints go and come back from."""

    def latest(self) -> AbstractContextManager[str | None]:
        """A local folder holding (at least) this rank's files of the latest checkpoint."""
        ...

    def save(self, folder: str, step: int, metrics: dict[str, float]) -> None:
        """Keeps this rank's part of a checkpoint written to `folder` (every rank calls it)."""
        ...


_RANK_FILE = re.compile(r"zero_pp_rank_(\d+)_")


def rank_files(names: Sequence[str], rank: int) -> list[str]:
    """The files of a checkpoint one rank reads to resume: none of another rank's shards.

    DeepSpeed names each rank's optimizer partition (and, under ZeRO-3, its parameter
    partition) `..zero_pp_rank_<rank>_..`; everything else (`latest`, the ZeRO-2 model
    states, dsbs's state) every rank reads. At 11B on 8 ranks that is an eighth of the
    folder instead of all of it.
    """
    keep = []
    for name in names:
        match = _RANK_FILE.search(os.path.basename(name))
        if match is None or int(match.group(1)) == rank:
            keep.append(name)
    return keep


@contextmanager
def rank_checkpoint(filesystem: Any, path: str, rank: int) -> Iterator[str]:
    """A local folder with this rank's files of the checkpoint at (pyarrow filesystem, path).

    A local checkpoint is read where it is; a remote one is downloaded file by file, only the
    files this rank reads (rank_files).
    """
    from pyarrow import fs

    if filesystem is None or isinstance(filesystem, fs.LocalFileSystem):
        yield path
        return
    infos = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    names = [i.path for i in infos if i.type == fs.FileType.File]
    with tempfile.TemporaryDirectory() as folder:
        for name in rank_files(names, rank):
            target = os.path.join(folder, os.path.relpath(name, path))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fs.copy_files(
                name,
                target,
                source_filesystem=filesystem,
                destination_filesystem=fs.LocalFileSystem(),
            )
        yield folder


class FolderCheckpoints:
    """Checkpoints in `root/step<N>/` (local, shared or s3://) for a run without Ray Train.

    A checkpoint counts once its state file is there: rank 0 writes it after every rank has
    copied its shards. `resume_from` (a checkpoint folder) is used when `root` holds none.
    """

    def __init__(self, root: str, rank: int, resume_from: str | None = None) -> None:
        """Nothing is read or written until a checkpoint is asked for or saved."""
        self.root, self.rank, self.resume_from = root, rank, resume_from

    @contextmanager
    def latest(self) -> Iterator[str | None]:
        """The newest complete checkpoint under root, else resume_from, else None."""
        done = [
            name.removesuffix("/" + STATE_FILE)
            for name in storage.list_files(self.root)
            if name.endswith("/" + STATE_FILE)
        ]
        steps = {int(m.group(1)): d for d in done if (m := re.search(r"step(\d+)$", d))}
        chosen = steps[max(steps)] if steps else self.resume_from
        if chosen is None:
            yield None
            return
        filesystem, path = storage.pyarrow_filesystem(chosen)
        with rank_checkpoint(filesystem, path, self.rank) as folder:
            yield folder

    def save(self, folder: str, step: int, metrics: dict[str, float]) -> None:
        """Copies this rank's files to root/step<N>; rank 0 writes the state file last."""
        import torch.distributed as dist

        target = storage.join(self.root, f"step{step}")
        for dirpath, _, names in os.walk(folder):
            for name in names:
                if name == STATE_FILE:
                    continue
                local = os.path.join(dirpath, name)
                storage.upload_file(local, storage.join(target, os.path.relpath(local, folder)))
        dist.barrier()
        if self.rank == 0:
            storage.upload_file(os.path.join(folder, STATE_FILE), storage.join(target, STATE_FILE))
