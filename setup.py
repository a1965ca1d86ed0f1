"""Packages found by rule, not listed: every package below each folder that pyproject.toml's package-dir maps into
the mlic_edge namespace (docs/design.md, "Layout"). Everything else is configured in pyproject.toml; its
packages.find cannot do this, as it names a package by its folder (train.losses, not mlic_edge.train.losses)."""

import sys
from pathlib import Path

from setuptools import find_packages, setup

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]

setup(packages=[package for name, folder in PACKAGE_DIR.items()
                for package in (name, *(f"{name}.{sub}" for sub in find_packages(ROOT / folder)))])
