"""Reading the configuration: main YAML, conf.d in name order, environment, secret files.

pydantic reports the key path of an error but not the file it came from, so every file keeps
the line of each of its keys (`gatewayd.config_yaml`) and the error report names the file and
line (or the environment variable) that set it. What no single key can show (the same device
in two connections, a state directory that is a file) is checked once the models are valid
(`gatewayd.config_checks`), and reported the same way.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from gatewayd.config_checks import Finding, conflict_findings, product_findings
from gatewayd.config_yaml import YamlDocument, YamlProblem, read_yaml
from gatewayd.errors import ConfigError
from gatewayd.products import ProductCatalog
from gatewayd.registry import BUILTIN
from gatewayd.settings import Settings

__all__ = [
    "ConfigProblem",
    "InvalidConfig",
    "LoadedConfig",
    "load_config",
    "load_settings",
    "read_secret",
]

_DRIVER_KINDS = frozenset(spec.kind for spec in BUILTIN)
_ENV_PREFIX = "GATEWAYD_"


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with the configuration: where (file or variable, line, key) and why."""

    source: str
    path: str
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{_clip(self.path, 200)}: " if self.path else ""
        at = f" (line {self.line})" if self.line is not None else ""
        return f"{self.source}: {where}{_clip(self.reason, 500)}{at}"


def _clip(text: str, most: int) -> str:
    """A hostile key or value is named, not printed whole."""
    return text if len(text) <= most else f"{text[: most - 20]}... ({len(text):,} characters)"


