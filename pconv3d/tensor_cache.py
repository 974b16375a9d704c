"""Values derived from a tensor, reused while that very tensor lives and is not edited.

Keyed by the tensor *object* (a weak reference, so a new tensor at a freed address never hits) and its
version counter (any in-place edit through torch invalidates). The cached tensors' own version counters
are recorded too, so a caller that edits a value it was handed invalidates it. Edits that bypass torch
(``tensor.numpy()``, ``.data``) cannot be seen: :func:`clear_all` is for those.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable
from typing import TypeVar

from torch import Tensor

__all__ = ["PerTensorCache", "clear_all", "stamp", "unstamp"]

V = TypeVar("V", bound=tuple)  # a tuple (or NamedTuple) of tensors
Stamped = tuple  # (value, the version counters of its tensors when it was stored)


def stamp(value: V) -> Stamped:
    """``value`` with the version counters of its tensors, to be stored in a cache."""
    return value, tuple(t._version for t in value)


def unstamp(entry: Stamped | None) -> V | None:
    """The stored value, or ``None`` if there is none or one of its tensors was edited since."""
    if entry is None or tuple(t._version for t in entry[0]) != entry[1]:
        return None
    return entry[0]


class PerTensorCache:
    """Values per (tensor object, its version, key): ``put`` stores one, ``peek`` finds it again while
    the tensor lives unedited.

    Args:
        max_tensors: tensors remembered at once (the oldest is forgotten first).
    """

    def __init__(self, max_tensors: int = 32) -> None:
        self.max_tensors = max_tensors
        self._slots: dict[int, tuple[weakref.ref, int, dict[Hashable, Stamped]]] = {}
        _ALL.add(self)

    def clear(self) -> None:
        self._slots.clear()

    def peek(self, tensor: Tensor, key: Hashable) -> V | None:
        """The value stored for (``tensor`` as it is now, ``key``), or ``None``."""
        slot = self._slots.get(id(tensor))
        if slot is None or slot[0]() is not tensor or slot[1] != tensor._version:
            return None
        return unstamp(slot[2].get(key))

    def put(self, tensor: Tensor, key: Hashable, value: V) -> None:
        """Store ``value`` for (``tensor`` as it is now, ``key``); nothing for inference tensors, which
        have no version counter to tell a later edit."""
        if tensor.is_inference():
            return
        oid = id(tensor)
        slot = self._slots.get(oid)
        if slot is None or slot[0]() is not tensor or slot[1] != tensor._version:
            if len(self._slots) >= self.max_tensors:
                self._slots.pop(next(iter(self._slots)))
            slots = self._slots
            slot = (weakref.ref(tensor, lambda _r: slots.pop(oid, None)), tensor._version, {})
            self._slots[oid] = slot
        slot[2][key] = stamp(value)


_ALL: weakref.WeakSet[PerTensorCache] = weakref.WeakSet()


def clear_all() -> None:
    """Empty every :class:`PerTensorCache` (after editing a tensor behind torch's version counter)."""
    for cache in list(_ALL):
        cache.clear()
