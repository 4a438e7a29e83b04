"""How a method of HKOperations becomes a FUSE callback: thread state, memo pin, a lent
catalog connection (hkfs.core.catalog.Catalog.lend), errno.

Every callback's errors go through `to_fuse_error` (HKError -> its errno, OSError ->
its errno, anything else logged with its traceback -> EIO).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from mfusepy import FuseOSError

from ..core.errors import HKError

__all__ = ["to_fuse_error", "mapped", "mapped_io"]

log = logging.getLogger("hkfs.fuse.operations")


def to_fuse_error(exc: BaseException, op: str = "") -> FuseOSError:
    """The one place errors become errnos: HKError and OSError keep theirs, text that is not
    UTF-8 is EILSEQ, the rest is EIO."""
    if isinstance(exc, FuseOSError):
        return exc
    if isinstance(exc, HKError):
        return FuseOSError(exc.errno)
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return FuseOSError(exc.errno)
    if type(exc) is sqlite3.DatabaseError or (type(exc) is sqlite3.OperationalError and "no such" in str(exc)):
        # a damaged catalog (a table dropped behind the daemon's back): one clear line, no traceback
        log.error("%s: the catalog is damaged (%s); unmount and run hk fsck", op or "a FUSE callback", exc)
        return FuseOSError(errno.EIO)
    if isinstance(exc, UnicodeError):
        # a name or hkfs attribute value that is not UTF-8 (xattr names and user.hk.* values)
        log.info("%s: not UTF-8: %s", op or "a FUSE callback", exc)
        return FuseOSError(errno.EILSEQ)
    log.error("unexpected error in %s", op or "a FUSE callback", exc_info=exc)
    return FuseOSError(errno.EIO)


_KEPT_THREADS: set[int] = set()


def _keep_thread_state() -> None:
    """Give the calling libfuse thread a lasting Python thread state.

    ctypes wraps each callback from a foreign thread in PyGILState_Ensure/Release,
    which creates and destroys a thread state every time. One extra Ensure, never
    released, keeps the state alive (Release then only drops the GIL): measured
    ~40% more stat calls per second. This is for speed only: hkfs.core.catalog keys its
    connections by OS thread id, so it stays correct without it (and for any
    callback that does not come through `mapped`, e.g. init/destroy).
    """
    tid = threading.get_ident()
    if tid not in _KEPT_THREADS:
        _KEPT_THREADS.add(tid)
        ctypes.pythonapi.PyGILState_Ensure()


def mapped(fn: Callable[..., Any], *, pin: bool = True) -> Callable[..., Any]:
    """A FUSE callback: a lasting thread state, errors through to_fuse_error, the catalog
    memo pinned and a catalog connection lent for the request."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any) -> Any:
        _keep_thread_state()
        pinned = pin and self.reads.pin()
        lent = False
        try:
            lent = pinned and self.lend()      # the connection given back last (Catalog.lend)
            return fn(self, *args)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise to_fuse_error(exc, fn.__name__) from exc
        finally:
            if lent:
                self.give_back()
            if pinned:
                self.reads.unpin()
    return wrapper


# The data path (reads): no memo pin. A read touches no catalog state, and each 128 KiB
# request's Python is a good part of the daemon's CPU per GiB (the pin is a PRAGMA under a lock).
mapped_io = functools.partial(mapped, pin=False)
