"""Ray stays inside pipelines/: the library, crawlers and commands run (and are tested) without it."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def ray_imports(root: Path) -> list[str]:
    """``file:line`` of every ``import ray`` / ``from ray... import`` outside ``pipelines/``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("pipelines", "tests", ".venv", "build") or rel.parts[0].startswith("."):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if any(n == "ray" or n.startswith("ray.") for n in names):
                found.append(f"{rel}:{node.lineno}")
    return found


def test_ray_is_imported_only_in_pipelines():
    assert ray_imports(REPO) == []


def test_the_check_sees_an_import_of_ray(tmp_path):
    (tmp_path / "laion_audio").mkdir()
    (tmp_path / "laion_audio" / "x.py").write_text("def f():\n    import ray.util\n")
    (tmp_path / "crawlers").mkdir()
    (tmp_path / "crawlers" / "y.py").write_text("from ray import remote\n")
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "ok.py").write_text("import ray\n")
    assert ray_imports(tmp_path) == ["crawlers/y.py:1", "laion_audio/x.py:2"]
