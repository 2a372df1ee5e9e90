"""AlexNet (Krizhevsky et al., 2012), single-stream, as in the book and torchvision."""
from torch import nn

from models.basic_module import BasicModule
from utils.core.registry import MODELS


@MODELS.register()
class AlexNet(BasicModule):
    """AlexNet with adaptive pooling, so any --image-size of at least 63 works."""

    def __init__(self, num_classes=2, pretrained="", in_channels=3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.pool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        if pretrained:
            self.load_pretrained(pretrained)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
