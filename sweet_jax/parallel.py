"""Device mesh, logical-axis rules and shardings.

The config owns both the mesh (`[(axis, size), ...]`, one size may be -1 to
fill) and the logical-to-mesh rules; model code only names logical axes.
Meshes are always built with `AxisType.Auto` axes, so GSPMD propagates the
shardings of Linen parameters and of our activation constraints.
"""

import contextlib
import dataclasses
from typing import Any, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

Rules = Sequence[tuple[str, Any]]


def mesh_shape(axes: Sequence[tuple[str, int]], num_devices: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """Resolves a `-1` axis and checks that the mesh covers exactly the devices."""
  names = tuple(name for name, _ in axes)
  sizes = [int(size) for _, size in axes]
  if len(set(names)) != len(names):
    raise ValueError(f"mesh {list(axes)} repeats an axis name")
  fill = [i for i, s in enumerate(sizes) if s == -1]
  if len(fill) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh {list(axes)}: sizes must be positive, with at most one -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if fill:
    if num_devices % known:
      raise ValueError(f"mesh {list(axes)} cannot be filled: {num_devices} devices are not "
                       f"divisible by the fixed axes' product {known}")
    sizes[fill[0]] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f"mesh {list(axes)} has {int(np.prod(sizes))} devices but "
                     f"{num_devices} are available; fix config.mesh")
  return names, tuple(sizes)


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  names, sizes = mesh_shape(axes, len(devices))
  return jax.make_mesh(sizes, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def logical_to_sharding(boxed_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a tree of Linen-boxed (logically partitioned) values.

  Unboxed leaves (step counters, scalars) are replicated.
  """
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, list(rules))


def strip_boxes(tree: Any) -> Any:
  """Removes Linen's logical-partitioning boxes without applying constraints.

  (`nn.unbox` also constrains each value when logical rules are active, which is
  meaningless, and an error, for abstract values.)
  """
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def batch_axes(rules: Rules) -> Any:
  """The mesh axes the batch dimension is split over, per the rules."""
  return nn.logical_to_mesh_axes(("batch",), list(rules))[0]


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
  return NamedSharding(mesh, P(batch_axes(rules)))


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
  axes = batch_axes(rules)
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return int(np.prod([mesh.shape[a] for a in axes]))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_global(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This host's slice of the batch -> global arrays laid out as `sharding`."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


@contextlib.contextmanager
def run_context(mesh: Mesh, rules: Sequence[tuple[str, Any]]):
  """The mesh and logical axis rules under which a run's functions are traced: the
  models' activation constraints apply only inside them."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


@dataclasses.dataclass(frozen=True)
class BoundStep:
  """A jitted function whose last argument, the frozen networks' parameters, is bound:
  called as `(state, batch)` (or `(params, batch)`), lowered the same way. It is traced
  under the run's mesh and rules whoever calls it (trainer, planner, benchmark, tests), so
  all of them compile the trainer's program, activation constraints included."""

  jitted: Any
  frozen: dict[str, Any]
  mesh: Mesh
  rules: Sequence[tuple[str, Any]]

  def __call__(self, *args):
    with run_context(self.mesh, self.rules):
      return self.jitted(*args, self.frozen)

  def lower(self, *args):
    with run_context(self.mesh, self.rules):
      return _BoundLowered(self.jitted.lower(*args, self.frozen), self)


@dataclasses.dataclass(frozen=True)
class _BoundLowered:
  lowered: Any
  step: BoundStep

  def compile(self) -> BoundStep:
    return dataclasses.replace(self.step, jitted=self.lowered.compile())

  def as_text(self) -> str:
    return self.lowered.as_text()


def replicate(tree: Any, mesh: Mesh, *, materialize: bool = True) -> Any:
  """`tree` replicated over the mesh (without `materialize`: its shapes, with that
  sharding, so nothing is placed on the devices)."""
  sharding = replicated(mesh)
  if not materialize:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding),
                        tree)
  return jax.device_put(tree, sharding)
