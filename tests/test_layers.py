"""The arrows between packages point down: a package imports only those below it (any import, lazy ones too)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each package and the mixlm packages it may import (besides itself); mixlm/ splits into the
# shared plumbing (config, errors, options, output, version) and the top-level command (cli).
ALLOWED = {
    "schemas": set(),
    "store": {"schemas", "plumbing"},
    "encoders": {"schemas", "plumbing"},
    "devbroker": {"schemas", "plumbing"},
    "pipelines": {"schemas", "store", "encoders", "plumbing"},
    "ranker": {"schemas", "store", "encoders", "plumbing"},
    "training": {"schemas", "store", "encoders", "ranker", "plumbing"},
}
PLUMBING = {"config", "errors", "options", "output", "version"}


def _imported_packages(folder: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                parts = name.split(".")
                if parts[0] == "mixlm" and len(parts) > 1:
                    package = "plumbing" if parts[1] in PLUMBING else parts[1]
                    found.setdefault(package, set()).add(path.relative_to(ROOT).as_posix())
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package):
    imported = _imported_packages(ROOT / package)
    wrong = {other: sorted(files) for other, files in imported.items() if other not in ALLOWED[package] | {package}}
    assert not wrong, f"{package} imports {wrong}"


def test_the_shared_plumbing_imports_only_the_bottom_layer():
    plumbing = {f"mixlm/{name}.py" for name in PLUMBING}
    imported = _imported_packages(ROOT / "mixlm")
    wrong = {other: files & plumbing for other, files in imported.items()
             if other not in {"schemas", "plumbing"} and files & plumbing}
    assert not wrong, wrong
