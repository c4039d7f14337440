"""ZF_UNET_224 in PyTorch: the reference model for ``benchmarks/train_speed.py``.

Layer for layer the same network as ``zf_unet.ZF_UNET_224()``:

* six levels with 32, 64, 128, 256, 512, 1024 filters (five 2x2 max-pools);
* every block is (Conv 3x3, padding 1, with bias -> BatchNorm -> ReLU) x 2;
* decoder: nearest 2x upsampling, concatenation ``[upsampled, skip]`` on the channel axis;
* ``Dropout2d(0.2)`` (= Keras ``SpatialDropout2D``) after every block except the last
  decoder block;
* head: 1x1 conv -> BatchNorm -> sigmoid, computed in float32 (as the Keras head is).

BatchNorm uses Keras' defaults (epsilon 1e-3, momentum 0.99 = PyTorch momentum 0.01), Adam
Keras' epsilon 1e-7, convolutions He-normal weights. :func:`keras_param_count` counts what
Keras' ``count_params()`` counts (trainable parameters plus the BatchNorm moving mean and
variance): 31,466,757.

Only the benchmark needs this module; PyTorch is not a dependency of zf_unet
(``pip install torch==2.13.0``, the CPU wheel).
"""
from __future__ import annotations

import torch
from torch import nn

FILTERS = (32, 64, 128, 256, 512, 1024)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # Keras momentum 0.99
EPS = 1e-7


class DoubleConv(nn.Sequential):
    """(Conv3x3 -> BN -> ReLU) x 2, then optional ``Dropout2d``."""

    def __init__(self, c_in: int, c_out: int, dropout: float):
        layers: list[nn.Module] = []
        for i in range(2):
            conv = nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=True)
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM),
                       nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class ZFUNet224(nn.Module):
    """ZF_UNET_224: ``(B, 3, 224, 224)`` -> ``(B, 1, 224, 224)`` float32 probabilities."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, dropout: float = 0.2,
                 filters: tuple[int, ...] = FILTERS):
        super().__init__()
        self.encoders = nn.ModuleList()
        c = in_channels
        for f in filters[:-1]:
            self.encoders.append(DoubleConv(c, f, dropout))
            c = f
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(c, filters[-1], dropout)
        c = filters[-1]
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.decoders = nn.ModuleList()
        for level in reversed(range(len(filters) - 1)):
            f = filters[level]
            self.decoders.append(DoubleConv(c + f, f, dropout if level > 0 else 0.0))
            c = f
        self.head_conv = nn.Conv2d(c, num_classes, 1, bias=True)
        nn.init.kaiming_normal_(self.head_conv.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.head_conv.bias)
        self.head_bn = nn.BatchNorm2d(num_classes, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for dec, skip in zip(self.decoders, reversed(skips)):
            x = dec(torch.cat([self.up(x), skip], dim=1))
        x = self.head_bn(self.head_conv(x))
        return torch.sigmoid(x.float())


def keras_param_count(model: nn.Module) -> int:
    """Parameters as Keras counts them: trainable weights + BatchNorm running mean/variance."""
    n = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n += m.running_mean.numel() + m.running_var.numel()
    return n


def bce_dice_loss(probs: torch.Tensor, target: torch.Tensor, bce_weight: float = 0.5,
                  dice_weight: float = 1.0, smooth: float = 1.0) -> torch.Tensor:
    """``zf_unet.losses.BCEDiceLoss()`` in float32: ``0.5 * mean BCE + mean_b (1 - soft Dice_b)``.

    ``probs``/``target``: ``(B, 1, H, W)``; the Dice term is per image, averaged over the batch.
    """
    p = probs.float().clamp(EPS, 1.0 - EPS)
    t = target.float()
    bce = -(t * torch.log(p) + (1.0 - t) * torch.log(1.0 - p)).mean()
    dims = tuple(range(1, p.dim()))
    inter = (t * probs.float()).sum(dims)
    dice = (2.0 * inter + smooth) / (t.sum(dims) + probs.float().sum(dims) + smooth)
    return bce_weight * bce + dice_weight * (1.0 - dice).mean()
