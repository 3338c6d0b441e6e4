"""Local and s3:// I/O for rows (jsonl, parquet, csv) and bytes, with atomic writes.

S3 credentials, region and endpoint come from the environment or an AWS profile, as boto3
and pyarrow read them (`AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, `AWS_ENDPOINT_URL_S3` /
`AWS_ENDPOINT_URL` for S3-compatible servers such as MinIO) - never from config files.

Atomic means a reader never sees a partial file under its final name: local writes go to a
temporary file in the same folder and are renamed over the target; an S3 object becomes
visible only when its upload completes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from dsbs.errors import DsbsError

CSV_FIELD_LIMIT = 64 * 2**20
"""Longest CSV field read, in characters (Python's own limit is 128 KiB)."""

Format = Literal["jsonl", "parquet", "csv"]
FORMATS: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".csv": "csv",
}


class StorageError(DsbsError, OSError):
    """A path that cannot be read or written, or a file in an unknown format."""


@dataclass(frozen=True)
class SourceRow:
    """One row as read from a file: the parsed data, or why it could not be parsed."""

    file: str
    """The file it came from."""
    line: int
    """1-based line in jsonl/csv; 1-based row number in parquet."""
    data: dict[str, Any] | None
    """The parsed row, or None when `error` says why not."""
    error: str | None = None
    """Why the row is bad (malformed JSON, not UTF-8, ...)."""
    raw: str = ""
    """The raw text of a bad row, for the quarantine file (undecodable bytes escaped)."""


def is_s3(uri: str) -> bool:
    """Whether `uri` names an S3 object or prefix."""
    return uri.startswith("s3://")


def absolute(uri: str) -> str:
    """An s3:// URI as it is; a local path made absolute (`~` expanded).

    Paths handed to Ray workers must be absolute: Ray Train runs its workers in a folder of
    its own, so a relative path would name a different place there.
    """
    if is_s3(uri):
        return uri
    return str(Path(uri).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    """Joins path parts for local paths and s3:// URIs alike."""
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket in s3 URI")
    return bucket, key


S3_MAX_ATTEMPTS = 10
"""Tries of one S3 call (boto3's standard retry mode, pyarrow's standard strategy) unless
AWS_MAX_ATTEMPTS says otherwise: about a minute of backoff, so a restarting S3 server or a
load balancer's blip is ridden out instead of failing a stage (RELIABILITY.md)."""


def s3_max_attempts() -> int:
    """S3_MAX_ATTEMPTS, or AWS_MAX_ATTEMPTS where set (the variable the AWS SDKs read)."""
    value = os.environ.get("AWS_MAX_ATTEMPTS", "")
    return int(value) if value.isdigit() and int(value) > 0 else S3_MAX_ATTEMPTS


@lru_cache(maxsize=4)
def _s3_client_for(endpoint: str | None) -> Any:
    import boto3
    from botocore.config import Config

    # boto3 reads credentials, profile and region itself; the endpoint is passed explicitly
    # so that older botocore releases without AWS_ENDPOINT_URL support behave the same.
    # botocore's default (legacy mode, 5 tries) gives up within seconds of a server restart.
    retries = {"mode": os.environ.get("AWS_RETRY_MODE") or "standard"}
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        config=Config(retries={**retries, "max_attempts": s3_max_attempts()}),
    )


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint from the environment, or None for AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_client() -> Any:
    """A boto3 S3 client configured from the environment."""
    return _s3_client_for(s3_endpoint())


def format_of(uri: str) -> Format:
    """The row format a path's extension names.

    Raises:
        StorageError: for an extension other than .jsonl/.json, .parquet or .csv.
    """
    suffix = Path(uri.rstrip("/")).suffix.lower()
    if suffix not in FORMATS:
        raise StorageError(f"{uri}: unknown format '{suffix}' (expected .jsonl, .parquet or .csv)")
    return FORMATS[suffix]


def exists(uri: str) -> bool:
    """Whether a file (or, for s3, an object) exists."""
    if not is_s3(uri):
        return Path(uri).exists()
    bucket, key = _split_s3(uri)
    from botocore.exceptions import ClientError

    try:
        s3_client().head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise StorageError(f"{uri}: {err}") from err
    return True


