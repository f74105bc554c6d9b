"""Classification networks from plain keyword arguments (MONAI architectures plus a small CPU CNN).

:func:`build_network` is the one constructor the pipelines and the bundle exporter use; every
network maps an image batch (N, C, H, W) or (N, C, H, W, D) to logits (N, K).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lilaw_med.errors import InputError

__all__ = ["NETWORKS", "SmallCNN", "build_network", "load_pretrained"]

logger = logging.getLogger(__name__)


def _norm(kind: str, spatial_dims: int, channels: int, momentum: float = 0.3) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(channels, momentum=momentum)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"norm must be 'batch' or 'group' but is {kind!r}.")


class SmallCNN(nn.Module):
    """A small convolutional classifier for quick CPU runs (about 60k parameters at width 16).

    Four blocks of conv-norm-ReLU with stride-2 downsampling after the first, global average
    pooling, optional dropout and a linear classifier. ``norm="batch"`` (default) trains fastest;
    ``"group"`` behaves the same in train and eval mode at any batch size but learns much more
    slowly on small data (docs/pipelines.md).

    The batch-norm momentum is 0.3, not PyTorch's 0.1: a quick CPU run has few iterations per
    epoch, and with 0.1 the running statistics lag the fast-changing weights so far that the
    eval-mode outputs (validation, and LiLAW's meta step with ``val_mode="eval"``) collapse to
    one class (figures in docs/pipelines.md).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels C.
        num_classes: outputs K (logits).
        width: channels of the first block (doubled twice).
        dropout: dropout probability before the classifier.
        norm: ``"batch"`` (BatchNorm) or ``"group"`` (GroupNorm, 8 groups).
        bn_momentum: momentum of the batch-norm running statistics.

    Raises:
        ValueError: when ``spatial_dims`` is not 2 or 3, or ``norm`` is unknown.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, num_classes: int, width: int = 16, dropout: float = 0.0,
        norm: str = "batch",
        bn_momentum: float = 0.3,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3 but is {spatial_dims}.")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        pool = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d
        chans = [in_channels, width, width * 2, width * 4, width * 4]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                conv(chans[i], chans[i + 1], kernel_size=3, stride=1 if i == 0 else 2, padding=1, bias=False),
                _norm(norm, spatial_dims, chans[i + 1], bn_momentum),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = pool(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(chans[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, C, *spatial). Returns: logits (N, K)."""
        return self.classifier(self.dropout(self.pool(self.features(x)).flatten(1)))


def load_pretrained(network: nn.Module, weights: str | os.PathLike) -> nn.Module:
    """Loads a local state dict into ``network``, skipping the classifier when its shape differs.

    Args:
        network: the freshly built network.
        weights: a ``.pt``/``.pth`` file holding a state dict (or ``{"state_dict": ...}`` /
            ``{"network": ...}``), loaded with ``weights_only=True``.

    Returns:
        ``network`` with the weights loaded.

    Raises:
        FileNotFoundError: when the file is absent (weights are never downloaded).
        InputError: when no parameter of the file matches the network.
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path} (weights are never downloaded; give a local file).")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "network", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    own = network.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise InputError(f"{path}: no parameter matches the network ({len(state)} tensors in the file).")
    skipped = sorted(set(state) - set(matched))
    if skipped:
        logger.info("pretrained %s: %d tensors loaded, %d skipped (shape or name differs): %s",
                    path, len(matched), len(skipped), ", ".join(skipped[:5]))
    network.load_state_dict(matched, strict=False)
    return network


# ---------------------------------------------------------------------------------------- the table
NetworkFactory = Callable[[int, int, int, float], nn.Module]
"""``factory(spatial_dims, in_channels, num_classes, dropout)`` -> a network mapping images to logits."""


def _small_cnn(spatial_dims: int, in_channels: int, num_classes: int, dropout: float) -> nn.Module:
    return SmallCNN(spatial_dims, in_channels, num_classes, dropout=dropout)


def _resnet(name: str) -> NetworkFactory:
    def build(spatial_dims: int, in_channels: int, num_classes: int, dropout: float) -> nn.Module:
        from monai.networks import nets  # MONAI's networks load on use: validating a config stays cheap

        return getattr(nets, name)(
            spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes, pretrained=False
        )

    return build


def _densenet121(spatial_dims: int, in_channels: int, num_classes: int, dropout: float) -> nn.Module:
    from monai.networks import nets  # on use, as in _resnet

    return nets.DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes)


def _efficientnet_b0(spatial_dims: int, in_channels: int, num_classes: int, dropout: float) -> nn.Module:
    from monai.networks import nets  # on use, as in _resnet

    return nets.EfficientNetBN(
        "efficientnet-b0", pretrained=False, spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes
    )


NETWORKS: dict[str, NetworkFactory] = {
    "small_cnn": _small_cnn,
    "resnet18": _resnet("resnet18"),
    "resnet34": _resnet("resnet34"),
    "resnet50": _resnet("resnet50"),
    "densenet121": _densenet121,
    "efficientnet-b0": _efficientnet_b0,
}
"""Networks by the name ``model.network`` gives them; ``dropout`` is used by ``small_cnn`` only."""


def build_network(
    name: str,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """Builds a classification network.

    Args:
        name: a key of :data:`NETWORKS`: ``small_cnn`` (CPU default), ``resnet18``/``34``/``50``
            (MONAI ResNet), ``densenet121`` (MONAI DenseNet121), ``efficientnet-b0`` (MONAI EfficientNetBN).
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: number of outputs (1 for a single binary logit).
        pretrained: load ``weights`` (a local file); nothing is downloaded.
        weights: the local weights file used when ``pretrained``.
        dropout: dropout before the classifier (``small_cnn`` only).

    Returns:
        The network (on CPU, in training mode), mapping (N, C, *spatial) to logits (N, num_classes).

    Raises:
        ValueError: on an unknown name, bad dimensions, or ``pretrained`` without ``weights``.
        FileNotFoundError: when ``weights`` does not exist.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3 but is {spatial_dims}.")
    if in_channels < 1 or num_classes < 1:
        raise ValueError(f"in_channels and num_classes must be >= 1 but are {in_channels} and {num_classes}.")
    factory = NETWORKS.get(name)
    if factory is None:
        raise ValueError(f"network must be one of {list(NETWORKS)} but is {name!r}.")
    net = factory(spatial_dims, in_channels, num_classes, float(dropout))
    if pretrained:
        if weights is None:
            raise ValueError("pretrained=True needs a local weights file (weights are never downloaded).")
        load_pretrained(net, weights)
    return net
