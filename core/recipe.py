"""Recipes: TOML files validated into dataclasses, with strict keys and typed ``--set`` overrides.

A recipe is a dataclass of section dataclasses (``pretrain.config.Recipe``, ``finetune.config.FinetuneRecipe``).
Unknown or misspelled keys are errors that name the key and list the valid ones. ``--set section.key=value``
overrides any field; the value is parsed as a TOML value (``1e-4``, ``true``, ``[16, 16]``, ``"text"``) and
falls back to a plain string. A section missing from the file keeps the recipe class's default section.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .jsonio import write_json_atomic

Choices = dict[tuple[str, str], tuple[str, ...]]


class RecipeError(ValueError):
    """An invalid recipe; the message names the key or value and what is wrong."""


@dataclass
class RunSection:
    name: str = "run"  # run directory name (each recipe sets its own default)
    output_dir: str = "runs"  # runs/NAME/ holds config, checkpoints, logs, export, metrics


class RecipeBase:
    """What every recipe dataclass has: a ``run`` section and the run directory it names."""

    run: RunSection

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


def _unknown_key(key: str, valid: list[str], where: str) -> RecipeError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return RecipeError(f"unknown key {where}{key!r}{hint}; valid keys: {', '.join(valid)}")


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Validate (and lightly coerce) ``value`` against a dataclass field annotation."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where)
            except RecipeError as e:
                errors.append(str(e))
        raise RecipeError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_check_type(v, inner, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a table, got {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise RecipeError(f"{where}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise RecipeError(f"{where}: expected an integer, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise RecipeError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], where: str, choices: Choices, default: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    defaults = cls() if default is None else default  # a section's defaults come from its recipe
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise _unknown_key(key, valid, where)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise RecipeError(f"{where}{key}: expected a table [{key}], got {value!r}")
            kwargs[key] = _build(tp, value, f"{where}{key}.", choices, getattr(defaults, key))
        else:
            kwargs[key] = _check_type(value, tp, f"{where}{key}")
    obj = dataclasses.replace(defaults, **kwargs)
    section = where.rstrip(".")
    for f in dataclasses.fields(cls):
        allowed = choices.get((section, f.name))
        if allowed and getattr(obj, f.name) not in allowed:
            raise RecipeError(f"{where}{f.name}: {getattr(obj, f.name)!r} is not one of {', '.join(allowed)}")
    return obj


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (numbers, booleans, lists, quoted strings, ``{k = v}`` tables) or
    JSON (``{"k": v}``), else the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a raw recipe dict (before validation)."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected section.key=value")
        path, text = item.split("=", 1)
        keys = path.strip().split(".")
        if len(keys) < 2:
            raise RecipeError(f"--set {item!r}: expected section.key=value (e.g. optim.lr=1e-4)")
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set {item!r}: {k} is not a section")
        node[keys[-1]] = parse_value(text.strip())
    return data


def recipe_from_dict(data: dict[str, Any], overrides: list[str] | None, cls: type, choices: Choices) -> Any:
    data = apply_overrides(json.loads(json.dumps(data)), overrides or [])
    return _build(cls, data, "", choices)


def load_recipe(path: str | Path | None, overrides: list[str] | None, cls: type, choices: Choices) -> Any:
    """Load and validate a TOML recipe (``None`` = all defaults) of class ``cls``, then apply ``--set``
    overrides; ``choices`` lists the allowed values of enumerated keys."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe {path} not found")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise RecipeError(f"recipe {path}: invalid TOML ({e})") from e
    try:
        return recipe_from_dict(data, overrides, cls, choices)
    except RecipeError as e:
        where = f"recipe {path}: " if path else ""
        raise RecipeError(f"{where}{e}") from None


def save_recipe(recipe: Any, path: str | Path) -> None:
    """Write the resolved recipe as JSON (atomically)."""
    write_json_atomic(path, dataclasses.asdict(recipe))
