"""Name -> class registries that configs refer to (mechanism families, datasets, metrics)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Registry(dict):
    """A dict of named classes filled by the `register` decorator; lookups fail with the known names."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: make the class available under `name`."""

        def deco(obj: T) -> T:
            if name in self and self[name] is not obj:
                raise KeyError(f"{self.what} {name!r} is already registered to {self[name]!r}")
            self[name] = obj
            if isinstance(obj, type):
                obj.registry_name = name  # lets saved models name their family
            return obj

        return deco

    def get(self, name: str, default: Any = None) -> Any:  # noqa: D102 - dict API
        return super().get(name, default)

    def __missing__(self, name: str) -> Any:
        raise KeyError(f"unknown {self.what} {name!r}; registered: {sorted(self)}")


MECHANISMS = Registry("mechanism family")
DATASETS = Registry("dataset")
METRICS = Registry("metric")
