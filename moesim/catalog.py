"""Find models by bundled name or path: TOML in moesim's vocabulary or a HF config.json."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from . import limits as L
from .data import models_dir
from .errors import InputError, from_validation_error
from .hf_import import load_hf_config, spec_from_hf_dict
from .io import read_toml
from .model import ModelSpec


def bundled_models() -> dict[str, Path]:
    """Bundled model names (file stems under ``scenarios/models``) and their files."""
    return {p.stem: p for p in sorted(models_dir().glob("*.toml"))}


def model_from_toml(path: Path) -> ModelSpec:
    raw = read_toml(path)
    if "model_type" in raw:  # a config.json rewritten as TOML keeps HF names
        return spec_from_hf_dict(raw, str(path))
    raw.setdefault("name", path.stem)
    try:
        return ModelSpec.model_validate(raw)
    except ValidationError as exc:
        raise from_validation_error(exc, str(path), raw, ModelSpec) from None


def load_model(name_or_path: str | Path) -> ModelSpec:
    """Load a bundled model by name (``moesim models list``), a model TOML file, or a HF ``config.json``."""
    if not isinstance(name_or_path, (str, Path)):
        raise InputError(f"expected a model name or path, got {L.short(name_or_path)}", field="model")
    L.PATH.check(str(name_or_path), field="model")
    p = Path(name_or_path)
    try:
        is_dir = p.is_dir()
    except (OSError, ValueError) as exc:  # a name too long for the file system
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a valid path"
        raise InputError(f"cannot use {L.short(str(name_or_path))} as a model ({reason})", field="model") from None
    if p.suffix == ".json" or is_dir:
        if is_dir:
            p = p / "config.json"
        return load_hf_config(p)
    if p.suffix == ".toml":
        return model_from_toml(p)
    known = bundled_models()
    key = str(name_or_path).lower()
    if key not in known:
        raise InputError(
            f"unknown model {L.short(str(name_or_path))}; known: {', '.join(known)} (or a path to a .toml or config.json)",
            field="model",
        )
    return model_from_toml(known[key])
