"""`torchvision.<name>`: any torchvision classification model, e.g. torchvision.resnet18.

--pretrained=<file> loads local weights (head re-initialised when its shape differs);
--pretrained=hub downloads torchvision's default weights, which needs internet: offline,
that is a clear error after a short timeout, not a hang.

Small images (--image-size <= 64, e.g. CIFAR-10's 32 px): a ResNet-family net (one with
`conv1` and `maxpool`, e.g. resnet18, resnext50_32x4d, wide_resnet50_2) gets the CIFAR stem of
He et al. 2016 (section 4.2): a 3 x 3 stride-1 conv1 and no max-pool. The ImageNet stem (7 x 7
stride 2, then a stride-2 max-pool) would shrink 32 px to 8 before the first block and to 1 x 1
in the last stage; with the small stem the last stage sees 4 x 4, the usual 93-95 % CIFAR-10
ResNet-18 recipe. Pretrained weights still load for every other layer (conv1 starts fresh,
logged). Grey data (MNIST): the first convolution takes 1 channel; pretrained RGB filters are
summed over their channels, which answers a grey image as the RGB net answers its grey copy.
"""
import logging

from models.basic_module import BasicModule, pretrained_weights
from utils.core.errors import UsageError, UserError, did_you_mean
from utils.core.io import network_timeout
from utils.core.registry import MODELS

log = logging.getLogger(__name__)
DOWNLOAD_TIMEOUT_S = 20
SMALL_IMAGE = 64  # up to this side, ResNets get the CIFAR stem (see above)


@MODELS.register("torchvision.*")
def torchvision_model(arch, num_classes=2, pretrained="", in_channels=3, image_size=224):
    """Build torchvision.models.<arch> with `num_classes` outputs."""
    import torchvision
    from torch import nn

    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise UsageError(f"torchvision has no classification model {arch!r}{did_you_mean(arch, available)}")
    if pretrained == "hub":
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            with network_timeout(DOWNLOAD_TIMEOUT_S):
                net = torchvision.models.get_model(arch, weights=weights)
        except OSError as error:  # URLError, timeouts and refused connections are OSErrors
            raise UserError(
                f"could not download {arch} weights ({error}); offline? Download {weights.url} on a "
                f"machine with internet and pass --pretrained=<that file>"
            ) from None
        _replace_head(net, num_classes, nn)
    else:
        net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)

    if image_size <= SMALL_IMAGE and isinstance(getattr(net, "conv1", None), nn.Conv2d) and hasattr(net, "maxpool"):
        old = net.conv1
        net.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=old.bias is not None)
        net.maxpool = nn.Identity()
        log.info("torchvision.%s at %d px: 3x3 stride-1 conv1 and no max-pool (the CIFAR stem)", arch, image_size)
    if in_channels != 3:
        _replace_first_conv(net, in_channels, nn)
    model = TorchvisionModel(net, f"torchvision.{arch}")
    if pretrained and pretrained != "hub":
        model.load_pretrained(pretrained)
    return model


class TorchvisionModel(BasicModule):
    """A torchvision network behind BasicModule's save/load; weights live under `net.`."""

    def __init__(self, net, name):
        super().__init__()
        self.model_name = name
        self.net = net

    hidden_prefix = "net."  # --param-groups and --freeze patterns may leave it out: fc, layer4

    def forward(self, x):
        return self.net(x)

    def layer_groups(self):
        """The layers from input to output, for --layer-decay (timm's order): a ResNet's stem,
        each residual block, the head; a ViT's patch embedding, each encoder layer, the
        final norm with the head. None for other architectures."""
        import torchvision

        net = self.net
        if isinstance(net, torchvision.models.ResNet):
            blocks = [f"net.layer{stage}.{block}" for stage in range(1, 5) for block in range(len(getattr(net, f"layer{stage}")))]
            return [["net.conv1", "net.bn1"], *([block] for block in blocks), ["net.fc"]]
        if isinstance(net, torchvision.models.VisionTransformer):
            layers = [f"net.encoder.layers.{name}" for name, _ in net.encoder.layers.named_children()]
            return [["net.class_token", "net.conv_proj", "net.encoder.pos_embedding"], *([layer] for layer in layers),
                    ["net.encoder.ln", "net.heads"]]
        return None

    def load_pretrained(self, path):
        weights = pretrained_weights(path)
        if not any(key.startswith("net.") for key in weights):  # torchvision's own state_dict
            weights = {f"net.{key}": value for key, value in weights.items()}
        return super().load_pretrained(path, weights=weights)


def _replace_head(net, num_classes, nn):
    """Swap the last Linear (or 1x1 conv classifier) for one with `num_classes` outputs."""
    for parent in reversed(list(net.modules())):
        for name, child in reversed(list(parent.named_children())):
            if isinstance(child, nn.Linear):
                if child.out_features != num_classes:
                    setattr(parent, name, nn.Linear(child.in_features, num_classes))
                return
            if isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1) and child.out_channels == 1000:
                setattr(parent, name, nn.Conv2d(child.in_channels, num_classes, 1))
                return


def _replace_first_conv(net, in_channels, nn):
    """Make the first convolution take `in_channels`; RGB filters summed over channels."""
    import torch

    for parent in net.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                conv = nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                                 child.dilation, child.groups, child.bias is not None)
                with torch.no_grad():
                    # The summed filter spread over the new channels: the same response to a
                    # grey image whatever in_channels is.
                    conv.weight.copy_(child.weight.sum(1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels)
                    if child.bias is not None:
                        conv.bias.copy_(child.bias)
                setattr(parent, name, conv)
                return
