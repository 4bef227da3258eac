"""Reading input files with errors that name the file and what it was meant to be."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from simulator.errors import SimInputError


def existing(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise SimInputError(f"{what} {path} does not exist")
    return path


def read_json(path: str | Path, what: str) -> object:
    path = existing(path, what)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SimInputError(f"{what} {path}: not valid JSON ({e})") from None


def read_yaml(path: str | Path, what: str) -> object:
    path = existing(path, what)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SimInputError(f"{what} {path} is not valid YAML: {e}") from None
