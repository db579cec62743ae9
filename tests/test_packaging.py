"""A regular (non-editable) install ships every module: setuptools' explicit `packages` list must name each
folder of Python files, or `pip install .` silently leaves it out (the editable install used here hides that)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_python_folder_is_a_listed_package():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    missing = []
    for package, folder in setuptools["package-dir"].items():
        for init_dir in sorted({p.parent for p in (ROOT / folder).rglob("*.py")}):
            if "__pycache__" in init_dir.parts:
                continue
            relative = init_dir.relative_to(ROOT / folder).parts
            name = ".".join((package, *relative))
            if name not in listed:
                missing.append(f"{name} ({init_dir.relative_to(ROOT)})")
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
