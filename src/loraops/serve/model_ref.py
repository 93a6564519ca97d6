"""The OpenAI `model` string, parsed once at the edge into a value the engine trusts.

Grammar (every form matched whole: `fullmatch`, so "name\\n" is refused):

    ID    = NAME [ "@" VERSION ]        NAME = [A-Za-z0-9][A-Za-z0-9._-]{0,63},  VERSION = 1-9 digits
    MODEL = ID  |  ID ":" WEIGHT ( "+" ID ":" WEIGHT ){1,3}
    WEIGHT = a plain decimal in [-4, 4] ("0.7", "-1.", ".25"; no exponent, inf or nan)

Canonical forms: versions as integers ("name@01" and "name@001" are "name@1": one pin, one metrics
label), weights as the shortest plain decimal ("0.70" -> "0.7", "-0" -> "0"). A composition keeps
its parts in the order written (the order terms are summed in).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from loraops.serve.errors import BadRequestError

ID = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]{0,63})(?:@([0-9]{1,9}))?")
WEIGHT = re.compile(r"-?(?:[0-9]{1,6}(?:\.[0-9]{0,12})?|\.[0-9]{1,12})")
MAX_PARTS, MAX_WEIGHT = 4, 4.0


@dataclass(frozen=True)
class Part:
    """One adapter (or the base) of a model id, with its weight (1 outside compositions)."""

    name: str
    version: int | None = None
    weight: float = 1.0

    @property
    def id(self) -> str:
        """The canonical "name" or "name@version": the key of the adapter catalog."""
        return self.name if self.version is None else f"{self.name}@{self.version}"


@dataclass(frozen=True)
class ModelRef:
    parts: tuple[Part, ...]

    @classmethod
    def parse(cls, text: object, single: bool = False, param: str = "model") -> ModelRef:
        """Parse a model id or (unless `single`) a composition. Raises BadRequestError on `param`."""
        if not isinstance(text, str):
            raise BadRequestError(f"{param} must be a string", param=param)
        if "+" not in text and ":" not in text:
            return cls((_part(text, 1.0, param),))
        if single:
            raise BadRequestError(f"{text[:80]!r} is a composition, not a model", param=param)
        pieces = text.split("+")
        if not 2 <= len(pieces) <= MAX_PARTS:
            raise BadRequestError(f"a composition has 2 to {MAX_PARTS} parts joined by '+', got {len(pieces)}",
                                  param=param)
        parts: list[Part] = []
        for piece in pieces:
            name, colon, weight = piece.rpartition(":")
            if not colon or not ID.fullmatch(name):
                raise BadRequestError(f"composition part {piece[:80]!r} must look like NAME[@VERSION]:WEIGHT, "
                                      f"e.g. 'my-adapter:0.5'", param=param)
            if not WEIGHT.fullmatch(weight) or abs(float(weight)) > MAX_WEIGHT:
                raise BadRequestError(f"composition part {piece[:80]!r}: the weight must be a decimal number in "
                                      f"[-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}]", param=param)
            part = _part(name, float(weight) + 0.0, param)       # + 0.0: -0 is 0
            if any(p.id == part.id for p in parts):
                raise BadRequestError(f"adapter {part.id!r} appears twice in the composition", param=param)
            parts.append(part)
        return cls(tuple(parts))

    @classmethod
    def of(cls, model: ModelRef | str) -> ModelRef:
        """`model` if it is parsed already, else `parse(model)`."""
        return model if isinstance(model, ModelRef) else cls.parse(model)

    @property
    def is_composition(self) -> bool:
        return len(self.parts) > 1

    @property
    def id(self) -> str:
        """The canonical string: "name@1", or "a:0.7+b@2:-1" for a composition."""
        if not self.is_composition:
            return self.parts[0].id
        return "+".join(f"{p.id}:{_decimal(p.weight)}" for p in self.parts)

    @property
    def adapters(self) -> tuple[str, ...]:
        """The sorted part ids: what must be resident to serve this model."""
        return tuple(sorted(p.id for p in self.parts))

    @property
    def routing_key(self) -> str:
        """A stable key for adapter-affinity routing: the id, or a composition's sorted part ids
        joined by '+' (weights do not change which adapters a replica needs)."""
        return "+".join(self.adapters)

    @property
    def label(self) -> str:
        """The metrics label: the routing key. Weights are free-form client input, and a label per
        weight would let clients grow the series count without bound."""
        return self.routing_key

    def __str__(self) -> str:
        return self.id


def _part(text: str, weight: float, param: str) -> Part:
    m = ID.fullmatch(text)
    if m is None:
        raise BadRequestError(f"invalid model name {text[:80]!r}: use letters, digits, '.', '_', '-' and an "
                              f"optional @VERSION", param=param)
    return Part(m.group(1), None if m.group(2) is None else int(m.group(2)), weight)


def _decimal(w: float) -> str:
    """The shortest plain decimal for w (weights have at most 13 significant digits, so repr is exact)."""
    return format(Decimal(repr(w)).normalize(), "f")
