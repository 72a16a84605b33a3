"""Turn "module:attribute" into the object it names."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any


class ImportFromStringError(Exception):
    """The import string is malformed, or names something that does not exist."""


def import_from_string(import_str: Any) -> Any:
    """Import `module.sub:attr.sub` and return the attribute.

    Non-strings are returned as they are. Raises ImportFromStringError with a
    one-line message; an ImportError raised *inside* the module propagates.
    """
    if not isinstance(import_str, str):
        return import_str
    module_str, _, attrs_str = import_str.partition(":")
    if not module_str or not attrs_str:
        raise ImportFromStringError(f'import string "{import_str}" must be in format "<module>:<attribute>"')
    try:
        module = importlib.import_module(module_str)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_str.startswith(exc.name) or (
            exc.name != module_str and not module_str.startswith(exc.name + ".")
        ):
            raise
        raise ImportFromStringError(f'could not import "{import_str}": {exc}') from None
    instance: Any = module
    try:
        for attr in attrs_str.split("."):
            instance = getattr(instance, attr)
    except AttributeError:
        raise ImportFromStringError(
            f'could not import "{import_str}": attribute "{attrs_str}" not found in module "{module_str}"'
        ) from None
    return instance


def check_importable(import_str: str) -> None:
    """Raise ImportFromStringError unless `import_str` is well formed and its module exists.

    The module is found, not executed (its parent packages are imported).
    """
    module_str, _, attrs_str = import_str.partition(":")
    if not module_str or not attrs_str:
        raise ImportFromStringError(f'import string "{import_str}" must be in format "<module>:<attribute>"')
    try:
        spec = importlib.util.find_spec(module_str)
    except ModuleNotFoundError as exc:
        raise ImportFromStringError(f'could not import "{import_str}": {exc}') from None
    if spec is None:
        raise ImportFromStringError(f'could not import "{import_str}": No module named {module_str!r}')