class InvalidConfig(ConfigError):
    """The configuration has one or more problems, all listed."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """Valid settings, and where each of their keys was written (for later findings)."""

    settings: Settings
    files: tuple[tuple[str, YamlDocument], ...]
    main_file: str

    def problem(self, finding: Finding) -> ConfigProblem:
        """The finding at the file (or variable) and line that set its key."""
        source, line = _where(finding.path, self.files, os.environ, self.main_file)
        return ConfigProblem(source, ".".join(finding.path), finding.reason, line)

    def product_warnings(self, products: ProductCatalog) -> list[ConfigProblem]:
        """Devices and points the product files do not describe (see `product_findings`)."""
        return [self.problem(f) for f in product_findings(self.settings, products)]


def load_settings(path: Path) -> Settings:
    """Load and validate the configuration rooted at `path`, with `GATEWAYD_*` overrides.

    Raises:
        InvalidConfig: listing every problem with its file, line and key path.
    """
    return load_config(path).settings


def load_config(path: Path) -> LoadedConfig:
    """`load_settings`, keeping where every key was written.

    Raises:
        InvalidConfig: listing every problem with its file, line and key path.
    """
    env = os.environ
    main_file = str(path)
    docs: list[tuple[str, YamlDocument]] = []
    problems: list[ConfigProblem] = []
    for file in _config_files(path):
        try:
            docs.append((str(file), read_yaml(file)))
        except YamlProblem as exc:
            problems.append(ConfigProblem(str(file), ".".join(exc.path), exc.reason, exc.line))
    problems += _unknown_variables(env)
    if problems:
        raise InvalidConfig(problems)
    merged: dict[str, Any] = {}
    for _, doc in docs:
        _merge(merged, doc.data)
    merged = _resolve_paths(merged, path.parent)
    files = tuple(docs)
    try:
        settings = _build(merged)
    except ValidationError as exc:
        raise InvalidConfig(_explain(exc, files, env, main_file)) from None
    except SettingsError as exc:
        raise InvalidConfig(_unparsable_variables(exc, env)) from None
    except RecursionError:  # the files are bounded (config_yaml): JSON in a variable is not
        raise InvalidConfig(_too_deep_variables(env)) from None
    loaded = LoadedConfig(settings, files, main_file)
    conflicts = [loaded.problem(f) for f in conflict_findings(settings)]
    if conflicts:
        raise InvalidConfig(conflicts)
    return loaded


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


def _unknown_variables(env: Mapping[str, str]) -> list[ConfigProblem]:
    """A `GATEWAYD_*` variable naming no setting is refused, as an unknown YAML key is.

    pydantic-settings alone skips a variable whose first part names no field, and one that
    goes below a single value (`GATEWAYD_STATE_DIR__X`): the setting would silently not apply.
    """
    problems = []
    for name in sorted(env):
        if not name.lower().startswith(_ENV_PREFIX.lower()):
            continue
        parts = tuple(name[len(_ENV_PREFIX) :].lower().split("__"))
        reason = _no_setting(parts)
        if reason is not None:
            problems.append(ConfigProblem(f"environment {name}", ".".join(parts), reason))
    return problems


def _no_setting(parts: tuple[str, ...]) -> str | None:
    """Why `parts` names no setting, or None when it does in some model it may reach.

    Every alternative of a union is followed (a connection is one of the drivers' models),
    so `GATEWAYD_CONNECTIONS__METER__PORT` passes and a key no driver has does not.
    """
    candidates: list[Any] = [Settings]
    for depth, part in enumerate(parts):
        found: list[Any] = []
        models: list[type[BaseModel]] = []
        for annotation in candidates:
            for alternative in _alternatives(annotation):
                if isinstance(alternative, type) and issubclass(alternative, BaseModel):
                    models.append(alternative)
                    if part in alternative.model_fields:
                        found.append(alternative.model_fields[part].annotation)
                elif get_origin(alternative) is dict:
                    found.append(get_args(alternative)[1])
        if not found:
            where = ".".join(parts[:depth])
            if not models:
                return f"no such setting: {where} is a single value, with no keys"
            keys = f" ({', '.join(sorted(models[0].model_fields))})" if len(models) == 1 else ""
            place = f"in {where}" if depth else "at the top level"
            return f"no such setting: {part or '(empty)'!r} is not a key {place}{keys}"
        candidates = found
    return None


def _alternatives(annotation: Any) -> list[Any]:
    """The types a value of `annotation` may have: unions and Annotated unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _alternatives(get_args(annotation)[0])
    if origin in {Union, UnionType}:
        return [a for arg in get_args(annotation) for a in _alternatives(arg)]
    return [annotation]


def _unparsable_variables(exc: SettingsError, env: Mapping[str, str]) -> list[ConfigProblem]:
    """pydantic-settings names the field whose variable is not JSON; name the variable."""
    match = re.search(r'field "([^"]+)"', str(exc))
    field = match.group(1) if match else ""
    problems = []
    for name in sorted(env):
        lowered = name.lower()
        target = (_ENV_PREFIX + field).lower()
        if field and (lowered == target or lowered.startswith(target + "__")):
            try:
                json.loads(env[name])
            except ValueError as bad:
                path = ".".join(lowered[len(_ENV_PREFIX) :].split("__"))
                reason = f"a section is set as JSON, and this is not JSON: {bad}"
                problems.append(ConfigProblem(f"environment {name}", path, reason))
    if not problems:
        problems.append(ConfigProblem("environment", field, str(exc)))
    return problems


def _too_deep_variables(env: Mapping[str, str]) -> list[ConfigProblem]:
    problems = []
    for name in sorted(env):
        if name.lower().startswith(_ENV_PREFIX.lower()):
            try:
                json.loads(env[name])
            except RecursionError:
                path = ".".join(name[len(_ENV_PREFIX) :].lower().split("__"))
                problems.append(ConfigProblem(f"environment {name}", path, "nested too deeply"))
            except ValueError:
                continue
    return problems or [ConfigProblem("environment", "", "a value is nested too deeply")]


def _merge(into: dict[str, Any], data: dict[str, Any]) -> None:
    """Deep-merge mappings; anything else (lists included) is replaced whole."""
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = _copy(value)


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
    files: tuple[tuple[str, YamlDocument], ...],
    env: Mapping[str, str],
    main_file: str,
) -> list[ConfigProblem]:
    problems = []
    for error in exc.errors():
        loc = _clean_loc(error["loc"])
        msg = str(error["msg"]).removeprefix("Value error, ")
        if not loc:  # a check of the whole file names its key path first
            lifted = re.match(r"^([\w.:-]+): (.*)$", msg, re.DOTALL)
            if lifted:
                loc, msg = tuple(lifted.group(1).split(".")), lifted.group(2)
        if error["type"] == "literal_error":
            expected = str(error.get("ctx", {}).get("expected", ""))
            supported = expected.replace("'", "").replace(" or ", ", ")
            msg = f"{error['input']!r} is not supported (supported: {supported})"
        source, line = _where(loc, files, env, main_file)
        problems.append(ConfigProblem(source, ".".join(loc), msg, line))
    return problems


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    """Drop the union tag pydantic inserts after a connection id."""
    parts = [str(p) for p in loc]
    if len(parts) > 2 and parts[0] == "connections" and parts[2] in _DRIVER_KINDS:
        del parts[2]
    return tuple(parts)


def _where(
    loc: tuple[str, ...],
    files: tuple[tuple[str, YamlDocument], ...],
    env: Mapping[str, str],
    main_file: str,
) -> tuple[str, int | None]:
    """The variable or file that wrote the longest prefix of `loc`, and its line.

    A variable beats the files (it overrides them); among the files, the last one that wrote
    a key wins, as it does when they are merged; a key no file wrote was made by a variable
    that sets a key below it.
    """
    lowered = {name.lower(): name for name in sorted(env)}
    for end in range(len(loc), 0, -1):
        name = (_ENV_PREFIX + "__".join(loc[:end])).lower()
        if name in lowered:
            return f"environment {lowered[name]}", None
        for file, doc in reversed(files):
            line = doc.lines.get(loc[:end])
            if line is not None:
                return file, line
        below = [n for n in lowered if n.startswith(name + "__")]
        if below:  # no file wrote this key: a variable setting a key below it made it
            return f"environment {lowered[below[0]]}", None
    return main_file, None
