"""A local cache of model folders: written once, atomically, and trusted only when complete.

Teachers (converted GGUF, s3:// downloads) and students (s3:// weights and tokenizers) share it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from dsbs import storage

log = logging.getLogger(__name__)

# Files a folder must hold before it is trusted; written last is the marker.
_READY_MARKER = "dsbs-converted.json"


def cache_root(cache_dir: str) -> Path:
    """The cache folder, with `~` expanded."""
    return Path(os.path.expanduser(cache_dir))


def fetch_folder(spec: str, cache_dir: str = "~/.cache/dsbs") -> str:
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


def publish(target: Path, source: str, fill: Callable[[Path], None]) -> None:
    """Fills a staging folder beside `target`, marks it ready, and renames it into place.

    Readers never see a half-written folder: `is_ready` trusts only a folder whose marker
    lists every file with its size, and the marker is written last.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        fill(staging)
        sizes = {
            str(p.relative_to(staging)): p.stat().st_size for p in staging.rglob("*") if p.is_file()
        }
        (staging / _READY_MARKER).write_text(json.dumps({"source": source, "files": sizes}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def download_s3(prefix: str, root: Path) -> Path:
    """Downloads an s3:// prefix once into `root/s3/<digest>` and returns that folder.

    Raises:
        FileNotFoundError: when no file lies under the prefix.
    """
    digest = hashlib.sha256(prefix.encode()).hexdigest()[:16]
    target = root / "s3" / digest
    if is_ready(target):
        return target
    files = storage.list_files(prefix)
    if not files:
        raise FileNotFoundError(f"{prefix}: no files under this prefix")
    base = prefix.rstrip("/") + "/"

    def fill(staging: Path) -> None:
        for uri in files:
            local = staging / uri.removeprefix(base)
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(storage.read_bytes(uri))

    publish(target, prefix, fill)
    log.info("downloaded %d files from %s to %s", len(files), prefix, target)
    return target
