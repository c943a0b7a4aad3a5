"""The design card's dependency direction: stability ← nets ← attacks / proofs_check ← experiments, with
``storage`` (the atomic writer, the record store, code versions) at the bottom beside stability.

Every import statement in a package (top level or inside a function) may name only the packages below it;
``storage`` imports neither torch nor any package of the project.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"storage", "stability", "nets", "attacks", "proofs_check", "experiments", "bench"}
ALLOWED = {
    "storage": set(),
    "stability": set(),
    "nets": {"stability", "storage"},
    "attacks": {"stability", "nets", "storage"},
    "proofs_check": {"stability", "nets", "storage"},
    "experiments": {"storage", "stability", "nets", "attacks", "proofs_check"},
}
#: third-party packages the bottom layer must not need
HEAVY = {"torch", "numpy", "scipy", "matplotlib", "tqdm"}


def imported_packages(path: Path, among: set[str] = PROJECT) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & among


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_the_packages_below_it(package):
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        wrong = imported_packages(path) - ALLOWED[package] - {package}
        if wrong:
            offenders[str(path.relative_to(ROOT))] = sorted(wrong)
    assert not offenders, f"{package} may import only {sorted(ALLOWED[package])}: {offenders}"


def test_storage_needs_neither_torch_nor_the_scientific_stack():
    offenders = {str(path.relative_to(ROOT)): sorted(imported_packages(path, HEAVY))
                 for path in sorted((ROOT / "storage").rglob("*.py")) if imported_packages(path, HEAVY)}
    assert not offenders, f"storage must stay torch-free: {offenders}"
