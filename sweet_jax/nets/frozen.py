"""The run's frozen networks, from the config: which ones the stages and evaluation need,
their parameters loaded by the safe loaders and replicated over the mesh.

  perceptual  the perceptual loss's LPIPS network (config.perceptual)
  lpips       the LPIPS-VGG16 metric (the loss's copy when that is VGG16 too)
  i3d         rFVD (clip models, config.eval.fvd)
  inception   rFID (image models, the user's config.eval.inception_weights)
  teacher     the alignment term's DINOv2 (config.alignment), resampled to the model
"""

import dataclasses
from typing import Any

import ml_collections
from flax import linen as nn
from jax.sharding import Mesh

from sweet_jax import parallel
from sweet_jax.nets.dinov2 import load_teacher
from sweet_jax.nets.i3d import I3D, load_i3d_variables
from sweet_jax.nets.inception import FIDInceptionV3, load_inception_variables
from sweet_jax.nets.lpips import LPIPS, load_lpips_params


@dataclasses.dataclass(frozen=True)
class FrozenNets:
  """The modules (None when unused) and their replicated parameters by name."""

  perceptual: LPIPS | None
  lpips: LPIPS | None
  i3d: I3D | None
  inception: FIDInceptionV3 | None
  teacher: nn.Module | None
  params: dict[str, Any]

  def eval_features(self, modality: str) -> tuple[str, ...]:
    """The originals' feature statistics an eval step computes with these networks
    (what the evaluator may cache): VGG16 (FD-VGG), I3D (rFVD, clips), Inception (rFID,
    images)."""
    names = []
    if self.lpips is not None:
      names.append("vgg_real")
    if self.i3d is not None and modality == "video":
      names.append("i3d_real")
    if self.inception is not None and modality == "image":
      names.append("inception_real")
    return tuple(names)


def load(config: ml_collections.ConfigDict, mesh: Mesh, *, modality: str,
         perceptual: bool, alignment_width: int | None, materialize: bool = True
         ) -> FrozenNets:
  """The networks the run needs: `perceptual` when a stage weights the perceptual term,
  `alignment_width` (the model's projector width) when one weights the alignment term.
  Without `materialize`: parameters as shapes with the replicated sharding (the memory
  planner lowers steps without placing them on hundreds of virtual devices)."""
  params: dict[str, Any] = {}
  loss_lpips = LPIPS(config.perceptual.network) if perceptual else None
  if loss_lpips is not None:
    params["perceptual"] = load_lpips_params(loss_lpips.network, config.perceptual.weights)
  eval_lpips = LPIPS("vgg16") if config.eval.lpips else None
  if eval_lpips is not None:
    same = loss_lpips is not None and loss_lpips.network == eval_lpips.network
    params["lpips"] = params["perceptual"] if same else load_lpips_params(eval_lpips.network)
  i3d = I3D() if config.eval.fvd and modality == "video" else None
  if i3d is not None:
    params["i3d"] = load_i3d_variables(config.eval.i3d_weights)
  inception = (FIDInceptionV3() if config.eval.inception_weights and modality == "image"
               else None)
  if inception is not None:
    params["inception"] = load_inception_variables(config.eval.inception_weights)
  teacher = None
  if alignment_width is not None:
    teacher, params["teacher"] = _alignment_teacher(config, alignment_width)
  return FrozenNets(perceptual=loss_lpips, lpips=eval_lpips, i3d=i3d, inception=inception,
                    teacher=teacher,
                    params=parallel.replicate(params, mesh, materialize=materialize))


def _alignment_teacher(config: ml_collections.ConfigDict,
                       align_width: int) -> tuple[nn.Module, dict[str, Any]]:
  """The alignment term's frozen teacher (config.alignment), resampled to the model's
  patch and image size, checked against the model's projector width."""
  if not align_width:
    raise ValueError(f"config.loss.alignment > 0 needs a model with an alignment projector "
                     f"(SoftVQ-VAE: set config.model.align_width to the teacher's width); "
                     f"model {config.model.name!r} has none")
  module, variables = load_teacher(
      config.alignment.teacher_path, image_size=config.model.image_size,
      patch_size=config.model.patch_size, num_heads=config.alignment.teacher_heads)
  if module.width != align_width:
    raise ValueError(f"the teacher {config.alignment.teacher_path} has width {module.width}, "
                     f"config.model.align_width={align_width}: set it to {module.width}")
  return module, variables