def list_files(uri: str) -> list[str]:
    """Files under a folder or s3:// prefix, recursively, sorted; a file lists as itself."""
    if not is_s3(uri):
        path = Path(uri)
        if path.is_file():
            return [str(path)]
        return sorted(str(p) for p in path.rglob("*") if p.is_file())
    bucket, key = _split_s3(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    names = [f"s3://{bucket}/{obj['Key']}" for obj in _listed(uri, bucket, prefix)]
    if not names and key and exists(uri):
        return [uri]
    return sorted(names)


def list_objects(uri: str) -> list[tuple[str, int, str]]:
    """(uri, size, ETag) of the object `uri` names or of every object under that prefix."""
    bucket, key = _split_s3(uri)
    prefix = key.rstrip("/")
    found = []
    for obj in _listed(uri, bucket, prefix):
        name = obj["Key"]
        if name == prefix or name.startswith(prefix + "/") or not prefix:
            found.append((f"s3://{bucket}/{name}", obj["Size"], obj["ETag"]))
    return sorted(found)


def _listed(uri: str, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every object S3 lists under `prefix`; a failed listing is a StorageError naming `uri`."""
    try:
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [obj for page in pages for obj in page.get("Contents", [])]
    except Exception as err:
        raise StorageError(f"{uri}: cannot list: {err}") from err


def download_file(uri: str, local: str) -> None:
    """Copies `uri` to the local path `local`, streaming (S3 downloads in parts)."""
    try:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        if is_s3(uri):
            bucket, key = _split_s3(uri)
            s3_client().download_file(bucket, key, local)
        else:
            shutil.copyfile(uri, local)
    except Exception as err:
        raise StorageError(f"{uri}: cannot read: {err}") from err


# An ETag that may be the MD5 of the content (single part) or of its parts' MD5s ("-N").
_MD5_ETAG = re.compile(r"[0-9a-f]{32}(-[0-9]+)?")


def download_digest(uri: str, local: str, etag: str) -> str | None:
    """The ETag `local` would have as the object `uri`, or None where S3's is no MD5 digest.

    Single-part ETags are the content's MD5; multipart ones the MD5 of the parts' MD5s, with
    the part size read from the object's first part (uploaders use one part size). Objects
    encrypted with KMS or customer keys have ETags that are not digests: None.
    """
    expected = etag.strip('"')
    if not is_s3(uri) or not _MD5_ETAG.fullmatch(expected):
        return None
    bucket, key = _split_s3(uri)
    multipart = "-" in expected
    # One HEAD: of the first part for a multipart object (its length is the part size), and
    # either way it carries the object's encryption headers.
    part = {"PartNumber": 1} if multipart else {}
    head = s3_client().head_object(Bucket=bucket, Key=key, **part)
    if str(head.get("ServerSideEncryption", "")).startswith("aws:kms") or head.get(
        "SSECustomerAlgorithm"
    ):
        return None
    if not multipart:
        return file_digest(local, "md5").hexdigest()
    part_size = head["ContentLength"]
    size = Path(local).stat().st_size
    parts = [file_digest(local, "md5", at, part_size).digest() for at in range(0, size, part_size)]
    return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"  # noqa: S324 - S3's ETag


def file_digest(
    local: str | Path, algorithm: str, offset: int = 0, length: int | None = None
) -> Any:
    """The `hashlib` digest of a local file (`length` bytes from `offset`; all of it by default).

    Read in 1 MiB chunks, so a model file of gigabytes never sits whole in memory.
    """
    # usedforsecurity=False: MD5 here is S3's ETag; a SHA-256 pins a file, it signs nothing.
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(local, "rb") as handle:
        handle.seek(offset)
        left = length
        while left is None or left > 0:
            chunk = handle.read(1 << 20 if left is None else min(1 << 20, left))
            if not chunk:
                break
            digest.update(chunk)
            if left is not None:
                left -= len(chunk)
    return digest


def fingerprint(uri: str) -> str | None:
    """A short digest of the files under `uri` as they are now, without reading them.

    Names, sizes and modification times (local) or ETags (S3): a replaced or appended input
    changes it, a rerun on the same files does not. None when `uri` is no file or folder (a
    hub dataset, or a path that does not exist yet: the stage reports that itself).
    """
    entries: list[tuple[str, int, str]] = []
    if is_s3(uri):
        prefix = uri.rstrip("/")
        entries = [(name[len(prefix) :], size, etag) for name, size, etag in list_objects(uri)]
    else:
        path = Path(uri).expanduser()
        if not path.exists():
            return None
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            stat = file.stat()
            entries.append((str(file.relative_to(path)), stat.st_size, str(stat.st_mtime_ns)))
    if not entries:
        return None
    text = json.dumps(sorted(entries))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_bytes(uri: str) -> bytes:
    """The whole content of a local file or S3 object.

    Raises:
        StorageError: when it is missing or unreadable.
    """
    try:
        if is_s3(uri):
            bucket, key = _split_s3(uri)
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return Path(uri).read_bytes()
    except Exception as err:
        raise StorageError(f"{uri}: cannot read: {err}") from err


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = _current_umask()


def write_bytes(uri: str, data: bytes) -> None:
    """Writes `data` atomically: the target holds either its old content or all of `data`.

    Raises:
        StorageError: when the write fails (disk full, a file size limit, S3 refusing).
    """
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        try:
            # upload_fileobj switches to multipart for large data; S3 publishes the object
            # only when the upload completes, so readers never see a part of it.
            s3_client().upload_fileobj(io.BytesIO(data), bucket, key)
        except Exception as err:
            raise StorageError(f"{uri}: cannot write: {err}") from err
        return
    path = Path(uri)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 less the
        # umask), so reports and exports stay readable by whoever may read the run directory.
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise StorageError(f"{uri}: cannot write: {err}") from err
        raise


def delete(uri: str) -> None:
    """Removes a file (or object); one that is not there is fine.

    Raises:
        StorageError: when the removal fails (a missing bucket, no permission).
    """
    try:
        if is_s3(uri):
            bucket, key = _split_s3(uri)
            s3_client().delete_object(Bucket=bucket, Key=key)
            return
        Path(uri).unlink(missing_ok=True)
    except Exception as err:
        raise StorageError(f"{uri}: cannot delete: {err}") from err


def upload_file(local: str, uri: str) -> None:
    """Copies a local file to `uri` without reading it into memory (checkpoint shards are GBs).

    S3 uploads in parts; a local target is written beside and renamed, like write_bytes.
    """
    try:
        if is_s3(uri):
            bucket, key = _split_s3(uri)
            s3_client().upload_file(local, bucket, key)
            return
        target = Path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(local, tmp)
        os.replace(tmp, target)
    except Exception as err:
        raise StorageError(f"{uri}: cannot write: {err}") from err


def iter_rows(uri: str) -> Iterator[SourceRow]:
    """Rows of one jsonl, csv or parquet file, bad ones included with the reason.

    A jsonl line that is not UTF-8 or not a JSON object, or a csv line with the wrong
    number of fields, comes back with `data=None` and an `error`, so that callers can
    quarantine it and go on. Blank jsonl lines are skipped. jsonl and parquet stream (a line,
    a row group at a time), so a file of millions of rows is never held whole.
    """
    fmt = format_of(uri)
    if fmt == "parquet":
        number = 0
        with _open_binary(uri) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=4096):
                for row in batch.to_pylist():
                    number += 1
                    yield SourceRow(uri, number, row)
    elif fmt == "csv":
        yield from _iter_csv(uri, read_bytes(uri))
    else:
        yield from _iter_jsonl(uri, _lines(uri))


def read_table(uri: str, schema: pa.Schema | None = None) -> pa.Table:
    """One parquet file as an arrow table, read column-wise (no Python object per value)."""
    with _open_binary(uri) as handle:
        try:
            return pq.read_table(handle, schema=schema)
        except Exception as err:
            raise StorageError(f"{uri}: not a readable parquet file: {err}") from err


@contextmanager
def _open_binary(uri: str) -> Iterator[Any]:
    """A seekable binary handle on a local file or S3 object (parquet reads its footer first)."""
    try:
        from pyarrow import fs

        filesystem, path = pyarrow_filesystem(uri)
        handle = (filesystem or fs.LocalFileSystem()).open_input_file(path)
    except Exception as err:
        raise StorageError(f"{uri}: cannot read: {err}") from err
    with handle:
        yield handle


def _lines(uri: str) -> Iterator[bytes]:
    """The lines of a local file or S3 object, without their line ends, as they stream in."""
    try:
        if is_s3(uri):
            bucket, key = _split_s3(uri)
            body = s3_client().get_object(Bucket=bucket, Key=key)["Body"]
            yield from body.iter_lines(keepends=False)
            return
        with open(uri, "rb") as handle:
            for line in handle:
                yield line.rstrip(b"\n")
    except StorageError:
        raise
    except Exception as err:
        raise StorageError(f"{uri}: cannot read: {err}") from err


def _iter_jsonl(uri: str, lines: Iterable[bytes]) -> Iterator[SourceRow]:
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            escaped = raw.decode("utf-8", errors="backslashreplace")
            yield SourceRow(uri, number, None, f"not UTF-8 (byte {err.start})", escaped)
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            yield SourceRow(uri, number, None, f"malformed JSON: {err.msg} (col {err.colno})", text)
            continue
        if not isinstance(row, dict):
            yield SourceRow(
                uri, number, None, f"expected a JSON object, got {type(row).__name__}", text
            )
            continue
        yield SourceRow(uri, number, row)


def _iter_csv(uri: str, data: bytes) -> Iterator[SourceRow]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        # csv has no reliable line framing inside quoted fields, so a bad byte fails the file.
        line = data[: err.start].count(b"\n") + 1
        raise StorageError(f"{uri}:{line}: not UTF-8 (byte {err.start})") from err
    # Python's csv stops at 128 KiB per field; a long document is a legitimate input.
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            line = reader.line_num
            if None in row or any(value is None for value in row.values()):
                raw = json.dumps(row, default=str)
                yield SourceRow(uri, line, None, "wrong number of fields", raw)
                continue
            yield SourceRow(uri, line, dict(row))
    except csv.Error as err:
        # The csv module cannot resume after a framing error, so it fails the file, by line.
        raise StorageError(f"{uri}:{reader.line_num}: malformed CSV: {err}") from err


def read_rows(uri: str) -> list[dict[str, Any]]:
    """All rows of a file, or of every row file under a folder/prefix, failing on a bad row.

    Raises:
        StorageError: naming file and line of the first bad row.
    """
    rows = []
    for file in row_files(uri):
        for row in iter_rows(file):
            if row.data is None:
                raise StorageError(f"{row.file}:{row.line}: {row.error}")
            rows.append(row.data)
    return rows


def row_files(uri: str) -> list[str]:
    """The row files of a file, folder or prefix, sorted.

    A file named directly may be .jsonl, .json (JSON lines), .parquet or .csv; in a folder only
    .jsonl, .parquet and .csv count, so that manifests and stats (.json) beside shards are not
    read as rows.

    Raises:
        StorageError: when there are none.
    """
    listed = list_files(uri)
    if listed == [uri]:
        files = [uri] if Path(uri).suffix.lower() in FORMATS else []
    else:
        files = [f for f in listed if Path(f).suffix.lower() in (".jsonl", ".parquet", ".csv")]
    if not files:
        raise StorageError(f"{uri}: no .jsonl, .parquet or .csv files found")
    return files


def encode_rows(
    rows: Iterable[dict[str, Any]], fmt: Format, schema: pa.Schema | None = None
) -> bytes:
    """Serialises rows to jsonl, parquet or csv bytes.

    Args:
        rows: dicts with the same keys.
        fmt: the output format.
        schema: an explicit arrow schema for parquet, so that all-null columns keep a type.
    """
    rows = list(rows)
    if fmt == "parquet":
        table = pa.Table.from_pylist(rows, schema=schema)
        sink = io.BytesIO()
        pq.write_table(table, sink)
        return sink.getvalue()
    if fmt == "csv":
        out = io.StringIO(newline="")
        fields = list(schema.names) if schema is not None else list(rows[0]) if rows else []
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().encode("utf-8")
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return text.encode("utf-8")


def write_rows(
    uri: str,
    rows: Iterable[dict[str, Any]],
    fmt: Format | None = None,
    schema: pa.Schema | None = None,
) -> None:
    """Writes rows atomically in the format the extension names (or `fmt`)."""
    write_bytes(uri, encode_rows(rows, fmt or format_of(uri), schema))


def pyarrow_filesystem(uri: str) -> tuple[Any, str]:
    """A pyarrow filesystem and path for `uri`, for Ray Data readers and writers.

    For s3:// the endpoint comes from the same environment variables boto3 uses, so Ray Data
    and this module always talk to the same server.
    """
    if not is_s3(uri):
        return None, uri
    from pyarrow import fs

    endpoint = s3_endpoint()
    options: dict[str, Any] = {}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        options = {"endpoint_override": host or scheme, "scheme": scheme if host else "https"}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    retry = fs.AwsStandardS3RetryStrategy(max_attempts=s3_max_attempts())
    return fs.S3FileSystem(retry_strategy=retry, **options), uri.removeprefix("s3://")
