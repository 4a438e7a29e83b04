"""The core's exceptions. Each carries the errno the mount answers with, so the
FUSE adapter maps errors in one place and the CLI prints one clear line."""

from __future__ import annotations

import errno as _errno


class HKError(Exception):
    """Base of every error the hkfs core raises on purpose."""

    errno: int = _errno.EIO


class HKSyntaxError(HKError):
    """Text that breaks the HK / file-spec grammar; `position` is the 0-based index of the bad character."""

    errno = _errno.EINVAL

    def __init__(self, message: str, text: str = "", position: int | None = None) -> None:
        if position is not None:
            message = f"{message} at character {position + 1} of {text!r}"
        super().__init__(message)
        self.text = text
        self.position = position


class NotFound(HKError):
    errno = _errno.ENOENT


class AlreadyExists(HKError):
    errno = _errno.EEXIST


class NotEmpty(HKError):
    errno = _errno.ENOTEMPTY


class KeywordInUse(NotEmpty):
    """rmkw of a keyword that a file carries or that has child keywords."""


class NameClash(HKError):
    """ldf would link two files of the same name into one directory."""

    errno = _errno.EEXIST

    def __init__(self, message: str, names: list[str] | None = None) -> None:
        super().__init__(message)
        self.names = sorted(names or [])


class PermissionDenied(HKError):
    errno = _errno.EACCES


class NotPermitted(HKError):
    errno = _errno.EPERM


class IsADirectory(HKError):
    errno = _errno.EISDIR


class NotADirectory(HKError):
    errno = _errno.ENOTDIR


class InvalidArgument(HKError):
    errno = _errno.EINVAL


class NameTooLong(HKError):
    errno = _errno.ENAMETOOLONG


class StoreLocked(HKError):
    """Another daemon holds the store's lock."""

    errno = _errno.EBUSY


class StoreVersionError(HKError):
    """The catalog was written by a newer hkfs (schema version above ours) or is not an hkfs catalog."""

    errno = _errno.EPROTO


class NoAttribute(NotFound):
    """No such extended attribute (ENODATA, the errno getxattr(2) gives)."""

    errno = getattr(_errno, "ENOATTR", _errno.ENODATA)


class Busy(NotPermitted):
    """The root, '@' and ',' cannot be removed or moved."""

    errno = _errno.EBUSY


class CrossDevice(NotPermitted):
    """A directory cannot move into a view."""

    errno = _errno.EXDEV


class NotSupported(NotPermitted):
    """An attribute this file system does not keep (system.*, trusted.*, on a view)."""

    errno = _errno.ENOTSUP


class CatalogDamaged(HKError):
    """The catalog lacks part of its schema (a table dropped by hand or by a broken tool)."""

    errno = _errno.EIO
