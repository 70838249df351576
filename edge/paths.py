"""Relative paths in a configuration file are relative to the file's folder, never to the working directory.

A gateway started by systemd or docker runs in another working directory than the one its configuration was
written in: a relative ``pki_dir``, certificate, model folder or ``file:`` secret then pointed at another file, or
at none. Configuration models mark such fields (`PATH` for a path, `REF` for a value that may be ``file:PATH``,
which `edge.secrets.SecretRef` carries); `resolve_relative` rewrites the file's raw data before it is validated,
so every owner's model (collectors, maintenance, stacks) sees absolute paths and the defaults stay in one place.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<config {self.name}>"


PATH = _Marker("path")  # a file-system path: relative ones are taken from the configuration file's folder
REF = _Marker("reference")  # env:NAME or file:PATH: a relative PATH is taken from the configuration file's folder

ConfigPath = Annotated[str, PATH]


def absolute(value: str | Path, base: Path) -> str:
    """``value`` as an absolute path, a relative one taken from ``base``."""
    p = Path(value)
    return str(p if p.is_absolute() else base / p)


def _resolved(value: Any, markers: tuple, base: Path) -> Any:
    if not isinstance(value, str | Path) or not value:
        return value
    if PATH in markers:
        return absolute(value, base)
    if REF in markers and isinstance(value, str) and value.startswith("file:") and len(value) > 5:
        return "file:" + absolute(value[5:], base)
    return value


def _walk(annotation: Any, value: Any, base: Path) -> Any:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *markers = typing.get_args(annotation)
        if PATH in markers or REF in markers:
            return _resolved(value, tuple(markers), base)
        return _walk(inner, value, base)
    if origin in (Union, types.UnionType):
        args = typing.get_args(annotation)
        if isinstance(value, dict) and sum(isinstance(a, type) and issubclass(a, BaseModel) for a in args) > 1:
            return value  # which model a table is, is validation's to decide (none of the configuration's has paths)
        for arg in args:
            out = _walk(arg, value, base)
            if out is not value:
                return out
        return value
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return resolve_relative(annotation, value, base) if isinstance(value, dict) else value
    if origin in (list, tuple, set, frozenset) and isinstance(value, list):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if len(args) == 1:
            return [_walk(args[0], v, base) for v in value]
        return [_walk(a, v, base) for a, v in zip(args, value, strict=False)] + value[len(args):]
    if origin is dict and isinstance(value, dict):
        _, vt = typing.get_args(annotation)
        return {k: _walk(vt, v, base) for k, v in value.items()}
    return value


def resolve_relative(model: type[BaseModel], data: dict, base: Path) -> dict:
    """A copy of the raw ``data`` of ``model`` with every relative path of a `PATH` or `REF` field (nested models,
    lists and tables of them included) made absolute from ``base``. A relative default of a `PATH` field is filled
    in too (``pems.registry = "var/models"``). Values of the wrong type are left for validation to report."""
    out = dict(data)
    for name, field in model.model_fields.items():
        key = field.alias or name
        annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        if key in out:
            out[key] = _walk(annotation, out[key], base)
        elif PATH in field.metadata and isinstance(field.default, str | Path) and str(field.default):
            out[key] = absolute(field.default, base)
    return out
