"""`torchvision.<name>`: any torchvision classification model, e.g. torchvision.resnet18.

--pretrained=<file> loads local weights (head re-initialised when its shape differs);
--pretrained=hub downloads torchvision's default weights, which needs internet: offline,
that is a clear error after a short timeout, not a hang.
"""
import socket

from models.basic_module import BasicModule, pretrained_weights
from utils import checkpoint
from utils.errors import UserError
from utils.registry import MODELS

DOWNLOAD_TIMEOUT_S = 20


@MODELS.register("torchvision.*")
def torchvision_model(arch, num_classes=2, pretrained=""):
    """Build torchvision.models.<arch> with `num_classes` outputs."""
    import torchvision
    from torch import nn

    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        from utils.errors import UsageError, did_you_mean

        raise UsageError(f"torchvision has no classification model {arch!r}{did_you_mean(arch, available)}")
    if pretrained == "hub":
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            net = torchvision.models.get_model(arch, weights=weights)
        except OSError as error:  # URLError, timeouts and refused connections are OSErrors
            raise UserError(
                f"could not download {arch} weights ({error}); offline? Download {weights.url} on a "
                f"machine with internet and pass --pretrained=<that file>"
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
        _replace_head(net, num_classes, nn)
    else:
        net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)

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

    def forward(self, x):
        return self.net(x)

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
