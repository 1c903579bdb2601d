"""Topic names and subscription patterns.

A topic is a dot-separated list of tokens (``user.created``). A pattern may use ``*`` for
exactly one token (``user.*``) and ``>`` as its last token for one or more tokens
(``user.>``), as in NATS subjects.
"""

from __future__ import annotations

import re
from functools import lru_cache

from localbroker.errors import ConfigurationError

__all__ = ["TopicPattern", "validate_topic"]

_TOKEN = re.compile(r"^[A-Za-z0-9_\-:]+$")
_valid: set[str] = set()


def validate_topic(topic: object) -> str:
    """Return ``topic`` if it is a valid concrete topic name, else raise ConfigurationError."""
    if topic in _valid:
        return topic
    if not isinstance(topic, str) or not topic:
        raise ConfigurationError(f"topic must be a non-empty string, got {topic!r}")
    for token in topic.split("."):
        if not _TOKEN.match(token):
            raise ConfigurationError(
                f"invalid topic {topic!r}: tokens are letters, digits, '_', '-' or ':' "
                "separated by single dots (wildcards are only for subscriptions)"
            )
    if len(_valid) < 10_000:  # publishing checks every event's topic: remember good ones
        _valid.add(topic)
    return topic


class TopicPattern:
    """A compiled subscription pattern: an exact topic or one with ``*`` / ``>`` wildcards."""

    __slots__ = ("_exact", "_tokens", "pattern")

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigurationError(f"topic pattern must be a non-empty string, got {pattern!r}")
        tokens = pattern.split(".")
        for i, token in enumerate(tokens):
            if token == ">" and i != len(tokens) - 1:
                raise ConfigurationError(f"invalid pattern {pattern!r}: '>' must be the last token")
            if token not in ("*", ">") and not _TOKEN.match(token):
                raise ConfigurationError(f"invalid pattern {pattern!r}: bad token {token!r}")
        self.pattern = pattern
        self._tokens = tuple(tokens)
        self._exact = "*" not in tokens and ">" not in tokens

    @property
    def exact(self) -> bool:
        """Whether it is a plain topic (no wildcard)."""
        return self._exact

    def matches(self, topic: str) -> bool:
        """Whether ``topic`` is matched by this pattern."""
        if self._exact:
            return topic == self.pattern
        return _match(self._tokens, topic)

    def __repr__(self) -> str:
        return f"TopicPattern({self.pattern!r})"


@lru_cache(maxsize=4096)
def _match(tokens: tuple[str, ...], topic: str) -> bool:
    parts = topic.split(".")
    for i, token in enumerate(tokens):
        if token == ">":
            return len(parts) > i
        if i >= len(parts) or (token != "*" and token != parts[i]):
            return False
    return len(parts) == len(tokens)
