"""The package version: one source, read by pyproject.toml (setuptools' dynamic version) and by the code.

A module of its own so that runs.py, cli.py and serve.py can import it without importing the package's
__init__ (which would import them back).
"""

__version__ = "0.1.0"
