"""Kinds of model a user brings, at small sizes, as the source of a module they would write
(``mynets.py``): a MobileNetV3-style net (depthwise convolutions, squeeze-excite, hard-swish),
a ConvNeXt-style net (channels-last LayerNorm, layer scale), a small ViT with
``nn.MultiheadAttention`` (issue 27's three), and DenseGN (GroupNorm and no BatchNorm, grouped
and depthwise convolutions, DenseNet-style concatenated skips: the fourth kind, first tried by
hand); plus an image folder and the conftest that registers them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

SOURCE = '''
import torch
from torch import nn
from torch.nn import functional as F


def conv_bn(cin, cout, k=1, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.Hardswish()) if act else nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.reduce = nn.Conv2d(channels, 8, 1)
        self.expand = nn.Conv2d(8, channels, 1)

    def forward(self, x):
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True)))))


class InvertedResidual(nn.Module):
    def __init__(self, cin, hidden, cout, stride):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(cin, hidden), conv_bn(hidden, hidden, 3, stride, groups=hidden),
            SqueezeExcite(hidden), conv_bn(hidden, cout, act=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.body(x)
        return x + out if self.residual else out


class MobileNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 16, 3, 2), InvertedResidual(16, 32, 16, 1),
                                      InvertedResidual(16, 32, 24, 2), conv_bn(24, 48))
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class LayerNorm2d(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-6)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(0.1 * torch.ones(dim))  # layer scale

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, 4), LayerNorm2d(16))
        self.stage1 = ConvNeXtBlock(16)
        self.down = nn.Sequential(LayerNorm2d(16), nn.Conv2d(16, 32, 2, 2))
        self.stage2 = ConvNeXtBlock(32)
        self.norm = nn.LayerNorm(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.fc(self.norm(x.mean((2, 3))))


class EncoderBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, num_classes=10, dim=32, depth=2, heads=4, patch=4, image=24):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, (image // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.blocks(x)[:, 0]))


class Dense(nn.Module):
    def __init__(self, c, groups):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=groups, bias=False)
        self.norm = nn.GroupNorm(4, c)
        self.act = nn.SiLU()

    def forward(self, x):
        return torch.cat([x, self.act(self.norm(self.conv(x)))], dim=1)


class DenseGN(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU())
        self.block1 = Dense(16, groups=4)
        self.trans = nn.Sequential(nn.Conv2d(32, 24, 1), nn.GroupNorm(4, 24), nn.Hardswish(),
                                   nn.AvgPool2d(2))
        self.block2 = Dense(24, groups=24)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x):
        x = self.block2(self.trans(self.block1(self.stem(x))))
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))
'''

KINDS = {"mobile": ("MobileNet", "fc"), "convnext": ("ConvNeXt", "fc"), "vit": ("ViT", "head"),
         "densegn": ("DenseGN", "fc")}
THREE = ("mobile", "convnext", "vit")  # issue 27's kinds
INPUT = 24

CONFTEST = '''
import torch
from mynets import ConvNeXt, DenseGN, MobileNet, ViT

from pytest_pqbench.models import ModelSpec, register_model
from pytest_pqbench.models.training import train_classifier


def finetune(model, dataset, seed=0, epochs=1, lr=1e-3, target=1.0, teacher=None):
    """A user's loop: the package's reusable trainer, several steps per epoch."""
    return train_classifier(model, dataset, seed=seed, epochs=epochs, lr=lr, target=target,
                            teacher=teacher, batch_size=4, threads=1)


def broken(model, dataset, **_):
    raise RuntimeError("boom: the user's loop failed")


TRAINERS = {{"finetune": finetune, "broken": broken}}
for name, (cls, head) in {kinds!r}.items():
    register_model(ModelSpec(
        name=name, task="classify", input_shape=(3, {size}, {size}),
        builder=globals()[cls], default_dataset="flowers",
        weights=f"{{name}}.pt", trainer=TRAINERS[{trainer!r}],
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), min_accuracy=0.0, max_drop=1.0,
        ignored_layers=lambda model, head=head: [getattr(model, head)],
    ), replace=True)
'''


def namespace() -> dict[str, Any]:
    """The model classes, from the source text a user would write."""
    found: dict[str, Any] = {}
    exec(compile(SOURCE, "mynets.py", "exec"), found)  # the test's own source text
    return found


def build(kind: str, classes: int = 2) -> Any:
    return namespace()[KINDS[kind][0]](classes)


def write_image_folder(root: Path, per_class: int = 6) -> Path:
    """Two classes of noisy colour patches, train and val."""
    import numpy as np

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = np.clip(np.array(colour)[None, None] + rng.normal(0, 30, (20, 20, 3)),
                                 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def set_up(pytester: Any, tmp_path: Path, kinds: tuple[str, ...] = THREE,
           trainer: str = "finetune") -> Path:
    """``mynets.py``, weights for each kind (untrained, seeded), the registering conftest and
    an image folder, in the pytester's folder; returns the image folder."""
    import torch

    pytester.makepyfile(mynets=SOURCE)
    pytester.syspathinsert()
    for kind in kinds:
        torch.manual_seed(0)
        torch.save(build(kind).state_dict(), pytester.path / f"{kind}.pt")
    pytester.makeconftest(CONFTEST.format(kinds={k: KINDS[k] for k in kinds}, size=INPUT,
                                          trainer=trainer))
    return write_image_folder(tmp_path / "flowers")
