"""The sans-I/O rule: asgiws.websocket (the codec) and asgiws.asgi (the sessions)
never import I/O or CLI libraries."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

import asgiws.asgi
import asgiws.websocket

FORBIDDEN = {"asyncio", "uvloop", "httptools", "click"}
PACKAGE = pathlib.Path(asgiws.websocket.__file__).parent
SANS_IO = {"asgiws.websocket": PACKAGE, "asgiws.asgi": pathlib.Path(asgiws.asgi.__file__).parent}


@pytest.mark.parametrize("package", sorted(SANS_IO))
def test_sans_io_package_source_imports_no_io_library(package: str) -> None:
    for path in SANS_IO[package].glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


@pytest.mark.parametrize("module", ["asgiws.websocket", "asgiws.asgi.websocket", "asgiws.headers",
                                    "asgiws.exceptions"])
def test_importing_a_sans_io_module_loads_no_io_library(module: str) -> None:
    # asgiws/__init__.py imports the server; stand in for it so that only
    # the module's own imports (and theirs) are measured: the codec, the
    # session, and the two modules any layer may import (the header checks
    # and the exceptions).
    code = (
        "import sys, types; pkg = types.ModuleType('asgiws'); "
        f"pkg.__path__ = [{str(PACKAGE.parent)!r}]; sys.modules['asgiws'] = pkg; "
        f"import {module}; "
        f"print(sorted(m for m in {sorted(FORBIDDEN)!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
