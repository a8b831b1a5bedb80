"""The import contract of docs/architecture.md: layers point one way.

Every `sweet_jax` module is given a layer; a module may import only from its own layer
or lower ones. Only the entry point imports the trainer; evaluation and the tools reach
runs through the assembly (`experiment`); the pure step imports no evaluation module.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "sweet_jax"

# Module (or package) -> layer, bottom to top; the longest matching prefix decides.
LAYERS = {
    "sweet_jax.io": 0, "sweet_jax.weights": 0, "sweet_jax.torch_weights": 0,
    "sweet_jax.parallel": 0, "sweet_jax.metrics": 0, "sweet_jax.nonfinite": 0,
    "sweet_jax.preemption": 0, "sweet_jax.virtual_devices": 0, "sweet_jax.cli": 0,
    "sweet_jax.run_lock": 0, "sweet_jax.run_record": 0, "sweet_jax.progress": 0,
    "sweet_jax.nn": 1, "sweet_jax.codebook": 1, "sweet_jax.curriculum": 1,
    "sweet_jax.quantizers": 2, "sweet_jax.nets": 2, "sweet_jax.optim": 2,
    "sweet_jax.models": 3, "sweet_jax.data": 3,
    "sweet_jax.losses": 4, "sweet_jax.readout": 4, "sweet_jax.sampling": 4,
    "sweet_jax.step": 5, "sweet_jax.checkpoint": 5, "sweet_jax.generator_step": 5,
    "sweet_jax.experiment": 6,
    "sweet_jax.evaluate": 7,
    "sweet_jax.train": 8, "sweet_jax.api": 8,
    "sweet_jax.plan": 9, "sweet_jax.bench": 9, "sweet_jax.compare": 9, "sweet_jax.words": 9,
    "sweet_jax.reconstruct": 9, "sweet_jax.evaluate.__main__": 9, "sweet_jax.tokenize": 9,
    "sweet_jax.sample": 9,
    "sweet_jax.main": 10,
}
FACADE = "sweet_jax"  # the package's __init__: sweet_jax.load_tokenizer, imported lazily


def layer(module: str) -> int:
  if module == FACADE:
    return max(LAYERS.values()) + 1
  parts = module.split(".")
  for n in range(len(parts), 1, -1):
    if ".".join(parts[:n]) in LAYERS:
      return LAYERS[".".join(parts[:n])]
  raise KeyError(f"{module} has no layer in tests/test_layers.py: give it one")


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path: pathlib.Path) -> set[str]:
  """The sweet_jax modules a file imports (at any depth: function-level imports too)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names if a.name.startswith("sweet_jax"))
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sweet_jax"):
      # `from sweet_jax import x` imports the module sweet_jax.x when there is one.
      for alias in node.names:
        candidate = f"{node.module}.{alias.name}"
        is_module = (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists() \
            or (PACKAGE.parent / candidate.replace(".", "/")).is_dir()
        names.add(candidate if is_module else node.module)
  return names


MODULES = {module_name(p): package_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
  wrong = sorted(f"{name} (layer {layer(name)})" for name in MODULES[module]
                 if layer(name) > layer(module))
  assert not wrong, f"{module} (layer {layer(module)}) imports upwards: {wrong}"


def test_only_the_entry_point_imports_the_trainer():
  importers = sorted(m for m, names in MODULES.items() if "sweet_jax.train" in names)
  assert importers == ["sweet_jax.main"]


def test_the_step_imports_no_evaluation_and_tools_use_the_assembly():
  assert not any(n.startswith("sweet_jax.evaluate") for n in MODULES["sweet_jax.step"])
  for tool in ("sweet_jax.plan", "sweet_jax.bench", "sweet_jax.evaluate.saved_run",
               "sweet_jax.evaluate.evaluator", "sweet_jax.api"):
    assert "sweet_jax.experiment" in MODULES[tool], tool


def test_the_contract_catches_an_upward_import(tmp_path):
  bad = tmp_path / "step.py"
  bad.write_text("from sweet_jax.evaluate import evaluator\n")
  assert package_imports(bad) == {"sweet_jax.evaluate.evaluator"}
  assert layer("sweet_jax.evaluate.evaluator") > layer("sweet_jax.step")
