"""The library's layers (docs/architecture.md): every module imports only from its own layer
or the layers below it, whether at the top of the file or inside a function."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: source folder -> the package it is installed as (setup.cfg package_dir)
PACKAGES = {
    "unicl": "unicl",
    "tasks": "unicl.tasks",
    "tokenizers": "unicl.tokenizers",
    "moe": "unicl.moe",
}

#: lowest first; a module belongs to the layer of its longest matching prefix
LAYERS = [
    (
        "foundations",
        [
            "unicl._version",
            "unicl.registry",
            "unicl.paths",
            "unicl.ownership",
            "unicl.devices",
            "unicl.seeding",
            "unicl.plugins",
            "unicl.safe_load",
            "unicl.masks",
        ],
    ),
    ("tokenizers", ["unicl.tokenizers", "unicl.vocab"]),
    ("tasks", ["unicl.tasks"]),
    (
        "packing",
        [
            "unicl.attributes",
            "unicl.generation_steps",
            "unicl.batch",
            "unicl.packer",
            "unicl.token_cache",
            "unicl.streams",
        ],
    ),
    (
        "model",
        [
            "unicl.moe",
            "unicl.model",
            "unicl.blocks",
            "unicl.copy_head",
            "unicl.kv_cache",
            "unicl.loss",
            "unicl.generate",
        ],
    ),
    ("configuration", ["unicl.training.config", "unicl.config"]),
    ("training and files", ["unicl.training", "unicl.model_files", "unicl.tokenizers.vqgan_train"]),
    ("predictor", ["unicl.predictor", "unicl.evaluate"]),
    (
        "interface",
        [
            "unicl",
            "unicl.inputs",
            "unicl.api",
            "unicl.demo",
            "unicl.learning",
            "unicl.cli",
            "unicl.commands",
            "unicl.__main__",
        ],
    ),
]


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    rest = parts[1:-1] if parts[-1] == "__init__" else parts[1:]
    return ".".join([PACKAGES[parts[0]], *rest])


def _layer(module: str) -> int:
    best = max(
        (
            (len(p), i)
            for i, (_, prefixes) in enumerate(LAYERS)
            for p in prefixes
            if module == p or module.startswith(p + ".")
        ),
        default=None,
    )
    assert best is not None, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return best[1]


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name == "unicl" or name.startswith("unicl."):
                yield name, node.lineno


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = _module(path)
            for name, line in _imports(path):
                if _layer(name) > _layer(module):
                    upward.append(
                        f"{path.relative_to(ROOT)}:{line} ({LAYERS[_layer(module)][0]}) imports "
                        f"{name} ({LAYERS[_layer(name)][0]})"
                    )
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_the_layer_table_is_checked_against_real_modules():
    modules = {_module(p) for f in PACKAGES for p in (ROOT / f).rglob("*.py")}
    for _, prefixes in LAYERS:
        for prefix in prefixes:
            assert any(m == prefix or m.startswith(prefix + ".") for m in modules), prefix
