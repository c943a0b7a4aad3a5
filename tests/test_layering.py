"""The design card's dependency direction: stability ← nets ← attacks / proofs_check ← experiments.

Every import statement in a package (top level or inside a function) may name only the packages below it.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"stability", "nets", "attacks", "proofs_check", "experiments", "bench"}
ALLOWED = {
    "stability": set(),
    "nets": {"stability"},
    "attacks": {"stability", "nets"},
    "proofs_check": {"stability", "nets"},
    "experiments": {"stability", "nets", "attacks", "proofs_check"},
}


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & PROJECT


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_the_packages_below_it(package):
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        wrong = imported_packages(path) - ALLOWED[package] - {package}
        if wrong:
            offenders[str(path.relative_to(ROOT))] = sorted(wrong)
    assert not offenders, f"{package} may import only {sorted(ALLOWED[package])}: {offenders}"
