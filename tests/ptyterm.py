"""A process on a pseudo-terminal, for tests that type into a real interactive shell.

Shared by the paper-transcript test (bash, a line at a time) and the completion test
(bash and zsh, key by key): both need a pty of a given size, a new session (so the
shell has a controlling terminal and job control), reads that never block the test,
and an exit that never leaves a shell behind.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
from pathlib import Path


class PtyProcess:
    """argv on a rows x columns pty; everything it writes accumulates in `buf`."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], *, rows: int = 24,
                 columns: int = 80) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env,
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.buf = bytearray()

    def read(self, wait: float) -> bool:
        """Take in what the process wrote within `wait` seconds; False if nothing (or it is gone)."""
        r, _, _ = select.select([self.master], [], [], wait)
        if not r:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:            # EIO: the process is gone
            return False
        self.buf.extend(data)
        return bool(data)

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self, goodbye: bytes = b"exit\n") -> None:
        """Send `goodbye`, wait for the exit (kill after 30 s), close the pty."""
        try:
            os.write(self.master, goodbye)
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self.master)
