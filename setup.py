"""Only the C extension lives here; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("pytest_udpsend.measure._engine", ["pytest_udpsend/measure/_engine.c"], extra_compile_args=["-O2", "-Wall"])])
