"""The declared inputs of a model (names, units, order, dtypes) and the checks every input passes.

A model's ONNX graph takes one float tensor ``(n, k)`` whose columns are the schema's features in order.
`InputSchema.to_matrix` turns what a caller has into that tensor, or raises `InputError` saying exactly
what is wrong: which feature is missing or unknown, which rows hold NaN/inf, a wrong column count, or
columns given in another order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge.errors import DataError

DTYPES = {"float32": np.float32, "float64": np.float64}
_MAX_ROWS_NAMED = 5


class InputError(DataError):
    """Model input that cannot be used: missing/unknown/misordered features, non-finite values, bad shape."""


# Spellings of one unit that sites and trainers both use; anything else is compared as written (case and spaces
# aside), so a mismatch is said rather than a conversion guessed.
_UNIT_ALIASES = {"c": "degc", "celsius": "degc", "hpa": "mbar", "k": "kelvin", "percent": "%", "pct": "%",
                 "%rh": "%"}


def unit_key(unit: str) -> str:
    """``unit`` for comparison: "°C", "degC", "deg C" and "C" are one key, "mg/m³" and "mg/m3", "hPa" and "mbar"
    too; "" (not declared) stays ""."""
    u = unit.strip().replace("°", "deg").replace("³", "3").replace("²", "2").replace("µ", "u").replace("μ", "u")
    u = "".join(u.split()).casefold()
    return _UNIT_ALIASES.get(u, u)


@dataclass(frozen=True, slots=True)
class Feature:
    """One input column: name, unit (as published, e.g. "°C", "mbar"), dtype, optional description."""

    name: str
    unit: str = ""
    dtype: str = "float32"
    description: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "unit": self.unit, "dtype": self.dtype, "description": self.description}


@dataclass(frozen=True, slots=True)
class InputSchema:
    """Ordered features of a model. ``allow_nan=False``: every value must be finite."""

    features: tuple[Feature, ...]
    allow_nan: bool = False
    _index: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        names = [f.name for f in self.features]
        if not names:
            raise ValueError("an input schema needs at least one feature")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate feature names in schema: {', '.join(dup)}")
        for f in self.features:
            if f.dtype not in DTYPES:
                raise ValueError(f"feature {f.name!r}: dtype {f.dtype!r} not one of {sorted(DTYPES)}")
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(names)})

    @classmethod
    def of(cls, names: Sequence[str], units: Mapping[str, str] | None = None, **kw) -> InputSchema:
        """Schema from names (and a name -> unit map), all float32."""
        units = units or {}
        return cls(tuple(Feature(n, units.get(n, "")) for n in names), **kw)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def __len__(self) -> int:
        return len(self.features)

    def to_dict(self) -> dict:
        return {"features": [f.to_dict() for f in self.features], "allow_nan": self.allow_nan}

    @classmethod
    def from_dict(cls, d: Mapping) -> InputSchema:
        return cls(tuple(Feature(**f) for f in d["features"]), allow_nan=bool(d.get("allow_nan", False)))

    def to_matrix(self, X, *, columns: Sequence[str] | None = None, dtype=np.float32) -> np.ndarray:
        """Turn ``X`` into the ``(n, k)`` matrix the model takes, checking it.

        ``X`` may be a mapping name -> column (or scalar for one row), a sequence of such mappings (rows),
        or a 2-D array whose columns are the schema's order (``columns`` names them if the caller knows
        them: then a different order is an error rather than a silent mix-up). A 1-D array is one row.
        """
        if isinstance(X, Mapping):
            return self._from_mapping(X, dtype)
        if isinstance(X, Sequence) and X and isinstance(X[0], Mapping):
            keys = set().union(*(r.keys() for r in X))
            for i, r in enumerate(X):
                # A row without a feature is the caller's gap, not a NaN reading of a sensor: say which row.
                lacks = [n for n in self.names if n not in r]
                if lacks and all(n in keys for n in lacks):
                    raise InputError(f"missing feature(s): {', '.join(lacks)} in row {i} "
                                     f"(the model takes {', '.join(self.names)})")
            return self._from_mapping({k: [r.get(k, np.nan) for r in X] for k in keys}, dtype)
        if columns is not None:
            self._check_names(list(columns))
        try:
            a = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"model input is not numeric: {exc}") from None
        if a.ndim == 1:
            a = a.reshape(1, -1)
        if a.ndim != 2:
            raise InputError(f"model input must be 2-D (rows, features), got shape {a.shape}")
        if a.shape[1] != len(self):
            raise InputError(f"model input has {a.shape[1]} columns, the model takes {len(self)}: "
                             f"{', '.join(self.names)}")
        self._check_finite(a, dtype)
        return np.ascontiguousarray(a, dtype=dtype)

    def _from_mapping(self, X: Mapping, dtype) -> np.ndarray:
        self._check_names(list(X.keys()), order_matters=False)
        cols = []
        for f in self.features:
            try:
                c = np.asarray(X[f.name], dtype=np.float64).ravel()
            except (TypeError, ValueError):
                raise InputError(f"feature {f.name!r} is not numeric") from None
            cols.append(c)
        lengths = {c.size for c in cols}
        if len(lengths) > 1:
            raise InputError("features have different lengths: "
                             + ", ".join(f"{f.name}={c.size}" for f, c in zip(self.features, cols, strict=True)))
        a = np.column_stack(cols)
        self._check_finite(a, dtype)
        return np.ascontiguousarray(a, dtype=dtype)

    def _check_names(self, given: list[str], order_matters: bool = True) -> None:
        want = self.names
        missing = [n for n in want if n not in given]
        unknown = [n for n in given if n not in self._index]
        problems = []
        if missing:
            problems.append(f"missing feature(s): {', '.join(missing)}")
        if unknown:
            problems.append(f"unknown feature(s): {', '.join(unknown)}")
        if problems:
            raise InputError("; ".join(problems) + f" (the model takes {', '.join(want)})")
        if order_matters and given != want:
            first = next(i for i, (a, b) in enumerate(zip(given, want, strict=True)) if a != b)
            raise InputError(f"features in the wrong order: column {first} is {given[first]!r}, the model expects "
                             f"{want[first]!r} there (order: {', '.join(want)})")

    def _check_finite(self, a: np.ndarray, dtype=np.float32) -> None:
        """``a`` (float64) must be finite in ``dtype``, the type the graph takes: a value beyond float32's range
        (a device's 1e39 or DBL_MAX "no value") is finite here but infinite in the tensor, and the model's answer
        to it is inf or NaN, or a finite value no training row supports."""
        if self.allow_nan:
            return
        top = float(np.finfo(dtype).max)
        with np.errstate(invalid="ignore"):
            beyond = np.abs(a) > top  # NaN compares False: counted by isfinite below
        bad = ~np.isfinite(a) | beyond
        if not bad.any():
            return
        parts = []
        for j in np.flatnonzero(bad.any(axis=0)):
            rows = np.flatnonzero(bad[:, j])
            shown = ", ".join(str(r) for r in rows[:_MAX_ROWS_NAMED]) + (" ..." if rows.size > _MAX_ROWS_NAMED else "")
            parts.append(f"{self.features[j].name} (row {shown}; {rows.size} in all)")
        hint = f" (beyond ±{top:.3g}, the largest {np.dtype(dtype).name} the model takes)" if beyond.any() else ""
        raise InputError("NaN or infinite input values: " + "; ".join(parts) + hint)
