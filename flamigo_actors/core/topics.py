"""Hierarchical topics, wildcard patterns and the trie that routes by them.

A topic is a non-empty sequence of segments written ``users/42/profile``.
A pattern is a topic in which ``*`` may stand for segments:

============  ======================================  ==========================
pattern       matches                                 does not match
============  ======================================  ==========================
``users/42``  ``users/42``                            ``users``, ``users/42/x``
``users/*``   ``users/42``, ``users/42/profile``      ``users``
``a/*/c``     ``a/b/c``                               ``a/c``, ``a/b/b/c``
``*``         every topic                             --
============  ======================================  ==========================

``*`` in a middle position matches exactly one segment; a trailing ``*``
matches one or more remaining segments; a lone ``*`` is a trailing ``*`` and so
matches every topic.

:class:`TopicTrie` indexes patterns so that matching a topic costs time
proportional to the topic's depth and the number of matches, not to the number
of patterns stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["WILDCARD", "Topic", "TopicError", "TopicTrie", "matches"]

WILDCARD = "*"
SEPARATOR = "/"


class TopicError(ValueError):
    """A topic or pattern is malformed (empty, empty segment, ``/`` inside a part...)."""


class Topic(str):
    """A validated topic or pattern; a ``str`` subclass, so it prints and hashes as text.

    Build one from parts (``Topic.of("users", 42)``) or parse a string
    (``Topic("users/42")``). Segments are non-empty and contain no ``/``.
    """

    __slots__ = ()

    def __new__(cls, text: str) -> Topic:
        if isinstance(text, Topic):
            return text
        if not isinstance(text, str):
            raise TopicError(f"a topic must be a string, got {type(text).__name__}")
        if not text:
            raise TopicError("a topic may not be empty")
        for segment in text.split(SEPARATOR):
            if not segment:
                raise TopicError(
                    f"topic {text!r} has an empty segment: no leading, trailing or double '/'"
                )
        return super().__new__(cls, text)

    @classmethod
    def of(cls, *parts: object) -> Topic:
        """Join ``parts`` (converted with ``str``) into a topic.

        Raises:
            TopicError: when there are no parts, a part is empty or contains ``/``.
        """
        if not parts:
            raise TopicError("a topic needs at least one part")
        texts = [str(part) for part in parts]
        for text in texts:
            if not text:
                raise TopicError(f"empty part in topic parts {texts!r}")
            if SEPARATOR in text:
                raise TopicError(
                    f"topic part {text!r} contains '/': pass each segment as its own part"
                )
        return cls(SEPARATOR.join(texts))

    @property
    def segments(self) -> tuple[str, ...]:
        """The topic's segments, in order."""
        return tuple(self.split(SEPARATOR))

    @property
    def is_pattern(self) -> bool:
        """True when any segment is the wildcard ``*``."""
        return WILDCARD in self.segments


def matches(pattern: str, topic: str) -> bool:
    """Whether ``pattern`` matches ``topic`` (the reference definition, used by tests).

    The trie must agree with this function on every input.
    """
    p = Topic(pattern).segments
    t = Topic(topic).segments
    last = len(p) - 1
    for i, segment in enumerate(p):
        if i == last and segment == WILDCARD:
            return len(t) > i  # trailing '*': one or more remaining segments
        if i >= len(t):
            return False
        if segment != WILDCARD and segment != t[i]:
            return False
    return len(t) == len(p)


S = TypeVar("S")


class _Node(Generic[S]):
    __slots__ = ("children", "star", "exact", "tail")

    def __init__(self) -> None:
        self.children: dict[str, _Node[S]] = {}
        self.star: _Node[S] | None = None  # a middle '*': exactly one segment
        self.exact: dict[S, None] = {}  # patterns that end here
        self.tail: dict[S, None] = {}  # patterns that end here with a trailing '*'

    def is_empty(self) -> bool:
        return not (self.children or self.star or self.exact or self.tail)


