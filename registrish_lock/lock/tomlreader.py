"""Typed reads of a parsed TOML document, bound to one file: every problem is a
`ConfigError` naming the file, the key path (`image[2].versions`) and the fix; unknown
keys suggest the closest valid one."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..oci.manifest import Platform


class Reader:
    """Validation helpers bound to one file, so each error names it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str | None, problem: str, hint: str | None = None) -> ConfigError:
        return ConfigError(self.path, key, problem, hint=hint)

    def check_keys(self, table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                full = f"{where}.{key}" if where else key
                hint = (
                    f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(allowed)}"
                )
                raise self.fail(full, "unknown key", hint)

    def table(self, value: object, key: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, not {kind_of(value)}")
        return value

    def string(self, value: object, key: str) -> str:
        if value == "":
            raise self.fail(key, "must not be empty")
        if not isinstance(value, str):
            raise self.fail(key, f"must be a non-empty string, not {kind_of(value)}")
        return value

    def strings(self, value: object, key: str) -> tuple[str, ...]:
        if isinstance(value, str):
            raise self.fail(
                key, "must be a list of strings", f'write {key.split(".")[-1]} = ["{value}"]'
            )
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of strings, not {kind_of(value)}")
        if set(map(type, value)) <= {str} and "" not in value:  # 100,000 tags: at C speed
            return tuple(value)
        return tuple(self.string(v, f"{key}[{i}]") for i, v in enumerate(value))

    def integer(self, value: object, key: str, minimum: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.fail(key, f"must be an integer >= {minimum}, not {value!r}")
        return value

    def boolean(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, not {value!r}")
        return value

    def platforms(self, value: object, key: str) -> tuple[Platform, ...]:
        result = []
        for i, text in enumerate(self.strings(value, key)):
            try:
                result.append(Platform.parse(text))
            except ValueError:
                raise self.fail(
                    f"{key}[{i}]",
                    f"invalid platform {text!r}",
                    'use "os/arch[/variant]", e.g. "linux/arm64"',
                ) from None
        if not result:
            raise self.fail(key, "is empty", "omit the key to mirror every platform")
        return tuple(sorted(set(result)))


def kind_of(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
