"""Child processes that do not outlive their parent.

Example
-------
>>> import subprocess
>>> subprocess.run(["true"], preexec_fn=lambda: die_with_parent()).returncode
0
"""

from __future__ import annotations

import contextlib
import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """In a child: ask Linux to send ``sig`` when the parent dies (a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)
