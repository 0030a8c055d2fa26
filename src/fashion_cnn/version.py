"""The package version: one source, read by pyproject.toml (setuptools' dynamic version) and by the code.

A module of its own, at the bottom layer, so that any module can import it without importing the
package's __init__.
"""

__version__ = "0.1.0"
