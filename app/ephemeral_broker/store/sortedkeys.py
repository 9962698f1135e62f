"""A sorted set of strings with O(log n) updates and prefix scans that cost O(log n + k).

Listing keys by prefix must not visit the whole store. A single sorted
Python list would make each insert an O(n) memmove; this keeps the keys in chunks of at most
`2 * load` sorted strings, with a list of each chunk's largest key to bisect on, the layout of
the well-known `sortedcontainers.SortedList`, reduced to what the store needs.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator


class SortedKeys:
    __slots__ = ("_chunks", "_len", "_load", "_maxes")

    def __init__(self, load: int = 512) -> None:
        self._load = load
        self._chunks: list[list[str]] = []
        self._maxes: list[str] = []
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def add(self, key: str) -> None:
        """Insert `key`; the caller guarantees it is not present."""
        self._len += 1
        if not self._maxes:
            self._chunks.append([key])
            self._maxes.append(key)
            return
        pos = bisect_left(self._maxes, key)
        if pos == len(self._maxes):
            # Larger than every key: it goes at the end of the last chunk.
            pos -= 1
            self._chunks[pos].append(key)
            self._maxes[pos] = key
        else:
            insort(self._chunks[pos], key)
        if len(self._chunks[pos]) > 2 * self._load:
            chunk = self._chunks[pos]
            half = chunk[self._load :]
            del chunk[self._load :]
            self._chunks.insert(pos + 1, half)
            self._maxes[pos] = chunk[-1]
            self._maxes.insert(pos + 1, half[-1])

    def remove(self, key: str) -> None:
        """Remove `key`; a key that is not present is ignored."""
        pos = bisect_left(self._maxes, key)
        if pos == len(self._maxes):
            return
        chunk = self._chunks[pos]
        idx = bisect_left(chunk, key)
        if idx == len(chunk) or chunk[idx] != key:
            return
        del chunk[idx]
        self._len -= 1
        if not chunk:
            del self._chunks[pos]
            del self._maxes[pos]
        elif idx == len(chunk):
            self._maxes[pos] = chunk[-1]

    def with_prefix(self, prefix: str) -> Iterator[str]:
        """Keys starting with `prefix`, in order, from the first one on: O(log n) to start."""
        pos = bisect_left(self._maxes, prefix)
        if pos == len(self._maxes):
            return
        idx = bisect_left(self._chunks[pos], prefix)
        for chunk in self._chunks[pos:]:
            for key in chunk[idx:] if idx else chunk:
                if not key.startswith(prefix):
                    return
                yield key
            idx = 0
