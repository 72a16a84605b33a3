"""Builds the optional C helpers: WebSocket masking and whole-frame parsing, HTTP request heads, TLS records.

The helpers are speed-ups only: asgiws.websocket.mask and .fastpath, and asgiws.protocols.tls_records,
have pure-Python twins with the same signatures, used whenever an extension is missing (no compiler,
PyPy, ASGIWS_NO_SPEEDUPS=1 at build time), and both are tested; without asgiws.protocols.http._head,
httptools parses every request head (it is a shortcut past httptools's callbacks for the common head).
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build extensions, but never fail the install because of them."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler or headers: fall back to pure Python
            print(f"asgiws: C speedups not built ({exc}); using the pure-Python twin")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"asgiws: C speedups not built ({exc}); using the pure-Python twin")


ext_modules = []
if not os.environ.get("ASGIWS_NO_SPEEDUPS"):
    ext_modules.append(
        Extension("asgiws.websocket._speedups", sources=["asgiws/websocket/_speedups.c"], optional=True)
    )
    # OpenSSL is found at run time in the libssl the ssl module loaded: no headers, nothing to link.
    ext_modules.append(
        Extension("asgiws.protocols.http._head", sources=["asgiws/protocols/http/_head.c"], optional=True)
    )
    ext_modules.append(
        Extension("asgiws.protocols._tlsrecords", sources=["asgiws/protocols/_tlsrecords.c"], optional=True)
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
