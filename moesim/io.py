"""File helpers: read TOML / JSON with one-line errors, write atomically.

Every input file goes through :func:`read_text`, which refuses what cannot be
an input before reading it (a folder, a device or FIFO, a file over
:data:`~moesim.limits.MAX_FILE_BYTES`) and text that is not UTF-8. The parsers
refuse nesting deeper than :data:`~moesim.limits.MAX_NESTING` before parsing
(so a 10,000-deep list cannot exhaust the stack), and turn every parser error
(including integers too long to convert) into :class:`~moesim.errors.InputError`
naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from .errors import InputError
from .limits import MAX_FILE_BYTES, MAX_NESTING


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


#: the errors pathlib's ``Path.exists`` / ``Path.is_dir`` answer False to (Python 3.11 ``pathlib._IGNORED_ERRNOS``)
_ABSENT_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


def is_plain_name(ref: str) -> bool:
    """Whether ``ref`` is one path component (no ``/``, not empty, not ``.``, no NUL), so that
    ``str(Path(ref)) == ref`` and the functions below answer as ``Path(ref)`` would without building it."""
    return bool(ref) and "/" not in ref and ref != "." and "\0" not in ref


def name_suffix(name: str) -> str:
    """``Path(name).suffix`` of a plain name (:func:`is_plain_name`): from its last dot, unless the dot
    starts or ends it."""
    i = name.rfind(".")
    return name[i:] if 0 < i < len(name) - 1 else ""


def stat_if_present(name: str) -> os.stat_result | None:
    """``os.stat(name)``, or None where pathlib's ``exists`` / ``is_dir`` would say False (no such entry, a
    non-folder on the way, a symlink loop, an invalid name); other errors (a name too long) raise ``OSError``
    as they do."""
    try:
        return os.stat(name)
    except OSError as exc:
        if getattr(exc, "errno", None) not in _ABSENT_ERRNOS:
            raise
        return None
    except ValueError:
        return None


def read_bytes(path: Path | str) -> bytes:
    """The bytes of an input file, at most :data:`MAX_FILE_BYTES`; InputError naming the file otherwise."""
    where = str(path)
    try:
        p = Path(path)
        st = p.stat()
        if stat.S_ISDIR(st.st_mode):
            raise InputError("is a folder, not a file", source=where)
        if not stat.S_ISREG(st.st_mode):
            raise InputError("not a regular file (a device, FIFO or socket cannot be an input)", source=where)
        if st.st_size > MAX_FILE_BYTES:
            raise InputError(f"file is {st.st_size:,} bytes; input files are limited to {MAX_FILE_BYTES:,} bytes",
                             source=where)
        with open(p, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError("cannot read file (file not found)", source=where) from None
    except OSError as exc:
        raise InputError(f"cannot read file ({_os_reason(exc)})", source=where) from None
    except ValueError:  # an embedded NUL character in the path
        raise InputError("not a valid path (it contains a NUL character)", source=where) from None
    if len(data) > MAX_FILE_BYTES:
        raise InputError(f"file is over {MAX_FILE_BYTES:,} bytes, the limit for input files", source=where)
    return data


def decode_text(data: bytes, where: str) -> str:
    """``data`` decoded as UTF-8 (a leading byte-order mark is dropped); InputError otherwise."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        hint = ""
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            hint = "; it looks like UTF-16: save it as UTF-8"
        elif b"\x00" in data[:1024]:
            hint = "; it looks like a binary file"
        raise InputError(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}){hint}",
                         source=where) from None
    return text.removeprefix("\ufeff")


def read_text(path: Path | str) -> str:
    """An input file's text (see the module docstring for what is refused)."""
    return decode_text(read_bytes(path), str(path))


# --------------------------------------------------------------------------- nesting

