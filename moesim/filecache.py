"""Parse an input file once per content: what a planning script pays when it resolves the same model again.

:func:`parsed` returns ``parse(where, data)`` for the bytes ``data`` of a file, computed
once per distinct (path, content) and kept in a bounded table. Whether the content is
the one already parsed is decided as git decides whether a file changed since its index
was written ("racy git", Documentation/technical/racy-git.txt):

* the file's stat signature (device, inode, size, modification and change times in
  nanoseconds) equals the one recorded when it was parsed, **and** its change time is
  more than :data:`RACY_S` older than that moment: the kernel sets the change time to
  "now" on every write, rename or ``utime`` (it cannot be set back by a user), so a file
  whose change time is that old has not been written since; the bytes are not read;
* otherwise (a new file, a different signature, a file written just before it was
  parsed) the bytes are read and compared with the parsed ones: the key is the content.

Errors are not kept (a broken file is read and reported again). ``cache_clear`` empties
the table (:func:`moesim.caches.clear_caches`).
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from typing import Any, Callable

#: a file's change time must be this much older than the moment it was parsed for its stat signature to be trusted
RACY_S = 2.0
MAX_ENTRIES = 128


class _FileCache:
    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        # (parser, path) -> (stat signature, parsed at ns, bytes, value)
        self.data: OrderedDict[tuple[Any, str], tuple[tuple[int, ...], int, bytes, Any]] = OrderedDict()
        self.cache_clear = self.data.clear  # an attribute of the instance, not the class (moesim.caches scans both)



_CACHE = _FileCache(MAX_ENTRIES)


def signature(where: str) -> tuple[int, ...] | None:
    """The stat signature :func:`parsed` compares, or None where the file cannot be stat-ed (``os.path.exists``
    would say False): a caller that checks a file's existence this way passes it on to :func:`parsed`."""
    try:
        st = os.stat(where)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


_STAT = object()  # parsed(): stat the file itself


def parsed(where: str, read: Callable[[str], bytes], parse: Callable[[str, bytes], Any], sig: Any = _STAT) -> Any:
    """``parse(where, read(where))``, computed once per distinct content of the file ``where`` (see module docstring).

    ``sig`` is the file's :func:`signature` when the caller has just taken it (one stat instead of two).

    ``read`` is the checked reader (:func:`moesim.io.read_bytes`): it runs, and raises, whenever the bytes are
    needed. The value is shared between calls: it must be immutable (frozen specs) or copied by the caller.
    """
    key = (parse, where)
    entry = _CACHE.data.get(key)
    if sig is _STAT:
        sig = signature(where)
    if entry is not None and sig is not None and sig == entry[0] and sig[4] < entry[1] - int(RACY_S * 1e9):
        _CACHE.data.move_to_end(key)
        return entry[3]
    now = time.time_ns()
    data = read(where)
    if entry is not None and entry[2] == data:
        value = entry[3]
    else:
        value = parse(where, data)
    after = signature(where)
    if after is not None and after == sig:  # unchanged while it was read: the signature describes these bytes
        _CACHE.data[key] = (sig, now, data, value)
        _CACHE.data.move_to_end(key)
        while len(_CACHE.data) > _CACHE.maxsize:
            _CACHE.data.popitem(last=False)
    return value
