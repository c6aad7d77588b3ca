"""Atomic publish of numbered versions in a TF Serving base path (``BASE/<version>/``).

A version is built in a hidden staging folder inside ``BASE`` (same filesystem), its files and
folders are fsynced, and then it is renamed to its number in one ``rename(2)``. A reader that
lists ``BASE`` (TF Serving, ``tfprod serve``) sees either no version or a complete one; an export
that fails or is killed leaves at most a hidden staging folder, which the next export on the same
host removes once its process is gone.

Replacing an existing version (``overwrite=True``) is atomic as well: the new version is built
beside it and the two folders are swapped with ``renameat2(RENAME_EXCHANGE)`` on Linux; where that
call is missing, two renames leave the number absent (never half-written) for a moment.

Nothing here imports TensorFlow: a server can call :func:`list_versions` cheaply.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
import socket
from collections.abc import Iterator

from tfprod.errors import TfprodError

#: Hidden names of staging folders; readers ignore them, :func:`check_base` tolerates them.
TEMP_PREFIX = ".tmp-export-"
#: Attempts to claim the next free number when other exports publish at the same time.
_CLAIM_ATTEMPTS = 20
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _is_version(name: str) -> bool:
    return name.isascii() and name.isdigit()


def list_versions(base: str | os.PathLike) -> list[int]:
    """The published version numbers under ``base``, ascending; ``[]`` if ``base`` is missing.

    Only folders named by digits count (as in TF Serving); staging folders never do.
    """
    base = os.fspath(base)
    if not os.path.isdir(base):
        return []
    return sorted(int(e.name) for e in os.scandir(base) if _is_version(e.name) and e.is_dir())


def next_version(base: str | os.PathLike) -> int:
    """The number the next export gets: the largest published version + 1, or 1."""
    versions = list_versions(base)
    return versions[-1] + 1 if versions else 1


def _host() -> str:
    return socket.gethostname().replace("-", "_") or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(name: str) -> bool:
    """A staging folder of a process on this host that no longer runs."""
    parts = name[len(TEMP_PREFIX):].rsplit("-", 2)
    if len(parts) != 3 or parts[0] != _host() or not parts[1].isdigit():
        return False
    return not _pid_alive(int(parts[1]))


def check_base(base: str | os.PathLike) -> list[int]:
    """Checks that ``base`` holds only version folders; returns the published versions.

    Removes the staging folders of exports on this host whose process is gone (killed
    mid-export). A missing ``base`` is fine (it is created on publish).

    Raises:
        TfprodError: ``base`` is a file, or holds a folder that is not a version number.
    """
    base = os.fspath(base)
    if os.path.exists(base) and not os.path.isdir(base):
        raise TfprodError(f"export base path {base} is a file; expected a folder of numbered "
                          "versions (BASE/1, BASE/2, ...)")
    if not os.path.isdir(base):
        return []
    for entry in sorted(os.scandir(base), key=lambda e: e.name):
        if entry.name.startswith(TEMP_PREFIX):
            if _stale(entry.name):
                shutil.rmtree(entry.path, ignore_errors=True)
            continue
        if entry.is_dir() and not _is_version(entry.name):
            raise TfprodError(
                f"export base path {base} holds a folder that is not a version number: "
                f"{entry.name!r}; TF Serving expects only numbered versions there, so move it "
                "away or export to another base path")
    return list_versions(base)


@contextlib.contextmanager
def staging_dir(base: str | os.PathLike) -> Iterator[str]:
    """A fresh hidden folder inside ``base``, removed on exit unless it was published."""
    base = os.fspath(base)
    try:
        os.makedirs(base, exist_ok=True)
    except OSError as e:
        raise TfprodError(f"cannot create export base path {base} ({e.strerror}); choose a "
                          "writable folder") from None
    name = f"{TEMP_PREFIX}{_host()}-{os.getpid()}-{secrets.token_hex(4)}"
    path = os.path.join(base, name)
    os.mkdir(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _fsync_path(path: str, directory: bool) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems refuse fsync on folders; the files are what matter
        if not directory or e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """Flushes every file and folder under ``root`` (and ``root`` itself) to disk."""
    root = os.fspath(root)
    for dirpath, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_path(os.path.join(dirpath, name), directory=False)
        _fsync_path(dirpath, directory=True)


def _exchange(a: str, b: str) -> bool:
    """Swaps two paths atomically (Linux ``renameat2``); False where the call is unavailable."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), b)


def _replace(staging: str, target: str) -> None:
    """Puts ``staging`` at ``target`` (which exists); the old version ends up in ``staging``."""
    if _exchange(staging, target):
        return
    parked = f"{staging}-old"
    os.rename(target, parked)
    os.rename(staging, target)
    os.rename(parked, staging)


def publish(staging: str, base: str | os.PathLike, version: int | None = None, *,
            overwrite: bool = False) -> tuple[str, int]:
    """Renames a complete, fsynced ``staging`` folder to ``base/<version>``.

    Args:
        staging: a folder from :func:`staging_dir` of the same ``base``.
        base: the base path.
        version: the number to publish as; ``None`` takes :func:`next_version` (and the next
            free one if another export claims it first).
        overwrite: replace an existing ``version`` (atomically swapped; the old one is left in
            ``staging`` for its context to remove).

    Returns:
        ``(path, version)`` of the published folder.

    Raises:
        TfprodError: ``version`` exists and ``overwrite`` is false.
    """
    base = os.fspath(base)
    if version is None:
        for _ in range(_CLAIM_ATTEMPTS):
            version = next_version(base)
            target = os.path.join(base, str(version))
            try:
                os.rename(staging, target)
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue  # another export took this number a moment ago
                raise
            _fsync_path(base, directory=True)
            return target, version
        raise TfprodError(f"could not claim a free version number in {base} after "
                          f"{_CLAIM_ATTEMPTS} attempts; other exports keep publishing there")
    target = os.path.join(base, str(version))
    if os.path.exists(target):
        if not overwrite:
            raise version_exists(base, version)
        _replace(staging, target)
    else:
        try:
            os.rename(staging, target)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise version_exists(base, version) from None
            raise
    _fsync_path(base, directory=True)
    return target, version


def version_file(path: str | os.PathLike, relative: str, what: str) -> str:
    """``path`` itself, or ``path/relative`` when ``path`` is a version folder; must exist.

    Raises:
        TfprodError: the file is missing (an export without reference data writes neither the
            warmup requests nor the reference statistics).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, relative)
    if not os.path.exists(path):
        raise TfprodError(f"{path}: no {what}; export with reference data (reference_data=..., "
                          "tfprod export --data DIR) to write them")
    return path


def version_exists(base: str, version: int) -> TfprodError:
    """The error for a version number that is already published."""
    return TfprodError(f"version {version} already exists in {base}; pass overwrite=True "
                       f"(--overwrite) to replace it, or omit the version to publish as "
                       f"{next_version(base)}")
