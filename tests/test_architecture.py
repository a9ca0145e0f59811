"""The import layering of ``src/mmhvae`` (ARCHITECTURE.md): no module imports from a higher layer.

Every ``import`` and ``from ... import`` is read with :mod:`ast`, also those inside functions, and
``importlib.import_module("mmhvae...")`` calls with a literal name. A module imports from its own
layer or the ones below it only.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mmhvae"

#: Lowest first. A top-level module or package of ``mmhvae`` belongs to exactly one layer.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"mmhvae", "errors", "atomic", "config", "config_upgrade", "subsets"}),
    ("data, nn", {"data", "nn", "outputs"}),
    ("models", {"models", "methods", "runtime"}),
    ("checkpoint I/O", {"checkpoint", "trained_model"}),
    ("train, eval, infer", {"train", "eval", "infer", "compute"}),
    ("applications", {"downstream", "compare", "realbench", "pretrained"}),
    ("commands", {"commands", "cli"}),
]
#: Imports that the layers allow but the design does not: evaluation and inference are siblings.
FORBIDDEN = {("eval", "infer"), ("infer", "eval")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, imported mmhvae module)`` for every import in ``path``, function-level ones included."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            else:
                found.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((node.lineno, arg.value))
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                found.append((node.lineno, str(arg.values[0].value).rstrip(".")))
    return [(line, name) for line, name in found if name == "mmhvae" or name.startswith("mmhvae.")]


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "mmhvae"


def _layer_of() -> dict[str, int]:
    out: dict[str, int] = {}
    for rank, (_, names) in enumerate(LAYERS):
        for name in names:
            assert name not in out, f"{name} is in two layers"
            out[name] = rank
    return out


def test_every_module_has_a_layer():
    layer = _layer_of()
    tops = {_top(_module_name(p)) for p in SRC.rglob("*.py")}
    missing = sorted(tops - set(layer))
    assert not missing, f"modules without a layer in tests/test_architecture.py LAYERS: {missing}"


def test_no_module_imports_from_a_higher_layer():
    layer = _layer_of()
    violations = []
    for path in sorted(SRC.rglob("*.py")):
        me = _top(_module_name(path))
        if me not in layer:
            continue  # reported by test_every_module_has_a_layer
        for line, imported in _imports(path):
            other = _top(imported)
            if other not in layer:
                continue
            upward = layer[other] > layer[me]
            if upward or (me, other) in FORBIDDEN:
                where = path.relative_to(SRC.parent)
                violations.append(
                    f"{where}:{line} imports {imported} ({LAYERS[layer[me]][0]} -> {LAYERS[layer[other]][0]})"
                )
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_the_import_reader_sees_function_level_and_relative_imports(tmp_path):
    assert _top("mmhvae.train.trainer") == "train" and _top("mmhvae") == "mmhvae"
    runner = SRC / "eval" / "runner.py"
    names = {name for _, name in _imports(runner)}
    assert "mmhvae.data.dataset" in names  # imported inside evaluate_checkpoints
