"""The one local cache of model folders: filled once per node, atomically, under a lock.

Teachers (converted GGUF, s3:// downloads) and students (s3:// weights and tokenizers,
CTranslate2 conversions) share it. Its place is one setting: the environment variable
DSBS_CACHE_DIR (default ~/.cache/dsbs), so every process of a pod (driver, Ray Train ranks,
Serve replicas) finds the same folder; on KubeRay point it at an emptyDir or PVC mount.

A folder is trusted only when complete (its marker, written last, lists every file and
size); it is filled in a staging folder beside it and renamed into place, by one process at a
time: the others wait on a file lock and find it ready. An s3:// prefix is cached under a key
of its objects' names, sizes and ETags, so a model re-published under the same prefix is
fetched again, never served stale; each object's copy is checked against its size and ETag
and fetched again when it does not match.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dsbs import storage
from dsbs.errors import NotFoundError
from dsbs.storage import StorageError

log = logging.getLogger(__name__)

CACHE_ENV = "DSBS_CACHE_DIR"
"""The environment variable naming the cache folder."""
DEFAULT_CACHE = "~/.cache/dsbs"

# Files a folder must hold before it is trusted; written last is the marker.
_READY_MARKER = "dsbs-converted.json"


def cache_root(cache_dir: str | None = None) -> Path:
    """The cache folder: `cache_dir` if given, else $DSBS_CACHE_DIR, else ~/.cache/dsbs."""
    return Path(os.path.expanduser(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE))


def fetch_folder(spec: str, cache_dir: str | None = None) -> str:
    """A local folder for a path or an s3:// prefix (downloaded once); hub ids pass through."""
    if storage.is_s3(spec):
        return str(download_s3(spec, cache_root(cache_dir)))
    return spec


def is_ready(folder: Path) -> bool:
    """True when `folder` holds every file its marker lists, at the listed size."""
    marker = folder / _READY_MARKER
    if not marker.is_file():
        return False
    try:
        expected = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError):
        return False
    return all(
        (folder / name).is_file() and (folder / name).stat().st_size == size
        for name, size in expected.items()
    )


@contextmanager
def _locked(target: Path) -> Iterator[None]:
    """An exclusive lock on `target` among this node's processes (a lock file beside it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def ensure_folder(target: Path, source: str, fill: Callable[[Path], None]) -> Path:
    """`target`, filled by `fill` unless it is ready already; one process fills it at a time.

    The others wait on the lock and, taking it, find the folder ready. `fill` writes into a
    staging folder beside `target`; its marker is written last and the folder renamed into
    place, so readers never see a half-written one.
    """
    if is_ready(target):
        return target
    with _locked(target):
        if is_ready(target):  # another process filled it while this one waited
            return target
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            fill(staging)
            sizes = {
                str(p.relative_to(staging)): p.stat().st_size
                for p in staging.rglob("*")
                if p.is_file()
            }
            marker = {"source": source, "files": sizes}
            (staging / _READY_MARKER).write_text(json.dumps(marker))
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def download_s3(prefix: str, root: Path) -> Path:
    """Downloads an s3:// prefix once per content into `root/s3/<key>` and returns that folder.

    The key covers the prefix and its objects' names, sizes and ETags: a re-published model
    gets a new folder. Files stream to disk (a shard of an 11B model is 5 GB).

    Raises:
        FileNotFoundError: when no file lies under the prefix.
    """
    objects = storage.list_objects(prefix)
    if not objects:
        raise NotFoundError(f"{prefix}: no files under this prefix")
    content = json.dumps([prefix, sorted(objects)])
    target = root / "s3" / hashlib.sha256(content.encode()).hexdigest()[:16]
    base = prefix.rstrip("/") + "/"

    def fill(staging: Path) -> None:
        for uri, size, etag in objects:
            fetch_object(uri, str(staging / uri.removeprefix(base)), size, etag)
        log.info("downloaded %d files from %s to %s", len(objects), prefix, target)

    return ensure_folder(target, prefix, fill)


DOWNLOAD_TRIES = 3
"""Downloads of one object before a copy that does not match it is an error."""


def fetch_object(uri: str, local: str, size: int, etag: str) -> None:
    """Downloads `uri` to `local` and checks it against the listing's size and ETag.

    A copy that does not match is fetched again, up to DOWNLOAD_TRIES times. A mismatch that
    repeats byte for byte is no transfer fault but an ETag that is not the MD5 this check
    computes (an uploader with uneven parts, a server that encrypts): accepted, with a warning.

    Raises:
        StorageError: when the copies keep differing from the object.
    """
    expected = etag.strip('"')
    seen: set[str] = set()
    problem = ""
    for attempt in range(1, DOWNLOAD_TRIES + 1):
        storage.download_file(uri, local)
        actual = Path(local).stat().st_size
        if actual != size:
            problem = f"has {actual} bytes, the object {size}"
        else:
            digest = storage.download_digest(uri, local, etag)
            if digest is None or digest == expected:
                return
            if digest in seen:
                log.warning("%s: ETag %s is not its MD5 (%s, twice); accepted", uri, etag, digest)
                return
            seen.add(digest)
            problem = f"has the digest {digest}, the object's ETag is {expected}"
        log.warning("%s: the download %s (try %d of %d)", uri, problem, attempt, DOWNLOAD_TRIES)
    raise StorageError(f"{uri}: the download {problem} after {DOWNLOAD_TRIES} tries")
