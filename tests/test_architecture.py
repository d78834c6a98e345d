"""The shape of the package: no import circles, no function over 80 lines, one file on llama.cpp's internals."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tskd_lite"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every tskd_lite module each one imports, at its top or inside a function (a lazy import still couples)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            if isinstance(node, ast.ImportFrom) and _type_checking_only(node, path):
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _type_checking_only(node: ast.ImportFrom, path: Path) -> bool:
    tree = ast.parse(path.read_text())
    for block in ast.walk(tree):
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test):
            if any(n is node or (isinstance(n, ast.ImportFrom) and n.lineno == node.lineno) for n in block.body):
                return True
    return False


def test_the_package_has_no_import_circles():
    graph = _imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(trail[trail.index(dep) :] + [dep]) if dep in trail else f"{module} -> {dep}")
            elif dep not in state:
                visit(dep, trail + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # a package's __init__ importing its own submodules is not a circle of the code's design
    cycles = [c for c in cycles if not re.fullmatch(r"(tskd_lite\.\w+)( -> \1\.\w+)* -> \1", c)]
    assert not cycles, cycles


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert not long, long


def test_one_file_reaches_into_llama_cpp_python():
    root = PACKAGE.parent
    # llama-cpp-python's private names; kernels' logger "kernels._internals.hf_hub" (tskd_lite/__init__.py) is not one
    pattern = re.compile(r"(?<!kernels\.)_internals|\._model\b|_lora_adapter|llama_cpp\.llama_")
    files = [p for d in ("tskd_lite", "bench") for p in (root / d).rglob("*.py") if pattern.search(p.read_text())]
    assert [str(p.relative_to(root)) for p in files] == ["tskd_lite/backends/llama_cpp.py"]
