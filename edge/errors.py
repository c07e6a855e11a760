"""Errors that say what happened, the values involved, and how to fix it."""
from __future__ import annotations


class EdgeError(Exception):
    """Base error of edge: a message in three parts (what, Note: values, Hint: fix)."""

    def __init__(self, what: str, *, note: str | None = None, hint: str | None = None) -> None:
        self.what = what
        self.note = note
        self.hint = hint
        super().__init__(self.render())

    def summary(self) -> str:
        """One line for a list of reasons: what happened, with the values in parentheses."""
        return f"{self.what} ({self.note})" if self.note else self.what

    def render(self) -> str:
        parts = [self.what]
        if self.note:
            parts.append(f"Note: {self.note}")
        if self.hint:
            parts.append(f"Hint: {self.hint}")
        return "\n".join(parts)


class ConfigError(EdgeError):
    """The configuration file or an override is invalid."""


class SourceError(EdgeError):
    """A camera could not be opened or read."""


class EngineError(EdgeError):
    """A model or engine could not be loaded or run."""


class UsageError(EdgeError):
    """An API was called out of order (lifecycle misuse)."""


class AssetError(EdgeError):
    """Demo assets could not be fetched or verified."""


class ProtocolError(EdgeError):
    """A message on the wire does not follow schema v1."""
