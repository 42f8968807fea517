"""`filmless trash` and `filmless purge`: what the API deleted, restored or removed for good."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

HANDLERS: dict[str, Callable[[Any, argparse.Namespace], int]] = {}


def add_parsers(sub: Any, add_settings: Callable[..., None], common: tuple[str, ...]) -> None:
    """Placeholder: filled by its issue-5 work."""
