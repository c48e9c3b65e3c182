"""Atomic writes: a file or folder appears whole or not at all."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from spon.errors import SponError

__all__ = ["atomic_file", "atomic_dir", "ensure_writable_dir", "write_text", "remove_created_dirs", "check_new_output"]


_CREATED: list[Path] = []  # folders this process created for its outputs, outermost first


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _as_umask_allows(path: Path, folder: bool) -> None:
    """mkstemp / mkdtemp create 0600 / 0700; a finished output gets the modes any other tool's would (the umask's)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def ensure_writable_dir(path: str | Path) -> Path:
    """Create `path` if needed and check that files can be written in it, before any long work starts.

    Folders it creates are remembered, so a command that then fails can take them away (`remove_created_dirs`)."""
    path = Path(path)
    missing = [q for q in (path, *path.parents) if not q.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        _CREATED.extend(reversed(missing))
        with tempfile.NamedTemporaryFile(dir=path, prefix=".spon-probe-"):
            pass
    except OSError as e:
        raise SponError(f"cannot write to output folder {path} ({e.strerror}); choose a writable output folder") from None
    return path


def remove_created_dirs() -> None:
    """Take away the folders `ensure_writable_dir` created that are still empty (a command failed before writing)."""
    for folder in reversed(_CREATED):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only an empty folder goes
    _CREATED.clear()


def check_new_output(path: str | Path, is_earlier_output, what: str, overwrite: bool = False) -> None:
    """Refuse to write the folder `path` over anything spon did not write: an existing non-empty folder is replaced
    only if `is_earlier_output(path)` says it is an earlier output of the same kind and `overwrite` is set."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SponError(f"{path} is a file, not a folder; choose a new folder for the {what}")
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not is_earlier_output(path):
        raise SponError(f"{path} already holds files that are not a spon {what}; choose a new or empty folder "
                        "(nothing was changed)")
    if not overwrite:
        raise SponError(f"{path} already holds a spon {what}; pass --overwrite to replace it, or choose a new folder")


_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _write_error(e: BaseException, path: Path) -> SponError | None:
    """A one-line error for a failed write (out of disk, permissions), or None if it is not a write error."""
    text = str(e)
    if (isinstance(e, OSError) and e.errno in _NO_SPACE) or "No space left" in text or "code: 28" in text:
        return SponError(f"out of disk space while writing {path}; free some space or choose another output folder (nothing was left behind)")
    if isinstance(e, OSError) and not isinstance(e, SponError):
        return SponError(f"cannot write {path} ({e.strerror or e}); choose a writable output folder (nothing was left behind)")
    return None


@contextlib.contextmanager
def atomic_file(path: str | Path):
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, on failure removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        _as_umask_allows(Path(tmp), folder=False)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        err = _write_error(e, path)
        if err is not None:
            raise err from None
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder next to `path`; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        _as_umask_allows(tmp, folder=True)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        err = _write_error(e, path)
        if err is not None:
            raise err from None
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)
