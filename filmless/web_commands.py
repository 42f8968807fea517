"""`filmless user`, `filmless apikey` and `filmless audit`: the people and systems of the HTTP API, and the audit log."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

HANDLERS: dict[str, Callable[[Any, argparse.Namespace], int]] = {}


def add_parsers(sub: Any, add_settings: Callable[..., None], common: tuple[str, ...]) -> None:
    """Placeholder: filled by its issue-5 work."""
