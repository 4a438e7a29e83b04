"""The on-disk format: a JSON header that names and sizes every data file.

An index is a directory. `header.json` is the commit point: it lists each data
file with its byte size (and a CRC32 for the small ones). Writers put new files
under temporary names, fsync, rename them into place under fresh names, and
only then replace the header by rename, so a reader sees either the old index
or the new one, never a mix. On open every size is checked against the header
before anything is mapped, so a truncated file is an error, not a crash.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAGIC = "vecindex-ivf"
FORMAT_VERSION = 1
HEADER = "header.json"
#: files at most this large get a CRC32 in the header, checked on every open
CRC_LIMIT = 256 << 20


class VecIndexError(Exception):
    """Base of the errors vecindex raises on purpose."""


class IndexExistsError(VecIndexError):
    """Building over an existing index without overwrite."""


class IndexFormatError(VecIndexError, ValueError):
    """A missing, truncated, corrupted or incompatible index or vector file."""


def crc32_file(path: Path, limit: int | None = None) -> int:
    """CRC32 of the first `limit` bytes (all when None), read in 8 MiB blocks."""
    crc = 0
    left = limit if limit is not None else -1
    with open(path, "rb") as f:
        while left != 0:
            want = 8 << 20 if left < 0 else min(8 << 20, left)
            b = f.read(want)
            if not b:
                break
            crc = zlib.crc32(b, crc)
            if left > 0:
                left -= len(b)
    return crc


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_array(
    dirpath: Path, name: str, arr: np.ndarray, full_crc: bool = False
) -> dict[str, Any]:
    """Write `arr` to dirpath/name via a temporary name; return its header entry."""
    tmp = dirpath / f".tmp-{name}"
    a = np.ascontiguousarray(arr)
    with open(tmp, "wb") as f:
        a.tofile(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dirpath / name)
    return file_entry(dirpath, name, full_crc=full_crc)


def file_entry(
    dirpath: Path, name: str, nbytes: int | None = None, full_crc: bool = False
) -> dict[str, Any]:
    """Header entry for an existing file; CRC checked on open only when small enough.

    `full_crc` also records the CRC of a large file, checked by `verify_files` only.
    """
    p = dirpath / name
    size = p.stat().st_size if nbytes is None else nbytes
    ent: dict[str, Any] = {"name": name, "bytes": size, "crc32": None}
    if size <= CRC_LIMIT:
        ent["crc32"] = crc32_file(p, size)
    elif full_crc:
        ent["crc32_full"] = crc32_file(p, size)
    return ent


def _header_crc(h: dict[str, Any]) -> int:
    body = {k: v for k, v in h.items() if k != "header_crc32"}
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())


def write_header(dirpath: Path, header: dict[str, Any]) -> None:
    """Publish a header atomically (the commit point of every write)."""
    h = dict(header, magic=MAGIC, format_version=FORMAT_VERSION)
    h["header_crc32"] = _header_crc(h)
    tmp = dirpath / f".tmp-{HEADER}"
    with open(tmp, "w") as f:
        json.dump(h, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dirpath / HEADER)
    fsync_dir(dirpath)


def read_header(dirpath: Path) -> dict[str, Any]:
    """Read and check the header: magic, version, self-CRC, file sizes, small-file CRCs."""
    p = dirpath / HEADER
    if not dirpath.is_dir():
        raise IndexFormatError(f"{dirpath}: not an index directory")
    if not p.exists():
        raise IndexFormatError(f"{dirpath}: no {HEADER} (not a vecindex index, or never published)")
    try:
        h = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise IndexFormatError(f"{p}: corrupted header ({e})") from e
    if not isinstance(h, dict) or h.get("magic") != MAGIC:
        raise IndexFormatError(f"{p}: not a vecindex header (bad magic)")
    if h.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(
            f"{p}: format version {h.get('format_version')} unsupported (this is {FORMAT_VERSION})"
        )
    if h.get("header_crc32") != _header_crc(h):
        raise IndexFormatError(f"{p}: header checksum mismatch (corrupted)")
    for logical, ent in h["files"].items():
        fp = dirpath / ent["name"]
        if not fp.exists():
            raise IndexFormatError(f"{dirpath}: data file {ent['name']} ({logical}) is missing")
        size = fp.stat().st_size
        # append-only tail files may hold a torn append past the header's size
        ok = size >= ent["bytes"] if logical.startswith("tail_") else size == ent["bytes"]
        if not ok:
            raise IndexFormatError(
                f"{fp}: {size} bytes on disk, header says {ent['bytes']} (truncated or corrupted)"
            )
        if ent.get("crc32") is not None and crc32_file(fp, ent["bytes"]) != ent["crc32"]:
            raise IndexFormatError(f"{fp}: checksum mismatch (corrupted)")
    return h


def verify_files(dirpath: Path, header: dict[str, Any]) -> dict[str, int]:
    """Full check: CRC32 of every file, large ones included (slow; `vecindex info --verify`)."""
    out = {}
    for logical, ent in header["files"].items():
        crc = crc32_file(dirpath / ent["name"], ent["bytes"])
        want = ent.get("crc32_full", ent.get("crc32"))
        if want is not None and crc != want:
            raise IndexFormatError(f"{dirpath / ent['name']}: checksum mismatch (corrupted)")
        out[logical] = crc
    return out


def remove_unreferenced(dirpath: Path, header: dict[str, Any]) -> None:
    """Delete data files the published header no longer names (old generations)."""
    keep = {ent["name"] for ent in header["files"].values()} | {HEADER}
    for p in dirpath.iterdir():
        if p.name not in keep and p.name.startswith(("d-", ".tmp-")):
            try:
                p.unlink()
            except OSError as e:  # a concurrent reader on another OS may hold it
                log.debug("could not remove %s: %s", p, e)
