"""ResNet-34 (He et al., 2015): basic blocks, widths 64-128-256-512, 3-4-6-3 blocks."""
from torch import nn

from models.basic_module import BasicModule
from utils.core.registry import MODELS


class ResidualBlock(nn.Module):
    """Two 3x3 convs plus a shortcut (1x1 conv when the shape changes)."""

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.left = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(out_channels),
        )
        self.right = None
        if stride != 1 or in_channels != out_channels:
            self.right = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x):
        shortcut = x if self.right is None else self.right(x)
        return (self.left(x) + shortcut).relu_()


@MODELS.register()
class ResNet34(BasicModule):
    """ResNet-34 with adaptive average pooling, so any --image-size works."""

    def __init__(self, num_classes=2, pretrained="", in_channels=3):
        super().__init__()
        self.pre = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        widths, depths = (64, 128, 256, 512), (3, 4, 6, 3)
        layers, in_channels = [], 64
        for index, (width, depth) in enumerate(zip(widths, depths)):
            stride = 1 if index == 0 else 2
            blocks = [ResidualBlock(in_channels, width, stride)] + [ResidualBlock(width, width) for _ in range(depth - 1)]
            layers.append(nn.Sequential(*blocks))
            in_channels = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if pretrained:
            self.load_pretrained(pretrained)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.pre(x))).flatten(1))

    def layer_groups(self):
        """The layers from input to output, for --layer-decay: the stem, each residual block, the head."""
        blocks = [f"layers.{stage}.{block}" for stage, blocks in enumerate(self.layers) for block in range(len(blocks))]
        return [["pre"], *([block] for block in blocks), ["fc"]]
