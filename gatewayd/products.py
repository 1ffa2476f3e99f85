"""Product models: the services, properties and commands a kind of device offers.

Products are read from YAML files (one product per file) in the `products` directory and are
validated at load, with errors naming the file and the field. Desired and reported values are
checked against them with `PropertyDef.check`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gatewayd.config_yaml import YamlProblem, read_yaml
from gatewayd.errors import ConfigError

__all__ = [
    "CommandDef",
    "Product",
    "ProductCatalog",
    "ProductError",
    "PropertyDef",
    "PropertyType",
    "ServiceDef",
    "load_products",
]

PropertyType = Literal["int", "decimal", "string", "bool", "datetime", "json"]
Access = Literal["R", "W", "RW"]

_PRODUCT_ID = r"^[A-Za-z0-9_-]{1,36}$"
# Service ids follow IoTDA's rule for shadow service ids: 32 characters of this set.
_SERVICE_ID = r"^[\w?'#().,&%@!-]{1,32}$"
_PROPERTY_NAME = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
_INT_TEXT = re.compile(r"^[+-]?\d+$")
_COMPACT_TIME = re.compile(r"^\d{8}T\d{6}Z$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PropertyDef(_Frozen):
    """One property of a service (or one parameter of a command)."""

    name: str = Field(pattern=_PROPERTY_NAME, description="Property name.")
    type: PropertyType = Field(description="Value type.")
    unit: str | None = Field(default=None, description="Engineering unit.")
    min: float | None = Field(default=None, description="Smallest value (int, decimal).")
    max: float | None = Field(default=None, description="Largest value (int, decimal).")
    max_length: int | None = Field(default=None, ge=1, description="Longest string.")
    default: Any = Field(default=None, description="Initial desired value of a new device.")
    access: Access = Field(default="R", description="R: reported only; W or RW: settable.")
    description: str | None = None

    @property
    def writable(self) -> bool:
        """Desired state may set it."""
        return "W" in self.access

    def check(self, value: Any) -> Any:
        """The value in its stored form, or ValueError saying why it does not fit.

        Numeric text ("60") is accepted for int and decimal properties and stored as a number:
        clients (and IoTDA's own examples) send numbers as strings.
        """
        checked = _CHECKS[self.type](value, self)
        if self.type in ("int", "decimal"):
            if self.min is not None and checked < self.min:
                raise ValueError(f"{checked} is below the minimum {_num(self.min)}")
            if self.max is not None and checked > self.max:
                raise ValueError(f"{checked} is above the maximum {_num(self.max)}")
        return checked

    @model_validator(mode="after")
    def _consistent(self) -> PropertyDef:
        if (self.min is not None or self.max is not None) and self.type not in ("int", "decimal"):
            raise ValueError("min and max apply only to int and decimal properties")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {_num(self.min)} is above max {_num(self.max)}")
        if self.max_length is not None and self.type != "string":
            raise ValueError("max_length applies only to string properties")
        if self.default is not None:
            try:
                object.__setattr__(self, "default", self.check(self.default))
            except ValueError as exc:
                raise ValueError(f"default: {exc}") from None
        return self


class CommandDef(_Frozen):
    """A command a service accepts."""

    name: str = Field(pattern=_PROPERTY_NAME, description="Command name.")
    description: str | None = None
    paras: tuple[PropertyDef, ...] = Field(default=(), description="Parameters.")
    responses: tuple[PropertyDef, ...] = Field(default=(), description="Fields of the reply.")

    @model_validator(mode="after")
    def _unique(self) -> CommandDef:
        _no_duplicates([p.name for p in self.paras], "paras", "parameter")
        _no_duplicates([p.name for p in self.responses], "responses", "field")
        return self


class ServiceDef(_Frozen):
    """A group of properties and commands (IoTDA's service)."""

    service_id: str = Field(pattern=_SERVICE_ID, description="Service id.")
    description: str | None = None
    properties: tuple[PropertyDef, ...] = Field(default=())
    commands: tuple[CommandDef, ...] = Field(default=())

    @model_validator(mode="after")
    def _unique(self) -> ServiceDef:
        _no_duplicates([p.name for p in self.properties], "properties", "property")
        _no_duplicates([c.name for c in self.commands], "commands", "command")
        return self

    def property(self, name: str) -> PropertyDef | None:
        """The property of that name, if the service has one."""
        for prop in self.properties:
            if prop.name == name:
                return prop
        return None

    def defaults(self) -> dict[str, Any]:
        """Default values of the settable properties: a new device's desired state."""
        return {p.name: p.default for p in self.properties if p.writable and p.default is not None}


class Product(_Frozen):
    """A product model."""

    product_id: str = Field(pattern=_PRODUCT_ID, description="Product id.")
    name: str = Field(min_length=1, max_length=64, description="Product name.")
    description: str | None = None
    manufacturer: str | None = None
    device_type: str | None = None
    services: tuple[ServiceDef, ...] = Field(default=())

    @model_validator(mode="after")
    def _unique(self) -> Product:
        _no_duplicates([s.service_id for s in self.services], "services", "service")
        return self

    def service(self, service_id: str) -> ServiceDef | None:
        """The service of that id, if the product has one."""
        for service in self.services:
            if service.service_id == service_id:
                return service
        return None


class ProductError(ConfigError):
    """Product files are invalid; every problem is listed with its file and field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class ProductCatalog(Mapping[str, Product]):
    """The loaded products, keyed by product_id.

    Args:
        products: the products.
    """

    def __init__(self, products: Mapping[str, Product] | None = None) -> None:
        self._products = dict(products or {})

    def __getitem__(self, product_id: str) -> Product:
        return self._products[product_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._products)

    def __len__(self) -> int:
        return len(self._products)


def load_products(directory: Path | None) -> ProductCatalog:
    """Load every `*.yaml` / `*.yml` file of `directory` (None: no products).

    Raises:
        ProductError: listing every problem as `FILE: FIELD: REASON`.
    """
    if directory is None:
        return ProductCatalog()
    if not directory.is_dir():
        raise ProductError([f"{directory}: products directory does not exist"])
    problems: list[str] = []
    products: dict[str, Product] = {}
    origin: dict[str, Path] = {}
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    for file in files:
        try:
            product = _load_file(file)
        except ProductError as exc:
            problems.extend(exc.problems)
            continue
        if product.product_id in products:
            problems.append(
                f"{file}: product_id: {product.product_id!r} is also defined in "
                f"{origin[product.product_id]}"
            )
            continue
        products[product.product_id] = product
        origin[product.product_id] = file
    if problems:
        raise ProductError(problems)
    return ProductCatalog(products)


def _load_file(file: Path) -> Product:
    """One product file, read under the configuration's YAML bounds (`gatewayd.config_yaml`)."""
    try:
        doc = read_yaml(file)
    except YamlProblem as exc:
        loc = ".".join(exc.path)
        at = f" (line {exc.line})" if exc.line is not None else ""
        raise ProductError([f"{file}: {loc + ': ' if loc else ''}{exc.reason}{at}"]) from None
    if not doc.data:
        raise ProductError([f"{file}: the top level must be a mapping (one product per file)"])
    try:
        return Product.model_validate(doc.data)
    except ValidationError as exc:
        raise ProductError([_describe(file, err, doc.lines) for err in exc.errors()]) from None


def _describe(file: Path, error: Any, lines: Mapping[tuple[str, ...], int]) -> str:
    path = tuple(str(p) for p in error["loc"])
    msg = str(error["msg"]).removeprefix("Value error, ")
    line = next((lines[path[:end]] for end in range(len(path), 0, -1) if path[:end] in lines), None)
    at = f" (line {line})" if line is not None else ""
    return f"{file}: {'.'.join(path)}: {msg}{at}" if path else f"{file}: {msg}{at}"


def _no_duplicates(names: list[str], field: str, what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{field}: {what} {name!r} is defined twice")
        seen.add(name)


def _num(value: float) -> str:
    return str(int(value)) if value.is_integer() else str(value)


def _check_int(value: Any, prop: PropertyDef) -> int:
    del prop
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")  # noqa: TRY004 - a bad value to the caller
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_TEXT.match(value.strip()):
        return int(value)
    raise ValueError(f"expected an integer, got {value!r}")


def _check_decimal(value: Any, prop: PropertyDef) -> float:
    del prop
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")  # noqa: TRY004 - a bad value to the caller
    number: float
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    else:
        raise ValueError(f"expected a number, got {value!r}")  # noqa: TRY004 - a bad value to the caller
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def _check_string(value: Any, prop: PropertyDef) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")  # noqa: TRY004 - a bad value to the caller
    if prop.max_length is not None and len(value) > prop.max_length:
        raise ValueError(f"longer than {prop.max_length} characters")
    return value


def _check_bool(value: Any, prop: PropertyDef) -> bool:
    del prop
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")  # noqa: TRY004 - a bad value to the caller
    return value


def _check_datetime(value: Any, prop: PropertyDef) -> str:
    del prop
    if isinstance(value, str):
        if _COMPACT_TIME.match(value):
            return value
        try:
            datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return value
    raise ValueError(f"expected an ISO 8601 or yyyyMMddTHHmmssZ time, got {value!r}")


def _check_json(value: Any, prop: PropertyDef) -> Any:
    del prop
    # Scalars first, without encoding them: every reported value of a device without a
    # product is checked here, 50,000 a second on a busy gateway.
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise ValueError("not representable as JSON")
        return value
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise ValueError("not representable as JSON") from None
    return value


_CHECKS = {
    "int": _check_int,
    "decimal": _check_decimal,
    "string": _check_string,
    "bool": _check_bool,
    "datetime": _check_datetime,
    "json": _check_json,
}
