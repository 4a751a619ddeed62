"""ResNet-18 / ResNet-50, MobileNetV2 and MobileNetV3-Large as published, written here
(torchvision does not import on this machine).

Layer for layer the torchvision definitions (He et al. 2016; Sandler et al. 2018; Howard et al.
2019): at 224 px with 1000 classes they have the published parameter counts and MACs, which
``tests/test_zoo.py`` checks with torch-pruning's counter. ``num_classes`` sets the last layer.
"""

from __future__ import annotations

from torch import nn


def _divisible(v: float, divisor: int = 8) -> int:
    """Channel counts rounded to a multiple of 8, never below 90% of ``v`` (MobileNet papers)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn_act(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups,
                                         bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


# ---- ResNet ------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(conv_bn_act(cin, width, 3, stride),
                                  conv_bn_act(width, cout, 3, act=None))
        self.downsample = (conv_bn_act(cin, cout, 1, stride, act=None)
                           if stride != 1 or cin != cout else nn.Identity())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.downsample(x))


class Bottleneck(BasicBlock):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        nn.Module.__init__(self)
        cout = width * self.expansion
        # stride on the 3x3 convolution (torchvision's "ResNet v1.5")
        self.body = nn.Sequential(conv_bn_act(cin, width, 1), conv_bn_act(width, width, 3, stride),
                                  conv_bn_act(width, cout, 1, act=None))
        self.downsample = (conv_bn_act(cin, cout, 1, stride, act=None)
                           if stride != 1 or cin != cout else nn.Identity())
        self.relu = nn.ReLU(inplace=True)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock], depths: tuple[int, ...],
                 num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
        cin = 64
        for i, (width, depth) in enumerate(zip((64, 128, 256, 512), depths, strict=True)):
            for j in range(depth):
                layers.append(block(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width * block.expansion
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


# ---- MobileNetV2 -------------------------------------------------------------------------------
class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand))
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_act(cin, hidden, 1, act=nn.ReLU6))
        layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   conv_bn_act(hidden, cout, 1, act=None)]
        self.body = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.use_res else self.body(x)


class MobileNetV2(nn.Module):
    # (expansion t, channels c, repeats n, first stride s) as in the paper's Table 2
    CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(3, 32, 3, 2, act=nn.ReLU6)]
        cin = 32
        for t, c, n, s in self.CONFIG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn_act(cin, 1280, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    return MobileNetV2(num_classes)


# ---- MobileNetV3-Large -------------------------------------------------------------------------
class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        squeeze = _divisible(channels // 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x):
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class MobileBlockV3(nn.Module):
    def __init__(self, cin: int, k: int, hidden: int, cout: int, se: bool, act: type[nn.Module],
                 stride: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(conv_bn_act(cin, hidden, 1, act=act))
        layers.append(conv_bn_act(hidden, hidden, k, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden))
        layers.append(conv_bn_act(hidden, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.use_res else self.body(x)


class MobileNetV3Large(nn.Module):
    # (kernel, expanded, out, squeeze-excite, activation, stride): the paper's Table 1
    CONFIG = ((3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2),
              (3, 72, 24, False, "RE", 1), (5, 72, 40, True, "RE", 2),
              (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
              (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1),
              (3, 184, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
              (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
              (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1),
              (5, 960, 160, True, "HS", 1))

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(3, 16, 3, 2, act=nn.Hardswish)]
        cin = 16
        for k, hidden, cout, se, act, stride in self.CONFIG:
            layers.append(MobileBlockV3(cin, k, hidden, cout, se,
                                        nn.ReLU if act == "RE" else nn.Hardswish, stride))
            cin = cout
        layers.append(conv_bn_act(cin, 6 * cin, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(6 * cin, 1280), nn.Hardswish(inplace=True),
                                        nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def mobilenet_v3_large(num_classes: int = 1000) -> MobileNetV3Large:
    return MobileNetV3Large(num_classes)


def classifier_head(model: nn.Module) -> list[nn.Module]:
    """The layer whose outputs are the classes: kept whole by every pruner."""
    if hasattr(model, "fc"):
        return [model.fc]
    return [model.classifier[-1]]


BUILDERS = {"resnet18": resnet18, "resnet50": resnet50, "mobilenet_v2": mobilenet_v2,
            "mobilenet_v3_large": mobilenet_v3_large}
