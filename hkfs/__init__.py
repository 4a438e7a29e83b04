"""hkfs: files named by hierarchical keywords (Tada, Higuchi, Taniguchi), mounted with FUSE."""

__version__ = "0.1.0"

# The core knows no mount: a process that changes a store pokes the daemon serving it
# through a commit hook registered here, so every user of the Python API (the hk CLI, a
# script) has its change seen by the very next command (see hkfs.core.changes).
from .core.changes import add_commit_hook as _add_commit_hook  # noqa: E402
from .fuse.daemon_notify import notify_daemon as _notify_daemon  # noqa: E402

_add_commit_hook(_notify_daemon)