_TOML_TOKENS = re.compile(r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*|[\[\]{}]')
_JSON_TOKENS = re.compile(r'"(?:[^"\\\n]|\\.)*"|[\[\]{}]')


def max_nesting(text: str, *, toml: bool) -> int:
    """Deepest nesting of brackets and braces outside strings (and TOML comments)."""
    depth = best = 0
    for m in (_TOML_TOKENS if toml else _JSON_TOKENS).finditer(text):
        ch = m.group()
        if ch in "[{":
            depth += 1
            if depth > best:
                best = depth
        elif ch in "]}":
            depth = max(0, depth - 1)
    return best


def value_depth(obj: Any) -> int:
    """Nesting depth of parsed tables and arrays (iterative: safe on any depth)."""
    best, stack = 0, [(obj, 0)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            d += 1
            stack.extend((v, d) for v in node.values())
        elif isinstance(node, list):
            d += 1
            stack.extend((v, d) for v in node)
        best = max(best, d)
    return best


def _too_deep(where: str) -> InputError:
    return InputError(f"tables or arrays nested more than {MAX_NESTING} deep; input files are limited to "
                      f"{MAX_NESTING} levels", source=where)


def parse_toml(text: str, where: str) -> dict[str, Any]:
    """Parse TOML text read from ``where`` (InputError naming it on any problem)."""
    if max_nesting(text, toml=True) > MAX_NESTING:
        raise _too_deep(where)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"not valid TOML ({exc})", source=where) from None
    except RecursionError:
        raise _too_deep(where) from None
    except ValueError as exc:  # e.g. an integer over Python's 4300-digit conversion limit
        raise InputError(f"not valid TOML ({str(exc).splitlines()[0][:200]})", source=where) from None
    if value_depth(raw) > MAX_NESTING:
        raise _too_deep(where)
    return raw


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str, where: str) -> Any:
    """Parse JSON text read from ``where`` (standard JSON: NaN and Infinity are refused)."""
    if max_nesting(text, toml=False) > MAX_NESTING:
        raise _too_deep(where)
    try:
        raw = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", source=where) from None
    except RecursionError:
        raise _too_deep(where) from None
    except ValueError as exc:  # NaN / Infinity, or an integer over the 4300-digit limit
        raise InputError(f"not valid JSON ({str(exc).splitlines()[0][:200]})", source=where) from None
    if value_depth(raw) > MAX_NESTING:
        raise _too_deep(where)
    return raw


def read_toml(path: Path | str) -> dict[str, Any]:
    return parse_toml(read_text(path), str(path))


def read_json(path: Path | str) -> Any:
    return parse_json(read_text(path), str(path))


# --------------------------------------------------------------------------- writing

def check_writable(path: Path | str, flag: str) -> None:
    """Refuse an output path that cannot be written, before any work is done.

    The file may not exist yet; its nearest existing folder must be a writable
    folder, and the path must not be a folder itself.
    """
    where = str(path)
    if "\x00" in where:
        raise InputError("not a valid path (it contains a NUL character)", source=flag)
    try:
        p = Path(path)
        if p.is_dir():
            raise InputError(f"{where!s} is a folder; give a file name", source=flag)
        parent = p.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise InputError(f"{parent} is not a folder", source=flag)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"cannot write in {parent} (permission denied)", source=flag)
        if len(p.name.encode("utf-8", "surrogateescape")) > 200:
            raise InputError("file name is too long (more than 200 bytes)", source=flag)
    except InputError:
        raise
    except OSError as exc:
        raise InputError(f"cannot write {where} ({_os_reason(exc)})", source=flag) from None
    except ValueError:
        raise InputError("not a valid path (it contains a NUL character)", source=flag) from None


def _mkdirs(folder: Path) -> list[Path]:
    """Create ``folder`` and missing parents; return the folders created, deepest first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
    return missing


def _stage(path: Path, data: bytes, created: list[Path]) -> str:
    """Write ``data`` to a fsynced temporary file beside ``path``; return its name."""
    try:
        created += _mkdirs(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:100]}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"cannot write file ({_os_reason(exc)})", source=str(path)) from None
    except ValueError:
        raise InputError("not a valid path (it contains a NUL character)", source=str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        _unlink(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write file ({_os_reason(exc)})", source=str(path)) from None
        raise
    return tmp


def _unlink(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


def atomic_write_many(files: list[tuple[Path, bytes]]) -> None:
    """Write several files all or nothing: every one is staged to a temporary file first, then all are renamed.

    When any cannot be staged, none is written and the temporaries and folders
    made for them are removed (:class:`InputError` names the path).
    """
    staged: list[tuple[str, Path]] = []
    created: list[Path] = []
    try:
        for path, data in files:
            staged.append((_stage(Path(path), data, created), Path(path)))
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException as exc:
        for tmp, _ in staged:
            _unlink(tmp)
        for d in created:
            try:
                d.rmdir()
            except OSError:
                pass
        if isinstance(exc, OSError):
            where = next((str(p) for t, p in staged if os.path.exists(t)), str(files[-1][0]) if files else "")
            raise InputError(f"cannot write file ({_os_reason(exc)})", source=where) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Readers see either the old file or the complete new one, never a partial write.
    A path that cannot be written is an :class:`InputError` naming it (nothing is left behind).
    """
    atomic_write_many([(Path(path), data)])


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))
