"""The package shows the pipeline's stages and imports along them (config -> data -> model -> train -> evaluation, no
stage importing a later one), and library code never imports a command (an entry-point module)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = ("data", "model", "train", "evaluation")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def is_command(path: Path) -> bool:
    """A module run as a program: it has an `if __name__ == "__main__":` block."""
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
               for node in ast.parse(path.read_text()).body)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, and for `from package import name` also `package.name` (it may be a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def library_and_commands() -> tuple[list[Path], set[str]]:
    """The package, its patches and the entry (bench/ is a harness: its worker modules run in subprocesses)."""
    sources = [REPO / "run_object_detection.py", *(REPO / "detr_ft").rglob("*.py"), *(REPO / "patches").rglob("*.py")]
    return sources, {module_name(path) for path in sources if is_command(path)}


def test_package_folders_are_the_pipeline_stages():
    packages = sorted(p.name for p in (REPO / "detr_ft").iterdir() if (p / "__init__.py").exists())
    assert packages == sorted(STAGES)


def test_no_module_imports_a_command():
    sources, commands = library_and_commands()
    assert {"run_object_detection", "detr_ft.evaluation.eval_checkpoints", "detr_ft.evaluation.inference"} <= commands
    offending = {module_name(path): sorted(imported_modules(path) & commands) for path in sources}
    assert {module: found for module, found in offending.items() if found} == {}


def test_the_import_check_sees_a_command_import(tmp_path):
    """The check above can fail: a module importing a command's helper is caught."""
    sample = tmp_path / "sample.py"
    sample.write_text("from detr_ft.evaluation.inference import draw_detections\nimport run_object_detection\n")
    assert {"detr_ft.evaluation.inference", "run_object_detection"} <= imported_modules(sample)


def stage_of(module: str) -> str | None:
    """The stage (or config) a detr_ft module belongs to; None for the package's other top-level modules."""
    parts = module.split(".")
    if parts[0] != "detr_ft" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in (*STAGES, "config") else None


def later_stage_imports() -> dict[str, list[str]]:
    """Per module of a stage (or config): the modules it imports of a stage later in the flow."""
    order = ["config", *STAGES]
    found = {}
    for path in (REPO / "detr_ft").rglob("*.py"):
        stage = stage_of(module_name(path))
        if stage is None:
            continue
        later = sorted(m for m in imported_modules(path) if (s := stage_of(m)) and order.index(s) > order.index(stage))
        if later:
            found[module_name(path)] = later
    return found


def test_stages_import_only_earlier_stages_and_config_imports_none():
    assert later_stage_imports() == {}


def test_the_stage_check_sees_an_import_against_the_flow(tmp_path, monkeypatch):
    """The check above can fail: a data module importing the model is caught."""
    package = tmp_path / "detr_ft" / "data"
    package.mkdir(parents=True)
    (package / "sample.py").write_text("from detr_ft.model.box_ops import center_to_corners\n")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    assert later_stage_imports() == {"detr_ft.data.sample": ["detr_ft.model.box_ops",
                                                             "detr_ft.model.box_ops.center_to_corners"]}


def test_the_model_builder_imports_no_patch():
    assert not [m for m in imported_modules(REPO / "detr_ft" / "model" / "build.py") if m.startswith("patches")]
