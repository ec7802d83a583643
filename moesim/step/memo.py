"""Content-keyed memoisation of pure functions of a model spec (the step model's per-model structures).

:func:`by_model` caches ``fn(model, *args)`` on ``(model.fingerprint, *args)``: the model
by the digest of its contents (equal specs share entries, a changed spec gets its own),
every other argument by value (they must be hashable: tuples, numbers, strings, frozen
specs). Bounded (least recently used dropped); ``cache_clear`` empties it, as
:func:`moesim.caches.clear_caches` does. Results are shared: they must not be mutated.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import wraps
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def by_model(maxsize: int) -> Callable[[F], F]:
    def deco(fn: F) -> F:
        cache: OrderedDict = OrderedDict()

        @wraps(fn)
        def wrapper(model, *args):  # noqa: ANN001, ANN202
            key = (model.fingerprint, *args)
            try:
                value = cache[key]
            except KeyError:
                value = cache[key] = fn(model, *args)
                if len(cache) > maxsize:
                    cache.popitem(last=False)
                return value
            cache.move_to_end(key)
            return value

        wrapper.cache_clear = cache.clear  # type: ignore[attr-defined]
        wrapper.cache_size = lambda: len(cache)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return deco
