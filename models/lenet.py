"""LeNet-5 style CNN (LeCun et al., 1998); tiny and fast on any CPU.

The network of the PyTorch tutorials: 1 x 28 x 28 MNIST digits and 3 x 32 x 32 CIFAR-10
images (in_channels comes from the data). The first convolution pads by 2, as LeNet-5 saw
its 28 px digits padded to 32, so both sizes reach the 5 x 5 feature maps of the original;
adaptive pooling makes any --image-size of at least 16 work.
"""
from torch import nn

from models.basic_module import BasicModule
from utils.core.registry import MODELS


@MODELS.register()
class LeNet(BasicModule):
    """Two conv + pool stages and three fully connected layers (with dropout)."""

    def __init__(self, num_classes=2, pretrained="", in_channels=3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True), nn.Dropout(0.2),
            nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes),
        )
        if pretrained:
            self.load_pretrained(pretrained)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))
