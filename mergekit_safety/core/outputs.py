"""A command's output directory, written all at once or not at all.

A command that writes several files (``calibrate``, ``eval --out``, ``adapter``, ``demo build``)
writes them into a hidden sibling of its output directory, ``.<name>.partial-<pid>-<random>``, and
renames it into place at the end (:func:`staged`). Ctrl-C, SIGTERM (commands unwind on it) or an
error remove the sibling, so an interrupted run leaves nothing that a later run reads or trips
over; a sibling that a killed process (SIGKILL, a power cut) could not remove is recognised by its
dead process id and removed by the next run into the same place.

:func:`check_writable` is the check made before any heavy work: the output (or the nearest folder
above it that exists) takes a new file.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from mergekit_safety.core.errors import ConfigError

PARTIAL = ".partial-"
"""What names a staging sibling: ``.<out name>.partial-<pid>-<random>``."""


def check_writable(out: str | os.PathLike, label: str = "output") -> None:
    """``out`` (or the nearest folder that exists above it) takes a new file; one line if not.

    ``label`` names ``out`` in the message (``output``, ``--out``, ``--report``).
    """
    out = Path(out)
    target = out
    while not target.exists() and target != target.parent:
        target = target.parent
    if not target.is_dir():
        return  # a file in the way: the write names it (see errors._os_error)
    try:
        handle, probe = tempfile.mkstemp(dir=target, prefix=".mergekit-safety-")
    except OSError as error:
        raise ConfigError(f"{label} {out} is not writable ({error.strerror})") from None
    os.close(handle)
    os.unlink(probe)


@contextlib.contextmanager
def staged(
    out: str | os.PathLike, *, merge: bool = False, stale: Sequence[str] = ()
) -> Iterator[Path]:
    """A fresh sibling directory to write ``out``'s files into; renamed to ``out`` at the end.

    ``out`` must not exist or be empty, unless ``merge``: then each entry of the sibling replaces
    the entry of that name in ``out`` (others stay), one rename each, after the entries of
    ``out`` matching a ``stale`` pattern are removed (an earlier model's other shards). If the
    block raises (an error, Ctrl-C, SIGTERM), the sibling is removed and ``out`` is as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL}{os.getpid()}-", dir=out.parent))
    try:
        yield staging
        _default_mode(staging)
        if out.is_dir() and (merge or not any(out.iterdir())):
            if not merge:
                out.rmdir()
                staging.rename(out)
                return
            for pattern in stale:
                for entry in out.glob(pattern):
                    entry.unlink()
            for entry in staging.iterdir():
                target = out / entry.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                entry.replace(target)
            staging.rmdir()
            return
        staging.rename(out)  # fails (one line, see errors) if out appeared meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_stale(out: Path) -> None:
    """Remove the staging siblings of ``out`` whose process is gone (a killed run's leftovers)."""
    pattern = re.compile(re.escape(f".{out.name}{PARTIAL}") + r"(\d+)-")
    if not out.parent.is_dir():
        return
    for sibling in out.parent.iterdir():
        found = pattern.match(sibling.name)
        if found and sibling.is_dir() and not _alive(int(found[1])):
            shutil.rmtree(sibling, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def _default_mode(directory: Path) -> None:
    """The mode a plain mkdir gives (mkdtemp makes 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
