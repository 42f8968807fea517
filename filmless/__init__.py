"""filmless: a small PACS/RIS. This package holds wiring only: settings, bootstrap, the CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("filmless")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
