"""SqueezeNet 1.1 (Iandola et al., 2016), built from scratch: nothing is downloaded.

The book fine-tunes torchvision's pretrained SqueezeNet; here --pretrained=<file> loads
local weights (torchvision's squeezenet1_1 state_dict fits: same layer names) and the
classifier is re-initialised when --num-classes differs.
"""
import torch
from torch import nn

from models.basic_module import BasicModule
from utils.core.registry import MODELS


class Fire(nn.Module):
    """Squeeze (1x1) then expand (1x1 and 3x3, concatenated)."""

    def __init__(self, in_channels, squeeze, expand):
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1)


@MODELS.register()
class SqueezeNet(BasicModule):
    """SqueezeNet 1.1: AlexNet-level accuracy with 1.2M parameters; fast on a CPU."""

    def __init__(self, num_classes=2, pretrained="", in_channels=3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, stride=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True), Fire(64, 16, 64), Fire(128, 16, 64),
            nn.MaxPool2d(3, 2, ceil_mode=True), Fire(128, 32, 128), Fire(256, 32, 128),
            nn.MaxPool2d(3, 2, ceil_mode=True), Fire(256, 48, 192), Fire(384, 48, 192), Fire(384, 64, 256), Fire(512, 64, 256),
        )
        final_conv = nn.Conv2d(512, num_classes, 1)
        # The paper (and torchvision) put a ReLU after final_conv. Trained from scratch with Adam
        # it can clamp every logit to 0 and stall at loss ln 2 for good (seen on the bundled
        # sample), so the logits stay linear here; the layer names still match torchvision's.
        self.classifier = nn.Sequential(nn.Dropout(0.5), final_conv, nn.AdaptiveAvgPool2d(1))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # The paper's init: small normal for the last conv so early logits stay near 0.
                if module is final_conv:
                    nn.init.normal_(module.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        if pretrained:
            self.load_pretrained(pretrained)

    def forward(self, x):
        return self.classifier(self.features(x)).flatten(1)
