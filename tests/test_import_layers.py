"""Imports run one way through the package's layers (README, section Architecture): a module imports only its own
layer or lower.

Every `import` counts, lazy ones inside functions and `TYPE_CHECKING` blocks included, because a lazy upward import
still ties a lower layer to a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import transformers_rime


PACKAGE = "transformers_rime"
# low to high; a top-level module not named here belongs to the middle layer (2)
LAYERS = (
    {"models"},
    {"inputs", "fingerprints", "losses", "rewards"},
    {"data", "encoder", "export", "model_card", "testing"},
    {"training", "evaluation"},
    {"quickstart"},
    {"cli"},
)
MIDDLE_LAYER = 2
# same layer, but neither may import the other
SEPARATE = ({"training", "evaluation"},)


def layer_of(component: str) -> int:
    """The layer of a first-level name under the package (`"encoder"`, `"training"`, ...)."""
    return next((index for index, names in enumerate(LAYERS) if component in names), MIDDLE_LAYER)


def imported_modules(module: str, source: str, is_package: bool = False) -> list[tuple[int, str]]:
    """`(line, absolute module name)` of every import in `source`, the module `module` (relative ones resolved)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            if node.module is None:  # `from . import x`: x may be a module
                found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, target))
    return found


def upward_imports(module: str, source: str, is_package: bool = False) -> list[str]:
    """The imports of `module` that run against the layer order, each as `"module:line imports target (why)"`."""
    parts = module.split(".")
    if len(parts) == 1:  # the package root is the public facade; only its eager imports are checked, below
        return []
    own = parts[1]
    problems = []
    for line, target in imported_modules(module, source, is_package):
        target_parts = target.split(".")
        if target_parts[0] != PACKAGE:
            continue
        if len(target_parts) == 1 or target_parts[1] in ("__version__",):
            continue  # the root's eager imports are the models layer (checked below)
        other = target_parts[1]
        if other == own:
            continue
        where = f"{module}:{line} imports {target}"
        if own == "models":
            problems.append(f"{where} (models/ ships to the Hub and may import nothing outside it)")
        elif layer_of(other) > layer_of(own):
            problems.append(f"{where} (layer {layer_of(other)} is above {own}'s layer {layer_of(own)})")
        elif any({own, other} <= pair for pair in SEPARATE):
            problems.append(f"{where} ({own} and {other} are separate and may not import each other)")
    return problems


def package_modules() -> list[tuple[str, str, bool]]:
    root = Path(transformers_rime.__file__).parent
    modules = []
    for path in sorted(root.rglob("*.py")):
        parts = (PACKAGE, *path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules.append((name, path.read_text(encoding="utf-8"), is_package))
    return modules


def test_every_import_runs_down_the_layers():
    problems = [
        problem
        for name, source, is_package in package_modules()
        for problem in upward_imports(name, source, is_package)
    ]
    assert not problems, "imports against the layer order (README, section Architecture):\n" + "\n".join(problems)


def test_the_package_root_eagerly_imports_only_the_models_layer():
    root = Path(transformers_rime.__file__).parent / "__init__.py"
    tree = ast.parse(root.read_text(encoding="utf-8"))
    eager = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    targets = [node.module for node in eager if isinstance(node, ast.ImportFrom) and node.level]
    assert targets and all(target.split(".")[0] == "models" for target in targets), targets


def test_every_top_level_module_has_a_layer():
    """A new top-level module lands in the middle layer by default; list it in LAYERS if it belongs elsewhere."""
    names = {name.split(".")[1] for name, _, _ in package_modules() if "." in name}
    assert {"models", "training", "evaluation", "cli", "quickstart", "encoder"} <= names


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("transformers_rime.encoder", "from .training import RimeContrastiveTrainer\n", "layer 3 is above"),
        ("transformers_rime.data.synthetic", "def f():\n    from ..evaluation.tasks import RetrievalTask\n", "above"),
        ("transformers_rime.testing", "if True:\n    import transformers_rime.quickstart\n", "above"),
        ("transformers_rime.training.collator", "from ..evaluation import evaluate\n", "separate"),
        ("transformers_rime.models.rime.modeling_rime", "from ...losses import info_nce\n", "ships to the Hub"),
        ("transformers_rime.losses", "from .. import encoder\n", "above"),
    ],
)
def test_an_upward_import_is_caught(module, source, expected):
    problems = upward_imports(module, source, is_package=module.endswith("losses"))
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize(
    ("module", "source"),
    [
        (
            "transformers_rime.training.collator",
            "from ..encoder import RimeEncoder\nfrom ..models.rime import RimeConfig\n",
        ),
        (
            "transformers_rime.cli",
            "from .quickstart import run_quickstart\nfrom .training import RimeContrastiveTrainer\n",
        ),
        ("transformers_rime.evaluation.harness", "from .. import __version__\nfrom .metrics import mrr\n"),
        ("transformers_rime.encoder", "from .index import build_index\n"),  # same layer
    ],
)
def test_downward_and_same_layer_imports_pass(module, source):
    assert upward_imports(module, source) == []
