"""asgiws: an ASGI 3 server on uvloop and httptools, strong on WebSocket."""

from asgiws.config import Config
from asgiws.main import run
from asgiws.server import Server

__version__ = "0.1.0"
__all__ = ["Config", "Server", "run", "__version__"]
