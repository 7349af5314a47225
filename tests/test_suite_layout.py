"""The test suite's own layout: shared builders and doubles come from `tests/support`, real
components from `tests/testbed`; no module imports a test module (whose import would also
re-run its module-level setup and couple two test files), and bench/ and scripts/ use only
the public names of the test bed."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: every Python file that may import test helpers
SCANNED = ("tests", "bench", "scripts")
#: packages whose underscored names are private to them
HELPER_PACKAGES = ("testbed", "support")


def _imports(tree: ast.AST) -> Iterator[tuple[int, str, tuple[str, ...]]]:
    """(line, module, imported names) of every absolute import, nested ones included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, tuple(a.name for a in node.names)


def _is_test_module(module: str) -> bool:
    # tests/ is on sys.path (pytest's rootdir insertion, mypy_path), so a test module is
    # imported as `test_x`; `tests.test_x` is the same file by its package path. conftest
    # is pytest's to load: its fixtures are requested by name, never imported.
    parts = module.split(".")
    if parts[0] == "tests":
        parts = parts[1:]
    return parts[0] == "conftest" or any(part.startswith("test_") for part in parts)


def offences(source: str, where: str) -> list[str]:
    """What in `source` breaks the layout, one line each."""
    found = []
    for line, module, names in sorted(_imports(ast.parse(source))):
        if _is_test_module(module):
            found.append(f"{where}:{line}: imports test module {module}")
        top = module.split(".")[0]
        private = [n for n in names if n.startswith("_")]
        if top in HELPER_PACKAGES and private:
            found.append(f"{where}:{line}: imports private {', '.join(private)} from {module}")
    return found


def scanned_files() -> list[Path]:
    return sorted(p for d in SCANNED for p in (REPO / d).rglob("*.py"))


def test_no_module_imports_a_test_module_or_a_private_helper() -> None:
    files = scanned_files()
    assert len(files) > 50  # the scan really saw the suite
    found = [o for path in files for o in offences(path.read_text(), str(path.relative_to(REPO)))]
    assert found == [], "\n".join(found)


def test_helpers_live_in_support_or_testbed_only() -> None:
    """Directly under tests/ only test modules and conftest.py: a shared helper module
    there (as tests/memory_upstream.py was) would be a third home for doubles."""
    loose = sorted(
        p.name
        for p in (REPO / "tests").glob("*.py")
        if p.name != "conftest.py" and not p.name.startswith("test_")
    )
    assert loose == []
    packages = sorted(p.parent.name for p in (REPO / "tests").glob("*/__init__.py"))
    assert packages == ["support", "testbed"]


def test_the_check_catches_each_kind_of_offence() -> None:
    source = (
        "import test_sync\n"
        "from tests.test_hosts_tree import build_tree\n"
        "from test_faults import run_cli\n"
        "def f() -> None:\n"
        "    from test_browse import helper\n"
        "from testbed.images import _write_blob, skopeo_push\n"
        "from support.trees import _Writer\n"
        "from support.trees import build_tree\n"
        "from testbed.procs import free_port\n"
        "from conftest import backoffs\n"
    )
    assert offences(source, "x.py") == [
        "x.py:1: imports test module test_sync",
        "x.py:2: imports test module tests.test_hosts_tree",
        "x.py:3: imports test module test_faults",
        "x.py:5: imports test module test_browse",
        "x.py:6: imports private _write_blob from testbed.images",
        "x.py:7: imports private _Writer from support.trees",
        "x.py:10: imports test module conftest",
    ]
