"""Package discovery (everything else is in pyproject.toml).

``graphopt/`` and its subpackages are found automatically; the ``passes/`` directory is
installed as ``graphopt.passes`` (there is no top-level module named ``passes``), with any
subpackages it grows. pyproject.toml cannot express "find, then map one directory", hence this.
"""

from setuptools import find_packages, setup

CORE = find_packages(include=["graphopt", "graphopt.*"])
PASSES = ["graphopt.passes", *(f"graphopt.passes.{p}" for p in find_packages("passes"))]

setup(
    packages=CORE + PASSES,
    package_dir={"graphopt": "graphopt", "graphopt.passes": "passes"},
)
