"""Two additions to `mkdocs build` (mkdocs.yml names this file twice):

- `on_files`, a MkDocs hook: the benchmarks' results (`benchmarks/results/`: the JSON files every measured
  number comes from, and the plots) are served under `benchmarks/results/` from where the benchmarks write
  them, so the pages show the very files a benchmark run rewrites: no copy that could drift, no link out of
  the docs folder, and a missing file fails `mkdocs build --strict` as a broken link.
- `LazyExports`, a griffe extension for the API reference: `fashion_cnn`'s public names load their module
  on first use (a module `__getattr__`), which static analysis cannot follow. It makes each name of the
  package's `__all__` an alias of the object of that name defined in the package's modules (where two
  modules define one name, the one the package gives at run time), so `::: fashion_cnn` documents the
  public API wherever its modules keep it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import griffe
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

RESULTS = Path("benchmarks") / "results"
SERVED = {".png", ".json", ".csv"}  # the plots and the raw measurements (model_results.md is a copy of a table)
PACKAGE = "fashion_cnn"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add benchmarks/results/* to the site at the same path."""
    root = Path(config.config_file_path).parent
    for path in sorted((root / RESULTS).iterdir()):
        if path.suffix in SERVED:
            files.append(File(path.relative_to(root).as_posix(), src_dir=str(root), dest_dir=config.site_dir,
                              use_directory_urls=config.use_directory_urls))
    return files


def load_package(init: Path) -> ModuleType:
    """This checkout's package, not whatever copy is installed; cheap, as its names load their modules only
    when asked for."""
    spec = importlib.util.spec_from_file_location(PACKAGE, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module  # its relative imports resolve against this checkout
    spec.loader.exec_module(module)
    return module


def definitions(module: griffe.Module) -> dict[str, list[str]]:
    """name -> the paths of the objects of that name defined (not imported) in the package's modules."""
    found: dict[str, list[str]] = {}
    for member in module.members.values():
        if not member.is_alias:
            found.setdefault(member.name, []).append(member.path)
    for submodule in module.modules.values():
        for name, paths in definitions(submodule).items():
            found.setdefault(name, []).extend(paths)
    return found


class LazyExports(griffe.Extension):
    """Each public name of `fashion_cnn` as an alias of its definition (see the module's docstring)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: object) -> None:
        if pkg.name != PACKAGE:
            return
        package = load_package(Path(pkg.filepath))
        defined = definitions(pkg)
        for name in package.__all__:
            if name in pkg.members:  # imported by __init__ itself (__version__)
                continue
            paths = defined.get(name, [])
            if len(paths) > 1:  # ask the object where it lives (this loads its module: only for these names)
                paths = [path for path in paths if path == f"{getattr(package, name).__module__}.{name}"]
            if len(paths) != 1:
                raise ValueError(f"{PACKAGE}.{name}: no single definition in the package's modules "
                                 f"({defined.get(name, 'none')})")
            pkg.set_member(name, griffe.Alias(name, paths[0], parent=pkg))
        pkg.exports = list(package.__all__)
