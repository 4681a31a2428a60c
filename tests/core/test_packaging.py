"""pyproject.toml in the forms current setuptools takes without deprecation warnings."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_license_is_an_spdx_string_and_the_build_takes_it():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"  # a {text = ...} table is deprecated
    assert "setuptools>=77" in pyproject["build-system"]["requires"]  # the first to read the string form
