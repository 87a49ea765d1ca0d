"""Checking and shaping the inputs of a smoothed classifier: an image batch ``(B, C, H, W)`` in [0, 1] with
the channels the model expects."""

from __future__ import annotations

import torch

from multiguard.sampling.engine import as_batch


def image_channels(model: object) -> int | None:
    """The channels a model's images must have: the ``in_channels`` of its first layer when that is a 2-D
    convolution (``None`` otherwise: a model of vectors, or one whose first layer says nothing)."""
    if not isinstance(model, torch.nn.Module):
        return None
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            return int(module.in_channels)
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv3d, torch.nn.LazyLinear)):
            return None
    return None


def as_image_batch(x: object, check_range: bool = True, channels: int | None = None) -> torch.Tensor:
    """``x`` as a batch for :meth:`MultiGuard.certify` and :meth:`MultiGuard.predict`, refusing what users pass
    by mistake.

    - Integer inputs (``uint8`` images in 0..255) are refused: sigma and the radii are in the units of x.
    - One image ``(C, H, W)`` with C = 1 or 3 (or ``channels``) gets the batch axis: ``(1, C, H, W)``.
    - With ``channels`` (the model takes images of that many channels, see :func:`image_channels`), anything
      but ``(C, H, W)`` or ``(N, C, H, W)`` with C = ``channels`` is refused in one line naming the shape: an
      image in height x width x channels layout (as PIL and NumPy hold it) says how to permute it.
    - With ``check_range``, an image batch ``(N, C, H, W)`` with values above 1 is refused (pixels belong in
      [0, 1]; normalisation belongs inside the model).
    """
    tensor = as_batch(x)
    if tensor.dtype == torch.bool or not tensor.is_floating_point():
        raise ValueError(
            f"x holds {str(tensor.dtype).replace('torch.', '')} values; MultiGuard adds noise of standard deviation "
            "sigma in the units of x and the model was trained on pixels in [0, 1]: pass x.float() / 255 for "
            "8-bit images"
        )
    shape = tuple(tensor.shape)
    if channels is not None:
        if tensor.ndim == 3 and shape[0] != channels and shape[-1] == channels:
            raise ValueError(f"x of shape {shape} is one image in height x width x channels layout; MultiGuard "
                             f"takes (C, H, W): pass x.permute(2, 0, 1)")
        if tensor.ndim == 4 and shape[1] != channels and shape[-1] == channels:
            raise ValueError(f"x of shape {shape} is a batch in N x height x width x channels layout; MultiGuard "
                             f"takes (N, C, H, W): pass x.permute(0, 3, 1, 2)")
        if tensor.ndim not in (3, 4):
            raise ValueError(f"x has {tensor.ndim} dimensions (shape {shape}); the model takes images: one "
                             f"(C, H, W) or a batch (N, C, H, W) with C = {channels}")
        if shape[-3] != channels:
            raise ValueError(f"x of shape {shape} has images of {shape[-3]} channels; the model's first layer "
                             f"takes {channels} channels (one image is (C, H, W), a batch (N, C, H, W))")
        if tensor.ndim == 3:
            tensor = tensor.unsqueeze(0)
    elif tensor.ndim == 3 and tensor.shape[0] in (1, 3):
        tensor = tensor.unsqueeze(0)  # one image (C, H, W)
    if check_range and tensor.ndim == 4 and tensor.numel():
        top = float(tensor.max())
        if top > 1.0 + 1e-6:
            raise ValueError(
                f"x has values up to {top:g}, above 1: images must have pixels in [0, 1] (sigma and the radii are "
                "in those units): divide 0-255 images by 255 and put any normalisation inside the model "
                "(check_range=False for inputs that are not such images)"
            )
    return tensor
