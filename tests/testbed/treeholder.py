"""Hold a tree's lock from a process of its own until the test lets go.

``hold_tree(root)`` starts this file as a script: it takes the lock with the product's
``registrish_lock.tree.treelock`` (so it writes its PID like a real sync), prints ``held``, and
keeps the lock until its stdin closes. The test waits for that line, not for a sync to be
slow, and decides itself when the lock is released (or SIGKILLs the holder).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import registrish_lock

HELD = "held"


@contextlib.contextmanager
def hold_tree(root: Path, timeout: float = 60.0) -> Iterator[subprocess.Popen[str]]:
    """The lock of the tree at ``root`` held by a child process (yielded, for its PID)
    for the ``with`` block; released on exit, when the holder must exit 0."""
    # The package the tests import, wherever it is (a checkout or an installed copy).
    package_parent = str(Path(registrish_lock.__file__).resolve().parent.parent)
    path = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, __file__, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline().strip()
        assert line == HELD, f"the tree holder said {line!r}, exit {proc.poll()}"
        yield proc
    finally:
        proc.stdin.close()  # let go (a killed holder has let go already)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert code in (0, -9), f"the tree holder exited {code}"


def _main(root: str) -> None:
    from registrish_lock.console import Console
    from registrish_lock.tree.layout import Layout
    from registrish_lock.tree.treelock import tree_lock

    with tree_lock(Layout(Path(root)), Console(verbosity=-1)):
        print(HELD, flush=True)
        sys.stdin.read()  # until the test closes it


if __name__ == "__main__":
    _main(sys.argv[1])
