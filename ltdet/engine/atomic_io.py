"""Files that are either completely written or not written at all.

A write goes to ``<path>.tmp-<pid>`` and is renamed onto ``path`` (``os.replace``,
atomic on POSIX) only after the data was flushed and fsync'ed; if the writer
raises or the process dies, ``path`` keeps its previous content (or stays
absent). Used for checkpoints, ``last_checkpoint`` and ``grad_stats.json``.
"""
import contextlib
import os

__all__ = ["AtomicPathManager", "atomic_open"]


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs):
    """``open(path, mode)`` for writing, published atomically on successful close.

    Args:
        path: destination file.
        mode: a write mode ("w", "wb"); appending is not atomic and is refused.
        kwargs: passed to ``open``.
    """
    if "a" in mode or "+" in mode or "w" not in mode:
        raise ValueError(f"atomic_open writes whole files; mode {mode!r} is not supported")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class AtomicPathManager:
    """An iopath ``PathManager`` whose local writes go through :func:`atomic_open`.

    fvcore's ``Checkpointer.save`` and ``tag_last_checkpoint`` write through
    ``checkpointer.path_manager.open(path, "wb" / "w")``; with this manager a
    process killed during ``torch.save`` leaves the previous checkpoint and
    ``last_checkpoint`` intact. Everything else is delegated.
    """

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def open(self, path: str, mode: str = "r", **kwargs):
        if "w" in mode and "://" not in path:
            return atomic_open(path, mode, **kwargs)
        return self._path_manager.open(path, mode, **kwargs)

    def __getattr__(self, name):
        return getattr(self._path_manager, name)
