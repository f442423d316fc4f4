"""The part of ``annotated_types`` that pico uses (Gt, Ge, Lt, Le, Interval, GroupedMetadata), for machines that
lack the package and cannot install it (the lent GPU machine has no registry access). bench/gpu_check.py puts this
folder on sys.path only when ``import annotated_types`` fails; everywhere else the real package (a declared
dependency of pico) is used. Same names and behaviour for that subset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

__version__ = "0.0+pico-bench-compat"


class BaseMetadata:
    __slots__ = ()


@dataclass(frozen=True)
class Gt(BaseMetadata):
    gt: Any


@dataclass(frozen=True)
class Ge(BaseMetadata):
    ge: Any


@dataclass(frozen=True)
class Lt(BaseMetadata):
    lt: Any


@dataclass(frozen=True)
class Le(BaseMetadata):
    le: Any


class GroupedMetadata:
    """A group of constraints that iterates into single bounds."""

    def __iter__(self) -> Iterator[object]:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class Interval(GroupedMetadata):
    gt: Any = None
    ge: Any = None
    lt: Any = None
    le: Any = None

    def __iter__(self) -> Iterator[BaseMetadata]:
        if self.gt is not None:
            yield Gt(self.gt)
        if self.ge is not None:
            yield Ge(self.ge)
        if self.lt is not None:
            yield Lt(self.lt)
        if self.le is not None:
            yield Le(self.le)
