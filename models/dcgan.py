"""The DCGAN pair of the book's chapter 7 (anime avatars): NetG draws, NetD judges.

Architecture after Radford et al. 2016 (arXiv:1511.06434), as the book adapts it to 96 x 96:
the generator grows a 1 x 1 noise to 4 x 4, doubles it with stride-2 transposed convs while
halving the width down to --ngf, and a last transposed conv multiplies the side by 3
(kernel 5, stride 3, padding 1: 32 -> 96) into 3 Tanh channels. The discriminator mirrors it
with LeakyReLU(0.2). Any side of the form 4 * 2^n * 2 or 4 * 2^n * 3 works: 32, 48, 64, 96,
128, 192, ... (the last layer multiplies by 2 or 3). NetD returns one logit per image (no
Sigmoid), so the loss is computed stably and under autocast.
"""
import math

from torch import nn

from utils.core.errors import UsageError
from utils.core.registry import MODELS


def layout(image_size):
    """(doublings, last factor) with image_size = 4 * 2**doublings * factor; the factor is
    3 (the book's 96 px) when possible, else 2."""
    for factor in (3, 2):
        base = image_size / (4 * factor)
        if base >= 1 and base == int(base) and math.log2(base) == int(math.log2(base)):
            return int(math.log2(base)), factor
    raise UsageError(
        f"--image-size={image_size} does not fit the DCGAN nets: use 4 * 2^n * 2 or 4 * 2^n * 3 "
        f"(e.g. 32, 48, 64, 96, 128)"
    )


# The last (first) layer's kernel, stride and padding for a factor of 2 or 3.
LAST_LAYER = {2: (4, 2, 1), 3: (5, 3, 1)}


def dcgan_init(module):
    """DCGAN's initialisation: conv weights ~ N(0, 0.02), batch-norm scale ~ N(1, 0.02)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(layer.weight, 0.0, 0.02)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.normal_(layer.weight, 1.0, 0.02)
            nn.init.zeros_(layer.bias)


@MODELS.register()
class NetG(nn.Module):
    """Generator: noise (N, nz, 1, 1) -> images (N, 3, image_size, image_size) in [-1, 1]."""

    def __init__(self, nz=100, ngf=64, image_size=96):
        super().__init__()
        doublings, factor = layout(image_size)
        width = ngf * 2**doublings
        layers = [nn.ConvTranspose2d(nz, width, 4, 1, 0, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
        for _ in range(doublings):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, 3, *LAST_LAYER[factor], bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, noise):
        return self.main(noise)


@MODELS.register()
class NetD(nn.Module):
    """Discriminator: images (N, 3, image_size, image_size) -> one real/fake logit each (N,)."""

    def __init__(self, ndf=64, image_size=96):
        super().__init__()
        doublings, factor = layout(image_size)
        width = ndf
        layers = [nn.Conv2d(3, width, *LAST_LAYER[factor], bias=False), nn.LeakyReLU(0.2, inplace=True)]
        for _ in range(doublings):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, inplace=True)]
            width *= 2
        layers += [nn.Conv2d(width, 1, 4, 1, 0, bias=False)]
        self.main = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, images):
        return self.main(images).flatten()
