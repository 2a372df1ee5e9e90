"""utils.registry: lookup, family names, errors, duplicates, and the no-import name scan."""
import re

import pytest

from utils.core.errors import UsageError
from utils.core.registry import ALL, MODELS, Registry, display_name

pytestmark = pytest.mark.registry  # every test here reads the registries as they are


def test_unknown_name_lists_registry_available_and_close_matches():
    available = ", ".join(display_name(name) for name in sorted(MODELS.names()))  # every model, however many
    assert {"AlexNet", "LeNet", "ResNet34", "SqueezeNet", "torchvision.*"} <= set(MODELS.names())
    with pytest.raises(UsageError, match=r"unknown model 'resnet34' in the models registry; closest: ResNet34, LeNet\. "
                                         rf"Available: {re.escape(available)}\. To add one, create models/<file>\.py"):
        MODELS.get("resnet34")


def test_get_and_build():
    model = MODELS.build("LeNet", num_classes=3)
    assert type(model).__name__ == "LeNet"
    assert model.classifier[-1].out_features == 3


def test_family_entry_binds_suffix():
    model = MODELS.build("torchvision.resnet18", num_classes=5)
    assert model.model_name == "torchvision.resnet18"
    assert model.net.fc.out_features == 5


def test_duplicate_name_names_first_definition():
    table = Registry("things", package="tests")

    @table.register("x")
    class First:
        pass

    with pytest.raises(KeyError, match=r"name 'x' is already registered by .*First at tests/test_registry\.py:\d+"):

        @table.register("x")
        class Second:
            pass


@pytest.mark.parametrize("table", ALL, ids=lambda t: t.name)
def test_source_scan_matches_real_registrations(table):
    scanned = set(table.names())
    table._import_package()
    assert scanned == set(table._entries)
