"""The import order of the packages, strict and checked: every import of every module (those inside functions
included: a lazy import hides a cycle as well as any) goes to its own layer or one below.

  0  shards.io, shards.tokenizer,  torch-free foundations: safe file writes, the GPT-2 vocabulary, the flag
     shards.cli                    parser of every command
  1  shards                        the on-disk format: shards, SFT shards, manifests, verification, reports
  2  gpt                           the model, its kernels, checkpoints, inference, the chat template
  3  pipelines, train              the data stages and the trainers; train reads only pipelines' dataset names
                                   (`pipelines`) and its output folders (`pipelines.stage`), pipelines no train;
                                   a stage (a command of `python -m pipelines|train`) imports no other stage
  4  bench, every `__main__`       benchmarks and command lines

A test also keeps torch out of what a pipeline worker imports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shards", "gpt", "pipelines", "train", "bench")
FOUNDATIONS = ("shards.io", "shards.tokenizer", "shards.cli")
LAYERS = {"shards": 1, "gpt": 2, "pipelines": 3, "train": 3, "bench": 4}
TRAIN_MAY_USE = ("pipelines", "pipelines.stage")  # the dataset names and the output folders, no internals


def stages() -> set[str]:
    """The modules of the commands of `python -m pipelines` and `python -m train`: one never imports another."""
    from pipelines.__main__ import COMMANDS as PIPELINES
    from train.__main__ import COMMANDS as TRAINERS
    return {*PIPELINES.values(), *TRAINERS.values()}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def layer(module: str) -> int:
    if module in FOUNDATIONS:
        return 0
    if module.endswith(".__main__"):
        return 4
    return LAYERS[module.split(".")[0]]


def imports(module: str, path: Path, known: dict) -> list[tuple[int, str]]:
    """(line, module) of every first-party module that `module` imports, wherever the import statement is."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import mod` imports the submodule pkg.mod
                found.append((node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base))
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def test_no_module_imports_from_a_layer_above_its_own():
    known, stage_modules = modules(), stages()
    upward = []
    for module, path in known.items():
        for line, name in sorted(set(imports(module, path, known))):
            what = f"{path.relative_to(ROOT)}:{line}: {module} (layer {layer(module)}) imports {name}"
            if name not in known:
                upward.append(f"{what}, which does not exist")
            elif layer(name) > layer(module):
                upward.append(f"{what} (layer {layer(name)})")
            elif module.split(".")[0] == "pipelines" and name.split(".")[0] == "train":
                upward.append(f"{what}: pipelines never use train")
            elif (module.split(".")[0] == "train" and not module.endswith("__main__")
                  and name.split(".")[0] == "pipelines" and name not in TRAIN_MAY_USE):
                upward.append(f"{what}: train uses only {' and '.join(TRAIN_MAY_USE)}")
            elif module in stage_modules and name in stage_modules and name != module:
                upward.append(f"{what}: a stage imports no other stage (share through a module both import)")
    assert not upward, "imports against the layer order (tests/test_layers.py):\n" + "\n".join(upward)


def test_no_import_cycles():
    known = modules()
    graph = {m: {n for _, n in imports(m, p, known) if n in known and n != m} for m, p in known.items()}
    # a package's __init__ runs before its submodules: those importing it back is no cycle of code
    graph = {m: {n for n in deps if not m.startswith(n + ".")} for m, deps in graph.items()}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_pipeline_workers_and_the_template_import_no_torch():
    code = ("import sys, gpt, gpt.template, shards, shards.tokenizer, shards.report, pipelines.pretrain, pipelines.sft, "
            "pipelines.prefs, pipelines.tokenize_stage, pipelines.stage\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr or proc.stdout
