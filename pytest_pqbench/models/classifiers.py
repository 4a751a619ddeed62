"""Small embedded classifiers written here (torchvision does not import on CPU torch 2.13).

``shapes_resnet``: ResNet-style, BatchNorm and residual adds (identity and 1x1 projection).
``shapes_mobilenet``: MobileNetV2-style inverted residuals with depthwise convolutions.
Both train themselves on the synthetic shapes dataset in well under a minute on 2 cores.
"""

from __future__ import annotations

from torch import nn

from .base import ModelSpec, register_model
from .training import train_classifier


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
            act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, act=False))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout
                         else conv_bn(cin, cout, 1, stride, act=False))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class ResNetSmall(nn.Module):
    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, widths[0])]
        cin = widths[0]
        for i, w in enumerate(widths):
            layers.append(BasicBlock(cin, w, stride=1 if i == 0 else 2))
            layers.append(BasicBlock(w, w))
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 3) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.body = nn.Sequential(
            conv_bn(cin, hidden, 1),
            conv_bn(hidden, hidden, 3, stride, groups=hidden),  # depthwise
            conv_bn(hidden, cout, 1, act=False),
        )

    def forward(self, x):
        out = self.body(x)
        return x + out if self.use_res else out


class MobileNetSmall(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        cfg = [(16, 1), (24, 2), (24, 1), (48, 2), (48, 1)]
        layers: list[nn.Module] = [conv_bn(3, 16)]
        cin = 16
        for cout, stride in cfg:
            layers.append(InvertedResidual(cin, cout, stride))
            cin = cout
        layers.append(conv_bn(cin, 128, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def classifier_head(model: nn.Module) -> list[nn.Module]:
    return [model.fc]


register_model(ModelSpec(
    name="shapes_resnet", task="classify", input_shape=(3, 32, 32), builder=ResNetSmall,
    default_dataset="shapes", trainer=train_classifier,
    min_accuracy=0.90, max_drop=0.03, deadline_ms=33.3, ignored_layers=classifier_head,
    description="ResNet-style CNN (BatchNorm, residual adds), 32x32 synthetic shapes",
))
register_model(ModelSpec(
    name="shapes_mobilenet", task="classify", input_shape=(3, 32, 32), builder=MobileNetSmall,
    default_dataset="shapes", trainer=train_classifier,
    min_accuracy=0.90, max_drop=0.03, deadline_ms=33.3, ignored_layers=classifier_head,
    description="MobileNetV2-style CNN (depthwise convs, inverted residuals), 32x32 shapes",
))
