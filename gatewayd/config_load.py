"""Reading the configuration: main YAML, conf.d in name order, environment, secret files.

pydantic reports the key path of an error but not the file it came from, so the merge keeps
the provenance of every key and the error report names the file (or the environment variable)
that set it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gatewayd.errors import ConfigError
from gatewayd.registry import BUILTIN
from gatewayd.settings import Settings

__all__ = ["ConfigProblem", "InvalidConfig", "load_settings", "read_secret"]

_DRIVER_KINDS = frozenset(spec.kind for spec in BUILTIN)
_ENV_PREFIX = "GATEWAYD_"


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with the configuration."""

    source: str
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.source}: {where}{self.reason}"


class InvalidConfig(ConfigError):
    """The configuration has one or more problems, all listed."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def load_settings(path: Path) -> Settings:
    """Load and validate the configuration rooted at `path`, with `GATEWAYD_*` overrides.

    Raises:
        InvalidConfig: listing every problem with its file and key path.
    """
    env = os.environ
    files = _config_files(path)
    merged: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    problems: list[ConfigProblem] = []
    for file in files:
        try:
            data = _read_yaml(file)
        except ConfigError as exc:
            problems.append(ConfigProblem(str(file), "", str(exc)))
            continue
        _merge(merged, data, (), str(file), origin)
    if problems:
        raise InvalidConfig(problems)
    merged = _resolve_paths(merged, path.parent)
    try:
        settings = _build(merged)
    except ValidationError as exc:
        raise InvalidConfig(_explain(exc, origin, env, str(path))) from None
    return settings


def read_secret(path: Path, environ: Mapping[str, str] | None = None) -> str:
    """Read a secret file; a relative path is looked up in systemd's credentials directory.

    Raises:
        ConfigError: naming the file when it cannot be read.
    """
    env = os.environ if environ is None else environ
    full = path
    if not path.is_absolute() and "CREDENTIALS_DIRECTORY" in env:
        full = Path(env["CREDENTIALS_DIRECTORY"]) / path
    try:
        return full.read_text(encoding="utf-8").strip()
    except OSError as exc:
        msg = f"secret file {full}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc


def _config_files(path: Path) -> list[Path]:
    conf_d = path.parent / "conf.d"
    extra = sorted(conf_d.glob("*.yaml")) if conf_d.is_dir() else []
    return [path, *extra]


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping, not {type(data).__name__}")
    return data


def _merge(
    into: dict[str, Any],
    data: dict[str, Any],
    prefix: tuple[str, ...],
    source: str,
    origin: dict[tuple[str, ...], str],
) -> None:
    """Deep-merge mappings; anything else (lists included) is replaced whole."""
    for key, value in data.items():
        here = (*prefix, str(key))
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, here, source, origin)
        else:
            into[key] = _copy(value)
            _mark(value, here, source, origin)


def _mark(
    value: Any, here: tuple[str, ...], source: str, origin: dict[tuple[str, ...], str]
) -> None:
    origin[here] = source
    if isinstance(value, dict):
        for key, sub in value.items():
            _mark(sub, (*here, str(key)), source, origin)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def _resolve_paths(merged: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative `products` and `state_dir` are relative to the main file, not the cwd."""
    out = dict(merged)
    for key in ("products", "state_dir"):
        value = out.get(key)
        if isinstance(value, str) and not Path(value).is_absolute():
            out[key] = str(base / value)
    return out


def _build(merged: dict[str, Any]) -> Settings:
    return Settings(**merged)


def _explain(
    exc: ValidationError,
    origin: dict[tuple[str, ...], str],
    env: Mapping[str, str],
    main_file: str,
) -> list[ConfigProblem]:
    problems = []
    for error in exc.errors():
        loc = _clean_loc(error["loc"])
        problems.append(
            ConfigProblem(_source_of(loc, origin, env, main_file), ".".join(loc), error["msg"])
        )
    return problems


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    """Drop the union tag pydantic inserts after a connection id."""
    parts = [str(p) for p in loc]
    if len(parts) > 2 and parts[0] == "connections" and parts[2] in _DRIVER_KINDS:
        del parts[2]
    return tuple(parts)


def _source_of(
    loc: tuple[str, ...],
    origin: dict[tuple[str, ...], str],
    env: Mapping[str, str],
    main_file: str,
) -> str:
    env_name = _ENV_PREFIX + "__".join(loc).upper()
    if env_name in env:
        return f"environment {env_name}"
    for end in range(len(loc), 0, -1):
        if loc[:end] in origin:
            return origin[loc[:end]]
    return main_file