class TopicTrie(Generic[S]):
    """An index from patterns to subscribers (any hashable values).

    Subscribers are kept in insertion order so deliveries are deterministic.
    Removing the last subscriber of a branch prunes the branch, so a trie that
    had everything removed is empty again (see :meth:`node_count`).
    """

    def __init__(self) -> None:
        self._root: _Node[S] = _Node()
        self._size = 0

    def __len__(self) -> int:
        """Number of (pattern, subscriber) entries."""
        return self._size

    def add(self, pattern: str, subscriber: S) -> bool:
        """Index ``subscriber`` under ``pattern``; returns False if it already was."""
        segments = Topic(pattern).segments
        node = self._root
        last = len(segments) - 1
        for i, segment in enumerate(segments):
            if segment == WILDCARD and i == last:
                return self._put(node.tail, subscriber)
            if segment == WILDCARD:
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                child = node.children.get(segment)
                if child is None:
                    child = node.children[segment] = _Node()
                node = child
        return self._put(node.exact, subscriber)

    def _put(self, bucket: dict[S, None], subscriber: S) -> bool:
        if subscriber in bucket:
            return False
        bucket[subscriber] = None
        self._size += 1
        return True

    def remove(self, pattern: str, subscriber: S) -> bool:
        """Remove ``subscriber`` from ``pattern``; returns False if it was not there."""
        segments = Topic(pattern).segments
        path: list[tuple[_Node[S], str]] = []
        node = self._root
        last = len(segments) - 1
        bucket: dict[S, None] | None = None
        for i, segment in enumerate(segments):
            if segment == WILDCARD and i == last:
                bucket = node.tail
                break
            nxt = node.star if segment == WILDCARD else node.children.get(segment)
            if nxt is None:
                return False
            path.append((node, segment))
            node = nxt
        if bucket is None:
            bucket = node.exact
        if subscriber not in bucket:
            return False
        del bucket[subscriber]
        self._size -= 1
        self._prune(path, node)
        return True

    @staticmethod
    def _prune(path: list[tuple[_Node[S], str]], node: _Node[S]) -> None:
        while path and node.is_empty():
            parent, segment = path.pop()
            if segment == WILDCARD:
                parent.star = None
            else:
                del parent.children[segment]
            node = parent

    def match(self, topic: str) -> dict[S, None]:
        """Subscribers whose patterns match ``topic``, each once, in a stable order."""
        found: dict[S, None] = {}
        self.collect(topic.split(SEPARATOR), found)
        return found

    def collect(self, segments: list[str], found: dict[S, None]) -> None:
        """Add to ``found`` the subscribers matching the (already split) topic."""
        depth = len(segments)
        # Iterative walk over (node, index): at most 2 branches per level (name, '*').
        stack: list[tuple[_Node[S], int]] = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            if i == depth:
                if node.exact:
                    found.update(node.exact)
                continue
            if node.tail:
                found.update(node.tail)
            if node.star is not None:
                stack.append((node.star, i + 1))
            child = node.children.get(segments[i])
            if child is not None:
                stack.append((child, i + 1))

    def node_count(self) -> int:
        """Number of trie nodes below the root (0 when empty): for leak checks."""
        count = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            kids = list(node.children.values())
            if node.star is not None:
                kids.append(node.star)
            count += len(kids)
            stack.extend(kids)
        return count

    def patterns(self) -> Iterator[tuple[str, list[S]]]:
        """Every stored pattern with its subscribers (for inspection)."""
        stack: list[tuple[_Node[S], tuple[str, ...]]] = [(self._root, ())]
        while stack:
            node, prefix = stack.pop()
            if node.exact:
                yield SEPARATOR.join(prefix), list(node.exact)
            if node.tail:
                yield SEPARATOR.join(prefix + (WILDCARD,)), list(node.tail)
            for name, child in node.children.items():
                stack.append((child, prefix + (name,)))
            if node.star is not None:
                stack.append((node.star, prefix + (WILDCARD,)))


def parse_all(topics: Iterable[str]) -> tuple[Topic, ...]:
    """Validate many topics at once; raises :class:`TopicError` on the first bad one."""
    return tuple(Topic(t) for t in topics)
