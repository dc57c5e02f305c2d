"""Helpers shared by the command modules."""

from __future__ import annotations

import importlib
from types import ModuleType


class CLIError(Exception):
    """An error the CLI reports as one line (``hierarchos: error: ...``), exit 1."""


def load(module: str, feature: str) -> ModuleType:
    """Import ``module`` lazily; a missing module becomes a one-line :class:`CLIError`.

    Only a missing ``module`` itself (or one of its parent packages) is turned
    into "not available"; an ImportError raised *inside* the module (a missing
    third-party dependency, say) is re-raised with its own message.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        parts = module.split(".")
        parents = {".".join(parts[: i + 1]) for i in range(len(parts))}
        if exc.name in parents:
            raise CLIError(
                f"{feature} is not available in this installation "
                f"(module {module!r} not found)"
            ) from exc
        raise
