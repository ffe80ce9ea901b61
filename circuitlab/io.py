"""Saving without losing anything: atomic file and folder writes, and the one way saved files
are tagged.

Why one module: every artefact circuitlab writes (results, circuits, edge scores, faithfulness
curves, graphs, sparse coders, pages) goes through these functions, so an interrupted save never
leaves half a file behind and every JSON half says what it is in the same words."""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def user_home() -> Path:
    """Where what users fetch or train outside the package lives (real models, text corpora,
    real models' coders): ``$CIRCUITLAB_HOME``, default ``~/.cache/circuitlab``."""
    return Path(os.environ.get("CIRCUITLAB_HOME") or "~/.cache/circuitlab").expanduser()


def state_cache() -> Path:
    """Where resumable training state lives (checkpoints that a finished run no longer needs):
    ``$CIRCUITLAB_CACHE``, default ``~/.cache/circuitlab``."""
    return Path(os.environ.get("CIRCUITLAB_CACHE") or "~/.cache/circuitlab").expanduser()


def format_tag(kind: str) -> str:
    """The ``"format"`` value of a saved ``kind`` (``circuitlab.result/1``, ``circuitlab.graph/1`` ...)."""
    return f"circuitlab.{kind}/1"


def check_format(info: dict[str, Any], kind: str, path: str | Path, what: str = "",
                 also: tuple[str, ...] = ()) -> None:
    """Refuse a JSON file whose ``"format"`` is not ``kind``'s tag (or one of ``also``, older spellings)."""
    got = info.get("format")
    if got != format_tag(kind) and got not in also:
        raise ValueError(f"{path} is not a circuitlab {what or kind} file (format {got!r}, expected "
                         f"{format_tag(kind)!r})")


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


RESULT_SUFFIXES = (".json", ".safetensors")
"""The endings ``Result.save``/``load`` strip from a path; any other dot is part of the name."""


def result_files(path: str | Path) -> tuple[Path, Path]:
    """(.json, .safetensors) files of the result saved at ``path``."""
    path = Path(path)
    if path.suffix in RESULT_SUFFIXES:
        path = path.with_suffix("")
    if not path.name:
        raise ValueError(f"{str(path)!r} names no file: pass a path such as out/ioi_exact")
    return path.with_name(path.name + ".json"), path.with_name(path.name + ".safetensors")


# ------------------------------------------------------------------ all-or-nothing multi-file writes

def _normal_mode(p: str | Path, directory: bool = False) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(p, (0o777 if directory else 0o666) & ~umask)  # mkdtemp/mkstemp create owner-only entries


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _clean_orphans(target: Path) -> None:
    """Remove staging folders of ``target`` left by writes whose process is gone."""
    for p in glob.glob(os.path.join(glob.escape(str(target.parent)), f".{glob.escape(target.name)}.tmp-*")):
        pid = os.path.basename(p)[len(target.name) + 6:].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _stage(target: Path) -> Path:
    """A new empty staging folder beside ``target`` (``.NAME.tmp-PID-*``; orphans cleaned first)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_orphans(target)
    return Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-{os.getpid()}-"))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _carry_over(old: Path, new: Path) -> None:
    """Hard-link (or copy) into ``new`` the entries of ``old`` the new write did not produce."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for entry in os.scandir(old):
        dst = new / entry.name
        if os.path.lexists(dst):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dst)
        elif entry.is_dir():
            shutil.copytree(entry.path, dst, symlinks=True, copy_function=link)
        else:
            link(entry.path, dst)


@contextmanager
def atomic_folder(path: str | Path, keep_others: bool = True) -> Iterator[Path]:
    """Write a folder of files all-or-nothing.

    Yields an empty staging folder beside ``path``; when the block finishes, the staging
    folder replaces ``path`` in one rename (an atomic exchange on Linux), so readers see the
    old folder or the new one, never a mix. If the block raises, ``path`` is left as it was.
    Entries of the old folder the block did not write are kept (hard-linked) unless
    ``keep_others`` is False. A staging folder orphaned by a killed process is removed by the
    next write to the same path and is never read.
    """
    target = Path(os.path.abspath(path))
    if target.is_symlink():
        target = target.resolve()
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} exists and is not a folder: pass a folder path (or remove the file)")
    tmp = _stage(target)
    try:
        yield tmp
        _normal_mode(tmp, directory=True)
        if not target.exists():
            os.rename(tmp, target)
            return
        if keep_others:
            _carry_over(target, tmp)
        if _exchange(tmp, target):
            shutil.rmtree(tmp, ignore_errors=True)  # now holds the old folder
            return
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-{os.getpid()}-old-"))
        os.rename(target, old / "x")
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_files(*paths: str | Path) -> Iterator[list[Path]]:
    """Write sibling files all-or-nothing: yields one staging path per target (in a staging
    folder beside them); when the block finishes each is renamed over its target, in order.
    If the block raises, no target changes. Readers that need the set to match (``Result``)
    store a shared id in every file: a process killed between two renames leaves a pair that
    ``Result.load`` refuses rather than mixes."""
    targets = [Path(os.path.abspath(p)) for p in paths]
    tmp = _stage(targets[0])
    staged = [tmp / f"{i}_{t.name}" for i, t in enumerate(targets)]
    try:
        yield staged
        for s, t in zip(staged, targets):
            _normal_mode(s)
            os.replace(s, t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
