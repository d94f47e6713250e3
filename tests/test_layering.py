"""The package layers, enforced over the source tree's imports (AST, so lazy imports inside functions count too).

- `modeling_kvcap/`, `processing/`: copied to the Hub as they are: relative imports of their own files only.
- `kvcap/metrics/<name>/`: `evaluate` loads one file of a metric: it imports nothing of the project.
- `kvcap/` (library): the Hub packages, the metrics and itself; never the demo (`kvcap.demo`) outside `kvcap/demo/`.
- `train_hf.py`, `eval_hf.py`, `app.py`: thin scripts over the library; none imports another or the demo.
- Nothing imports `train_hf`, `eval_hf`, `app`, `scripts`, `bench` or `tests`, except that a test may import the
  script it tests, and tests import their own fixtures.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PROJECT = {"modeling_kvcap", "processing", "kvcap", "train_hf", "eval_hf", "app", "bench", "tests", "scripts"}
NEVER_IMPORTED = {"train_hf", "eval_hf", "app", "scripts", "bench", "tests"}


def imports_of(path: Path) -> list[tuple[int, str, int]]:
    """``(line, module, level)`` of every import in a file; ``level`` > 0 for relative imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or "", node.level))
    return found


def resolve(path: Path, module: str, level: int) -> str:
    """The absolute dotted name a (possibly relative) import in ``path`` refers to."""
    if level == 0:
        return module
    package = list(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, module] if module else base)


def violations(path: Path) -> list[str]:
    """Every import in ``path`` that breaks the layer rules, as ``file:line: message``."""
    relative = path.relative_to(REPO_ROOT)
    top = relative.parts[0].removesuffix(".py")
    if relative.parts[:2] == ("kvcap", "metrics"):
        top = "kvcap.metrics"
    problems = []
    for line, module, level in imports_of(path):
        target = resolve(path, module, level)
        target_top = target.split(".")[0]
        if level == 0 and (REPO_ROOT / "bench" / f"{target_top}.py").is_file():
            target_top = "bench"  # a benchmark script imported by its bare name (bench/ on sys.path)
        where = f"{relative}:{line}: {target}"
        if target_top not in PROJECT:
            continue
        if top in ("modeling_kvcap", "processing"):
            if level != 1:
                problems.append(f"{where}: a Hub-copyable package imports its own files with a single dot only")
        elif top == "kvcap.metrics":
            problems.append(f"{where}: an evaluate module imports nothing of the project")
        elif target_top in NEVER_IMPORTED and not (top == "tests" and target_top in ("tests", "train_hf", "eval_hf")):
            problems.append(f"{where}: nothing imports {target_top}")
        elif (
            target.startswith("kvcap.demo")
            and top in ("kvcap", "train_hf", "eval_hf", "app")
            and (relative.parts[:2] != ("kvcap", "demo"))
        ):
            problems.append(f"{where}: the product does not import the demo")
    return problems


def project_files() -> list[Path]:
    files = [REPO_ROOT / "train_hf.py", REPO_ROOT / "eval_hf.py", REPO_ROOT / "app.py"]
    for folder in ("modeling_kvcap", "processing", "kvcap", "bench", "tests"):
        files += sorted((REPO_ROOT / folder).rglob("*.py"))
    return files


def test_every_import_in_the_tree_keeps_the_layers():
    problems = [problem for path in project_files() for problem in violations(path)]
    assert problems == [], "\n".join(problems)


def test_the_scripts_folder_is_gone_and_the_layers_exist():
    assert not (REPO_ROOT / "scripts").exists()
    for package in ("kvcap/generation.py", "kvcap/evaluation", "kvcap/training", "kvcap/demo"):
        assert (REPO_ROOT / package).exists(), package


@pytest.mark.parametrize(
    ("relative", "source", "message"),
    [
        ("modeling_kvcap/x.py", "from processing.video_io import read_video_frames", "single dot"),
        ("modeling_kvcap/x.py", "from modeling_kvcap.projectors import build_projector", "single dot"),
        ("processing/x.py", "from ..kvcap import generation", "single dot"),
        ("processing/x.py", "def f():\n    from kvcap.training import collator", "single dot"),
        ("kvcap/metrics/m/m.py", "from kvcap.metrics.korean_meteor import korean_meteor", "evaluate module"),
        ("kvcap/metrics/m/m.py", "from ..korean_meteor import korean_meteor", "evaluate module"),
        ("kvcap/training/x.py", "import eval_hf", "nothing imports eval_hf"),
        ("kvcap/evaluation/x.py", "from kvcap.demo.corpus import generate_corpus", "does not import the demo"),
        ("kvcap/training/x.py", "from ..demo import prepare", "does not import the demo"),
        ("train_hf.py", "from eval_hf import main", "nothing imports eval_hf"),
        ("app.py", "from kvcap.demo import prepare", "does not import the demo"),
        ("kvcap/space.py", "import app", "nothing imports app"),
        ("eval_hf.py", "from kvcap.demo import tiny_backbones", "does not import the demo"),
        ("bench/x.py", "from bench_generate import build", "nothing imports bench"),
        ("bench/x.py", "from tests.conftest import tiny_processor", "nothing imports tests"),
        ("kvcap/demo/x.py", "from scripts.make_demo_corpus import main", "nothing imports scripts"),
    ],
)
def test_the_rules_catch_each_kind_of_violation(tmp_path, monkeypatch, relative, source, message):
    # The checker runs on a tree of one file, so each rule is seen to fire (and not only to stay quiet).
    monkeypatch.setattr(f"{__name__}.REPO_ROOT", tmp_path)
    path = tmp_path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source + "\n", encoding="utf-8")
    (tmp_path / "bench").mkdir(exist_ok=True)
    (tmp_path / "bench" / "bench_generate.py").write_text("", encoding="utf-8")
    found = violations(path)
    assert len(found) == 1 and message in found[0], found


@pytest.mark.parametrize(
    ("relative", "source"),
    [
        ("modeling_kvcap/x.py", "from .projectors import build_projector\nimport torch"),
        ("processing/x.py", "from .video_io import read_video_frames"),
        ("kvcap/evaluation/x.py", "from ..generation import generate_captions\nfrom processing import aihub"),
        ("kvcap/demo/x.py", "from .corpus import generate_corpus\nfrom kvcap.metrics import korean_meteor"),
        ("tests/test_x.py", "import train_hf\nfrom .conftest import tiny_processor"),
        ("bench/x.py", "from kvcap.demo.video_clips import make_clip"),
    ],
)
def test_allowed_imports_pass(tmp_path, monkeypatch, relative, source):
    monkeypatch.setattr(f"{__name__}.REPO_ROOT", tmp_path)
    path = tmp_path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source + "\n", encoding="utf-8")
    assert violations(path) == []
