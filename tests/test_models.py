"""models: shapes at several image sizes, from-scratch construction, offline hub weights."""
import logging
import socket

import pytest
import torch

from utils.core.errors import UserError
from utils.core.registry import MODELS


@pytest.mark.parametrize("name, size", [("AlexNet", 63), ("ResNet34", 32), ("ResNet34", 100), ("SqueezeNet", 48),
                                        ("LeNet", 16), ("torchvision.mobilenet_v3_small", 32)])
def test_models_give_num_classes_logits_for_any_image_size(name, size):
    model = MODELS.build(name, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 3)


def test_resnet34_has_the_real_widths_and_depths():
    model = MODELS.build("ResNet34")
    assert [len(stage) for stage in model.layers] == [3, 4, 6, 3]
    assert [stage[0].left[0].out_channels for stage in model.layers] == [64, 128, 256, 512]
    assert 21.0e6 < sum(p.numel() for p in model.parameters()) < 21.5e6


def test_unknown_torchvision_model_suggests_names():
    with pytest.raises(UserError, match=r"torchvision has no classification model 'resnet19'; did you mean resnet1"):
        MODELS.build("torchvision.resnet19")


def test_hub_weights_offline_is_a_clear_error_not_a_hang(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: the weights must be fetched

    def offline(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    with pytest.raises(UserError, match=r"could not download resnet18 weights .*offline\? Download https://\S+ on a machine "
                                        r"with internet and pass --pretrained=<that file>"):
        MODELS.build("torchvision.resnet18", pretrained="hub")


def test_hub_is_only_for_torchvision_models():
    with pytest.raises(UserError, match=r"--pretrained=hub downloads torchvision weights: use --model=torchvision.<name>"):
        MODELS.build("LeNet", pretrained="hub")


def test_torchvision_state_dict_loads_as_pretrained(tmp_path):
    import torchvision

    source = torchvision.models.resnet18(num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = MODELS.build("torchvision.resnet18", num_classes=2, pretrained=str(tmp_path / "resnet18.pth"))
    assert torch.equal(model.net.conv1.weight, source.conv1.weight)
    assert model.net.fc.out_features == 2


def test_visdom_without_a_server_warns_once_and_plots_nothing(tmp_path, caplog):
    from utils.visualize import Visualizer

    with caplog.at_level(logging.WARNING, logger="utils.visualize"):
        vis = Visualizer(tmp_path, backend="visdom")
        for step in range(5):
            vis.plot("loss", 1.0 / (step + 1))
        vis.img("inputs", torch.rand(2, 3, 8, 8))
        vis.log("hello")
        vis.close()
    assert len([r for r in caplog.records if r.name == "utils.visualize"]) == 1
