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

import numpy as np
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
    """ZF_UNET_224: ``(B, 3, 224, 224)`` -> ``(B, 1, 224, 224)`` float32 probabilities.

    With other ``filters`` / ``in_channels`` / ``num_classes`` / ``head_bn`` it is any
    ``zf_unet.build_unet(padding="same", upsampling="nearest", batch_norm=True)`` model;
    :func:`from_keras` builds that twin and copies a Keras model's weights into it.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, dropout: float = 0.2,
                 filters: tuple[int, ...] = FILTERS, head_bn: bool = True):
        super().__init__()
        # per-channel (x - mean) / std, the Keras model's optional `input_normalization` layer
        self.register_buffer("in_mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("in_std", torch.ones(1, in_channels, 1, 1))
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
        self.head_bn = (nn.BatchNorm2d(num_classes, eps=BN_EPS, momentum=BN_MOMENTUM)
                        if head_bn else nn.Identity())
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.in_mean) / self.in_std
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for dec, skip in zip(self.decoders, reversed(skips)):
            x = dec(torch.cat([self.up(x), skip], dim=1))
        x = self.head_bn(self.head_conv(x)).float()
        return torch.sigmoid(x) if self.num_classes == 1 else torch.softmax(x, dim=1)


def from_keras(model) -> ZFUNet224:
    """The PyTorch twin of a ``zf_unet.build_unet`` model (2-D, ``padding="same"``, nearest
    upsampling, BatchNorm, no backbone) with its weights, in eval mode (float32)."""
    by_name = {layer.name: layer for layer in model.layers}
    depth = 1 + sum(1 for n in by_name if n.startswith("enc") and n.endswith("_pool"))
    filters = tuple(int(by_name[f"enc{lv}_conv1"].filters) for lv in range(depth - 1)) + (
        int(by_name["bottleneck_conv1"].filters),)
    in_channels = int(model.input_shape[-1])
    num_classes = int(by_name["head_conv"].filters)
    net = ZFUNet224(in_channels, num_classes, dropout=0.0, filters=filters,
                    head_bn="head_bn" in by_name)

    def conv(dst: nn.Conv2d, name: str) -> None:
        kernel, bias = by_name[name].get_weights()
        dst.weight.data = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
        dst.bias.data = torch.from_numpy(bias.copy())

    def bn(dst: nn.BatchNorm2d, name: str) -> None:
        layer = by_name[name]
        gamma, beta, mean, var = layer.get_weights()
        dst.eps = float(layer.epsilon)
        for t, v in zip((dst.weight, dst.bias, dst.running_mean, dst.running_var),
                        (gamma, beta, mean, var)):
            t.data = torch.from_numpy(v.copy())

    def block(dst: DoubleConv, prefix: str) -> None:
        convs = [m for m in dst if isinstance(m, nn.Conv2d)]
        bns = [m for m in dst if isinstance(m, nn.BatchNorm2d)]
        for i in (0, 1):
            conv(convs[i], f"{prefix}_conv{i + 1}")
            bn(bns[i], f"{prefix}_bn{i + 1}")

    for lv, enc in enumerate(net.encoders):
        block(enc, f"enc{lv}")
    block(net.bottleneck, "bottleneck")
    for i, dec in enumerate(net.decoders):
        block(dec, f"dec{depth - 2 - i}")
    conv(net.head_conv, "head_conv")
    if "head_bn" in by_name:
        bn(net.head_bn, "head_bn")
    if "input_normalization" in by_name:
        norm = by_name["input_normalization"]
        mean = torch.as_tensor(np.asarray(norm.mean), dtype=torch.float32).reshape(1, -1, 1, 1)
        var = torch.as_tensor(np.asarray(norm.variance), dtype=torch.float32).reshape(
            1, -1, 1, 1)
        net.in_mean.data = mean.expand_as(net.in_mean).clone()
        net.in_std.data = torch.sqrt(torch.clamp(var, min=1e-12)).expand_as(net.in_std).clone()
    return net.eval()


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


def weighted_bce_loss(probs: torch.Tensor, target: torch.Tensor,
                      weight: torch.Tensor) -> torch.Tensor:
    """The ISBI recipe's loss (``weighted_ce`` on one sigmoid channel) in float32: the mean
    over pixels of ``weight * BCE``, as Keras reduces a per-pixel loss with a per-pixel
    ``sample_weight``. All tensors ``(B, 1, H, W)``."""
    p = probs.float().clamp(EPS, 1.0 - EPS)
    t = target.float()
    return (weight.float() * -(t * torch.log(p) + (1.0 - t) * torch.log(1.0 - p))).mean()
