"""The import rules of DESIGN.md, enforced: the folders show the processes."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The programs: each is its own package (or module) and never imports another.
PROGRAMS = ("batchd", "scheduler", "ctl", "locks", "callbacks", "reaper", "api")
#: What every program may share.
SHARED = ("state", "config", "log", "runtime")


def _owner(module: str) -> str:
    """The unit a dotted module belongs to: a program, a shared part, or `adaptors`."""
    parts = module.split(".")
    if parts[0] == "adaptors":
        return "adaptors"
    return parts[1] if len(parts) > 1 else "supervisor"


def _imports(path: Path) -> list[str]:
    """The project modules `path` imports (absolute names)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [f"{node.module}.{a.name}" for a in node.names]
    return [m for m in found if m.split(".")[0] in ("supervisor", "adaptors")]


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _violations() -> list[str]:
    allowed_by: dict[str, set[str]] = {
        "state": {"state", "config", "log"},
        "config": {"config"},
        "log": {"log", "config"},
        "runtime": {"runtime", "state", "config", "log"},
        "adaptors": {"adaptors", "state", "config"},
    }
    for program in PROGRAMS:
        allowed_by[program] = {program, *SHARED}
    units = set(allowed_by)
    bad = []
    for path in sorted([*ROOT.glob("supervisor/**/*.py"), *ROOT.glob("adaptors/**/*.py")]):
        me = _owner(_module_name(path))
        for target in _imports(path):
            other = _owner(target)
            if other not in units:          # supervisor.__version__ and the like
                continue
            if other not in allowed_by.get(me, set()):
                bad.append(f"{path.relative_to(ROOT)} ({me}) imports {target} ({other})")
    return bad


def test_no_program_imports_another_and_state_imports_no_program() -> None:
    """state/ imports only state/, config and log; a program imports only itself and the
    shared parts (state, config, log, runtime); adaptors import only state/ and config."""
    assert [] == _violations()


def test_no_class_in_supervisor_is_over_400_lines() -> None:
    """No god object: every class of supervisor/ fits in 400 lines."""
    big = []
    for path in sorted(ROOT.glob("supervisor/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 400:
                    big.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {length}")
    assert [] == big


def test_only_the_log_module_touches_stdlib_logging() -> None:
    """Every line goes through supervisor.log (structlog, with the configured file and
    format): nobody else imports `logging`."""
    users = []
    for path in sorted([*ROOT.glob("supervisor/**/*.py"), *ROOT.glob("adaptors/**/*.py")]):
        if path == ROOT / "supervisor" / "log.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "logging" or n.startswith("logging.") for n in names):
                users.append(str(path.relative_to(ROOT)))
    assert [] == users


def test_every_module_says_what_it_owns_in_its_first_line() -> None:
    """A one-line docstring opens every module of supervisor/ and adaptors/ (at most 100
    characters, ending with a full stop or naming what it owns)."""
    missing = []
    for path in sorted([*ROOT.glob("supervisor/**/*.py"), *ROOT.glob("adaptors/**/*.py")]):
        doc = ast.get_docstring(ast.parse(path.read_text(), str(path)))
        if not doc or len(doc.splitlines()[0]) > 100:
            missing.append(str(path.relative_to(ROOT)))
    assert [] == missing
