"""The direction of imports inside each Django app (../shared/STYLE.md): tasks -> services, one way.
A service that enqueues sends through its app's dispatch.py, which tasks.py connects its tasks to."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

PLATFORM = Path(__file__).resolve().parents[1] / "platform"
APPS = ["annotation", "learning"]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function: `a.b` and `from a import b` as a.b."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("app", APPS)
def test_services_never_import_their_tasks(app):
    services = PLATFORM / app / "services.py"
    assert f"{app}.tasks" not in imported_modules(services)
    assert f"{app}.tasks" not in imported_modules(PLATFORM / app / "dispatch.py")


@pytest.mark.parametrize("app", APPS)
def test_every_sender_of_dispatch_is_connected_by_the_tasks(app):
    """Importing the app's tasks (AppConfig.ready does) connects a task for each sender dispatch has."""
    dispatch = importlib.import_module(f"{app}.dispatch")
    importlib.import_module(f"{app}.tasks")
    senders = {
        name
        for name, f in inspect.getmembers(dispatch, inspect.isfunction)
        if f.__module__ == dispatch.__name__ and not name.startswith("_") and name != "connect"
    }
    assert senders and all(name in dispatch._registry for name in senders)


def test_a_sender_whose_task_is_not_connected_names_what_to_import():
    from common.dispatch import TaskRegistry

    registry = TaskRegistry("demo.tasks", "DemoConfig.ready")
    with pytest.raises(LookupError, match=r"demo\.tasks\.run is not connected.*DemoConfig\.ready"):
        registry["run"]
    registry.connect(run=print)
    assert "run" in registry and registry["run"] is print


def test_nothing_the_platform_or_a_round_runs_imports_the_experiments():
    """ml_worker/experiments/ measures the product; the platform and ml_worker's other packages run
    without it (only the command registry names its modules, by string)."""
    root = PLATFORM.parent
    sources = [p for p in (root / "ml_worker").rglob("*.py") if "experiments" not in p.parts]
    sources += list(PLATFORM.rglob("*.py"))
    offenders = sorted(
        str(p.relative_to(root))
        for p in sources
        if "tests" not in p.parts and any(m.startswith("ml_worker.experiments") for m in imported_modules(p))
    )
    assert offenders == []
