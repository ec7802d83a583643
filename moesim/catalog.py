"""Find models by bundled name or path: TOML in moesim's vocabulary or a HF config.json."""

from __future__ import annotations

import os
from stat import S_ISDIR
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import limits as L
from .data import models_dir
from .errors import InputError, from_validation_error
from .filecache import parsed, signature
from .io import decode_text, is_plain_name, name_suffix, parse_toml, read_bytes, stat_if_present
from .model import ModelSpec


def bundled_models() -> dict[str, Path]:
    """Bundled model names (file stems under ``scenarios/models``) and their files."""
    return {p.stem: p for p in sorted(models_dir().glob("*.toml"))}


def model_from_toml(path: Path | str, _sig: Any = None) -> ModelSpec:
    """The model a TOML file describes: parsed and validated once per distinct content of the file
    (:func:`moesim.filecache.parsed`). Calls share the one frozen object of a content: ``model_copy(update=...)``
    gives a changed copy; its tables are not to be changed in place."""
    if _sig is None:
        return parsed(str(path), read_bytes, _parse_model)
    return parsed(str(path), read_bytes, _parse_model, _sig)


def _parse_model(where: str, data: bytes) -> ModelSpec:
    raw = parse_toml(decode_text(data, where), where)
    if "model_type" in raw:  # a config.json rewritten as TOML keeps HF names
        from .hf_import import spec_from_hf_dict  # local: only HF configs need the importer

        return _prepared(spec_from_hf_dict(raw, where))
    raw.setdefault("name", Path(where).stem)
    try:
        spec = ModelSpec.model_validate(raw)
    except ValidationError as exc:
        raise from_validation_error(exc, where, raw, ModelSpec) from None
    return _prepared(spec)


def _prepared(spec: ModelSpec) -> ModelSpec:
    """``spec`` with its derived values computed once, for every caller that gets it."""
    from .params import count_params

    for name, attr in vars(type(spec)).items():
        if isinstance(attr, cached_property):
            getattr(spec, name)
    count_params(spec)
    return spec


def bundled_model_path(name: str) -> Path | None:
    """The file of bundled model ``name`` (a key of :func:`bundled_models`) without listing the folder."""
    p = _bundled_model_file(name)
    return Path(p) if p is not None else None


def _bundled_model_file(name: str) -> str | None:
    found = _bundled_model(name)
    return found[0] if found is not None else None


def _bundled_model(name: str) -> tuple[str, tuple[int, ...]] | None:
    """(file, its stat signature) of bundled model ``name``, or None."""
    p = _model_candidate(_models_dir(), name)
    if p is None:
        return None
    sig = signature(p)  # None for a name too long for the file system, as os.path.exists says False
    return (p, sig) if sig is not None else None


@lru_cache(maxsize=1024)
def _model_candidate(root: str, name: str) -> str | None:
    """The file under ``root`` that bundled model ``name`` would be; None for a name that is not one plain
    file-name stem."""
    if not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        return None
    return os.path.join(root, name + ".toml")


@lru_cache(maxsize=1)
def _models_dir() -> str:
    return str(models_dir())


def load_model(name_or_path: str | Path) -> ModelSpec:
    """Load a bundled model by name (``moesim models list``), a model TOML file, or a HF ``config.json``."""
    if not isinstance(name_or_path, (str, Path)):
        raise InputError(f"expected a model name or path, got {L.short(name_or_path)}", field="model")
    L.PATH.check(str(name_or_path), field="model")
    # a bare name (most calls) is looked up as Path(name) would be, without building one
    plain = isinstance(name_or_path, str) and is_plain_name(name_or_path)
    p = None if plain else Path(name_or_path)
    try:
        if plain:
            st = stat_if_present(name_or_path)  # type: ignore[arg-type]
            is_dir = st is not None and S_ISDIR(st.st_mode)
        else:
            is_dir = p.is_dir()  # type: ignore[union-attr]
    except (OSError, ValueError) as exc:  # a name too long for the file system
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a valid path"
        raise InputError(f"cannot use {L.short(str(name_or_path))} as a model ({reason})", field="model") from None
    suffix = name_suffix(name_or_path) if plain else p.suffix  # type: ignore[arg-type, union-attr]
    if suffix == ".json" or is_dir:
        p = Path(name_or_path)
        if is_dir:
            p = p / "config.json"
        from .hf_import import load_hf_config  # local: only HF configs need the importer

        return load_hf_config(p)
    if suffix == ".toml":
        return model_from_toml(Path(name_or_path))
    key = str(name_or_path).lower()
    found = _bundled_model(key)
    if found is None:
        known = bundled_models()
        raise InputError(
            f"unknown model {L.short(str(name_or_path))}; known: {', '.join(known)} (or a path to a .toml or config.json)",
            field="model",
        )
    return model_from_toml(*found)
