"""Atomic writes: a crash or Ctrl-C mid-save never leaves half a model, adapter or JSON file.

Every folder tunebook saves (the dequantized model cache, adapters, merged models) is written to a
hidden sibling folder first and renamed into place when complete; a rename within one file system
is atomic, so readers see the old folder or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_directory(target: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield an empty staging folder; on success it becomes `target`.

    replace=False keeps an existing complete `target` (used when two processes race to build the
    same cache: the first one wins, the second discards its copy).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    old = target.with_name(f".{target.name}.old")
    try:
        yield staging
        if target.exists():
            if not replace:
                return
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        try:
            os.replace(staging, target)
        except OSError:
            if replace or not target.exists():
                raise
            # replace=False and another process made `target` between the check and the rename: keep its copy
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


# Why a write fails for want of room or rights (errno -> what the user reads).
_WRITE_ERRNOS = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "the disk quota is used up",
                 errno.EFBIG: "file too large for the file system or its limit", errno.EROFS: "read-only file system",
                 errno.EACCES: "permission denied"}


def write_failure(exc: BaseException) -> str | None:
    """What went wrong when `exc` (or its cause) is a failed write for lack of room or rights, else None.

    Libraries report the same fault in their own words: OSError (json, matplotlib), safetensors'
    and tokenizers' "... (os error 28)", torch's "PytorchStreamWriter failed writing file".
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            return f"{_WRITE_ERRNOS[exc.errno]} ({exc.strerror}{': ' + str(exc.filename) if exc.filename else ''})"
        text = str(exc)
        if (match := re.search(r"os error (\d+)", text)) and int(match[1]) in _WRITE_ERRNOS:
            return f"{_WRITE_ERRNOS[int(match[1])]} ({text.strip().splitlines()[0][:160]})"
        if "failed writing file" in text or "file write failed" in text:
            return f"a file could not be written, the disk may be full ({text.strip().splitlines()[0][:160]})"
        exc = exc.__cause__ or exc.__context__
    return None


def unwritable(folder: str | Path) -> str | None:
    """Why files cannot be written into `folder` (or where it would be created), or None when they can.

    Checked before a command starts, so a read-only or foreign folder stops it before minutes of work.
    """
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if os.access(existing, os.W_OK | os.X_OK):
        return None
    try:
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            return f"{existing} is on a read-only file system"
    except OSError:
        pass
    return f"no permission to write in {existing}"


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (temporary file + rename): readers see the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, payload: dict) -> None:
    """Write JSON atomically (temporary file + rename)."""
    write_text(path, json.dumps(payload, indent=2, default=str, ensure_ascii=False))
