"""Fine-tuning: parameter groups by name, --no-decay-norm-bias, --layer-decay, --freeze with
--unfreeze-epoch (and bit-exact resume across an unfreeze), the lr finder and --profile."""
import csv
import json

import pytest
import torch

from conftest import load, make_dogcat, run_cli, tiny_flags, with_flags
from configs.loader import load_config
from configs.values import Text
from utils.core.errors import UsageError
from utils.core.registry import MODELS
from utils.engine.param_groups import Grouping
from utils.lr_find.search import RangeTest, lr_at

RESNET = {"model": "torchvision.resnet18", "image-size": 16, "batch-size": 2, "lr": 0.001, "print-freq": 3}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fine-tuning")
    make_dogcat(root / "data", per_class=12, test_images=3)
    return root


def flags(root, env, **extra):
    return tiny_flags(root / "data", root, env=env, **extra)


def no_run_dirs(root):
    runs = root / "runs"
    return not runs.exists() or not [path for path in runs.iterdir() if path.name != "image-cache"]


# -- bad input: one line, exit 2, nothing written ---------------------------------------------
@pytest.mark.parametrize("extra, message", [
    ({"param-groups": "features"}, "is not <pattern>=<lr multiplier>"),
    ({"param-groups": "features=0"}, "lr_mult must be > 0; to keep parameters fixed use freeze: true"),
    ({"param-groups": "features=-1"}, "lr_mult must be within 0..10000"),
    ({"param-groups": "features=1e9"}, "lr_mult must be within 0..10000"),
    ({"param-groups": "features=nan"}, "lr_mult must be a number"),
    ({"param-groups": "re:(features=2"}, "is not a valid regular expression"),
    ({"param-groups": "feat[ures=2"}, "has an unclosed [ ]"),
    ({"param-groups": "[{params: features, lr: 2}]"}, "unknown key 'lr' (keys: params, lr_mult"),
    ({"param-groups": "[{params: features, weight_decay: 0, wd_mult: 0}]"}, "not both"),
    ({"param-groups": "features=2,features=3"}, "is given twice"),
    ({"param-groups": "featurs=2"}, "pattern 'featurs' matches no parameter (closest: features"),
    ({"freeze": "clasifier"}, "--freeze: pattern 'clasifier' matches no parameter (closest: classifier"),
    ({"freeze": "features,classifier"}, "freezes every parameter of the run"),
    ({"freeze": "*"}, "freezes every parameter of the run"),
    ({"freeze": "features", "unfreeze-epoch": 3, "max-epoch": 2}, "after the run's last (--max-epoch=2); give "
                                                                   "--unfreeze-epoch=2 or a larger --max-epoch"),
    ({"freeze": "features", "unfreeze-epoch": 1}, "--unfreeze-epoch=1 unfreezes before the first epoch"),
    ({"unfreeze-epoch": 2, "max-epoch": 2}, "has nothing to unfreeze; give --freeze=<patterns>"),
    ({"freeze": "features", "unfreeze": "gradual"}, "--unfreeze=gradual needs --unfreeze-epoch=N"),
    ({"layer-decay": 0}, "--layer-decay must be within (0, 1]"),
    ({"layer-decay": 1.5}, "--layer-decay must be within (0, 1]"),
    ({"layer-decay": 0.7}, "model LeNet does not order its layers"),
    ({"profile": 50}, "--profile=50: an epoch has 4 steps here (16 images, --batch-size=4)"),
])
def test_bad_fine_tuning_input_is_one_line_and_writes_nothing(data, tmp_path, extra, message):
    result = run_cli("train", *flags(data, "bad", **extra, **{"checkpoint-dir": tmp_path / "runs"}))
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert message in last and last.startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert no_run_dirs(tmp_path)


# -- groups -------------------------------------------------------------------------------
def test_groups_are_logged_and_saved_with_their_lr_and_weight_decay(data):
    result = run_cli("train", *flags(data, "groups", **{"param-groups": "classifier.5=10,features.0=0.5",
                                                        "no-decay-norm-bias": "true", "weight-decay": 0.01}))
    assert result.returncode == 0, result.stderr
    # LeNet: features.0 and .3 convs, classifier.0/.3/.6 linears; biases go to the no-decay groups
    for line in ("LeNet: 6 parameter groups",
                 "  default: 3 tensors, 60,480 parameters, lr 0.01, weight decay 0.01",
                 "  default, no decay: 3 tensors, 220 parameters, lr 0.01, weight decay 0",
                 "  classifier.5: 1 tensor, 168 parameters, lr 0.1, weight decay 0.01",
                 "  classifier.5, no decay: 1 tensor, 2 parameters, lr 0.1, weight decay 0",
                 "  features.0: 1 tensor, 450 parameters, lr 0.005, weight decay 0.01"):
        assert line in result.stderr, result.stderr
    groups = load(data / "runs" / "groups" / "last.pth")["optimizer"]["param_groups"]
    assert [(group["group"], group["lr_mult"], group["weight_decay"]) for group in groups] == [
        ("features.0", 0.5, 0.01), ("features.0, no decay", 0.5, 0.0), ("default", 1.0, 0.01),
        ("default, no decay", 1.0, 0.0), ("classifier.5", 10.0, 0.01), ("classifier.5, no decay", 10.0, 0.0)]
    # the book lr policy scales every group alike; the epoch line reports the base lr
    assert "| lr 1.00e-02 |" in result.stderr


def test_the_yaml_list_form_reads_as_the_flag_form(tmp_path):
    (tmp_path / "fine.yaml").write_text("param_groups:\n  - {params: fc, lr_mult: 10}\n"
                                        "  - params: [layer3, 're:layer4\\..*']\n    wd_mult: 0\n"
                                        "  - {params: conv1, freeze: true}\nfreeze: [layer1, layer2]\n"
                                        "unfreeze_epoch: 2\nmodel: torchvision.resnet18\n")
    cfg = load_config({"config": Text(str(tmp_path / "fine.yaml"))})
    assert cfg.freeze == "layer1,layer2"
    net = MODELS.build("torchvision.resnet18", num_classes=2)
    groups = Grouping(cfg).groups(net, 0.1, 0.05)
    by_label = {group["group"]: group for group in groups}
    assert by_label["fc"]["lr"] == pytest.approx(1.0) and len(by_label["fc"]["params"]) == 2
    assert by_label["layer3,re:layer4\\..*"]["weight_decay"] == 0
    assert by_label["conv1"]["lr"] == pytest.approx(0.1)  # frozen by Freezing, still in the optimizer
    assert sum(len(group["params"]) for group in groups) == len(list(net.parameters()))


def test_layer_decay_scales_each_layer_from_the_head():
    cfg = load_config({"model": "torchvision.resnet18", "layer_decay": 0.5, "param_groups": "fc=2"})
    net = MODELS.build("torchvision.resnet18", num_classes=2)
    groups = Grouping(cfg).groups(net, 1.0, 0.0)
    order = net.layer_groups()  # stem, 8 residual blocks, head
    assert len(order) == 10 and len(groups) == 10
    lrs = {group["group"]: group["lr"] for group in groups}
    assert lrs["fc, layer 9"] == 2.0 and lrs["default, layer 8"] == 0.5 and lrs["default, layer 0"] == 0.5 ** 9
    vit = MODELS.build("torchvision.vit_b_16", num_classes=2)
    vit_groups = Grouping(load_config({"model": "torchvision.vit_b_16", "layer_decay": 0.75})).groups(vit, 1.0, 0.0)
    assert len(vit_groups) == 14  # embeddings, 12 encoder layers, the final norm with the head
    assert sum(len(group["params"]) for group in vit_groups) == len(list(vit.parameters()))


def test_every_model_that_orders_its_layers_covers_every_parameter():
    """A model's layer_groups() must name a layer for each of its parameters (a new model too)."""
    for name in MODELS.names():
        if name.endswith("*"):
            continue
        try:
            model = MODELS.build(name, num_classes=2)
        except TypeError:
            continue  # not a classifier (the gan's nets take other arguments)
        if getattr(model, "layer_groups", lambda: None)():
            groups = Grouping(load_config({"layer_decay": 0.9})).groups(model, 1.0, 0.0)
            assert sum(len(group["params"]) for group in groups) == len(list(model.parameters())), name


# -- freeze and unfreeze --------------------------------------------------------------------
@pytest.fixture(scope="module")
def unfrozen(data):
    """An uninterrupted run: the body frozen in epoch 1, everything trains from epoch 2."""
    result = run_cli("train", *flags(data, "reference", **RESNET, **{"freeze": "conv1,bn1,layer1,layer2,layer3,layer4",
                                                                      "unfreeze-epoch": 2, "max-epoch": 3}),
                     "--keep-checkpoints=3")
    assert result.returncode == 0, result.stderr
    return result


def assert_same_state(a, b):
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            other = b["optimizer"]["state"][index][name]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, (index, name)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for key in ("epoch", "step_in_epoch", "global_step", "lr_policy"):
        assert a[key] == b[key], key


def test_frozen_body_and_its_batchnorm_statistics_stay_fixed_until_the_unfreeze(data, unfrozen):
    assert "epoch 1: 60 tensors frozen" in unfrozen.stderr and "they train from epoch 2" in unfrozen.stderr
    assert "epoch 2: nothing frozen; every parameter trains from here" in unfrozen.stderr
    first = load(data / "runs" / "reference" / "epoch_1.pth")
    second = load(data / "runs" / "reference" / "epoch_2.pth")
    # epoch 1: the frozen BatchNorm layers kept their initial statistics (eval mode), only the head moved
    stats = [key for key in first["model"] if key.endswith("running_mean")]
    assert len(stats) == 20
    for key in stats:
        assert torch.equal(first["model"][key], torch.zeros_like(first["model"][key])), key
        assert torch.equal(first["model"][key.replace("mean", "var")], torch.ones_like(first["model"][key])), key
        assert first["model"][key.replace("running_mean", "num_batches_tracked")] == 0, key
    # the frozen parameters got no optimizer state in epoch 1 (Adam skipped them), and have it once they train
    assert len(first["optimizer"]["state"]) == 2 and len(second["optimizer"]["state"]) == 62
    # epoch 2: the body and its statistics train
    assert not torch.equal(first["model"]["net.layer1.0.conv1.weight"], second["model"]["net.layer1.0.conv1.weight"])
    assert second["model"]["net.bn1.num_batches_tracked"] == 8
    assert not torch.equal(first["model"]["net.fc.weight"], second["model"]["net.fc.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", [12, 9])  # mid epoch 2 (the unfreeze's epoch); the end of epoch 1 (before it)
def test_a_stop_around_the_unfreeze_then_resume_equals_the_uninterrupted_run(data, unfrozen, stop_at):
    env = f"stopped-{stop_at}"
    common = flags(data, env, **RESNET, **{"freeze": "conv1,bn1,layer1,layer2,layer3,layer4", "unfreeze-epoch": 2,
                                           "max-epoch": 3})
    stopped = run_cli("train", *common, env={"RUNNER_FAULT_AT_STEP": f"{stop_at}:SIGINT"})
    assert stopped.returncode == 130, stopped.stderr
    assert load(data / "runs" / env / "last.pth")["global_step"] == stop_at
    resumed = run_cli("train", *with_flags(common, "--resume=true"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_state(load(data / "runs" / env / "last.pth"), load(data / "runs" / "reference" / "last.pth"))


@pytest.mark.slow
def test_gradual_unfreezing_frees_one_pattern_per_epoch_from_the_last(data):
    result = run_cli("train", *flags(data, "gradual", **RESNET, **{"freeze": "conv1,layer1,layer2", "unfreeze": "gradual",
                                                                    "unfreeze-epoch": 2, "max-epoch": 4}))
    assert result.returncode == 0, result.stderr
    logged = [line.split(" INFO ", 1)[1] for line in result.stderr.splitlines() if ": nothing frozen" in line
              or " frozen (" in line]
    assert logged[0].startswith("epoch 1: ") and "(conv1, layer1, layer2; layer2 trains from epoch 2)" in logged[0]
    assert logged[1].startswith("epoch 2: ") and "(conv1, layer1; layer1 trains from epoch 3)" in logged[1]
    assert logged[2].startswith("epoch 3: ") and "(conv1; conv1 trains from epoch 4)" in logged[2]
    assert logged[3] == "epoch 4: nothing frozen; every parameter trains from here"


# -- lr-find ----------------------------------------------------------------------------------
def test_lr_find_suggests_an_lr_inside_its_range_writes_the_plot_and_no_run_dir(data, tmp_path):
    result = run_cli("lr-find", *with_flags(flags(data, "x")[:-1], "--steps=30", "--batch-size=2",
                                            f"--checkpoint-dir={tmp_path / 'runs'}"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("suggested lr: "))
    suggested = float(line.split()[2])
    assert 1e-7 <= suggested <= 10
    png = tmp_path / "lr-find.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    rows = list(csv.DictReader((tmp_path / "lr-find.csv").open()))
    assert 3 <= len(rows) <= 30 and float(rows[0]["lr"]) == pytest.approx(1e-7)
    lrs = [float(row["lr"]) for row in rows]
    assert lrs == sorted(lrs) and min(lrs) <= suggested <= max(lrs)
    assert no_run_dirs(tmp_path)


def test_lr_find_with_env_writes_into_that_run_dir_only(data):
    result = run_cli("lr-find", *flags(data, "finder"), "--steps=12")
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in (data / "runs" / "finder").iterdir() if not path.name.startswith(".")) == [
        "lr-find.csv", "lr-find.png"]


@pytest.mark.parametrize("extra, message", [
    (("--steps=100",), "would pass over the train split's 16 images (4 batches of --batch-size=4) more than 5 times"),
    (("--steps=5",), "--steps must be within 10..100000"),
    (("--start-lr=1", "--end-lr=0.1"), "needs 0 < --start-lr < --end-lr"),
    (("--plot=out.txt",), "give a .png file"),
    (("--param-groups=fc=2", "--steps=12"), "pattern 'fc' matches no parameter"),
])
def test_lr_find_bad_input_is_one_line(data, tmp_path, extra, message):
    result = run_cli("lr-find", *flags(data, "x")[:-1], *extra, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr.strip().splitlines()[-1], result.stderr
    assert not (tmp_path / "lr-find.png").exists()


def test_the_range_test_rule_finds_the_fall_of_a_known_curve():
    """A loss that falls around lr 1e-4, is flat to 1e-2 and then explodes, with noise."""
    import math
    import random

    generator = random.Random(0)
    test = RangeTest(200)
    for step in range(200):
        lr = lr_at(step, 200, 1e-7, 10)
        x = math.log10(lr)
        loss = 2 - 1.5 / (1 + math.exp(-3 * (x + 4))) + max(0.0, x + 1.5) ** 2 * 5 + generator.gauss(0, 0.1)
        if not test.add(lr, loss):
            break
    suggested, how = test.suggestion()
    assert 1e-4 < suggested < 5e-3 and "longest fall" in how
    assert "diverged" in test.stopped and test.lrs[-1] < 2


# -- profiler --------------------------------------------------------------------------------
def test_profile_writes_a_trace_and_a_table_that_adds_up_then_trains_on(data):
    result = run_cli("train", *flags(data, "profiled", **{"profile": 2, "max-epoch": 2, "batch-size": 2}))
    assert result.returncode == 0, result.stderr
    folder = data / "runs" / "profiled" / "profile"
    trace = json.loads((folder / "trace.pt.trace.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert {"runner/data", "runner/step", "runner/backward", "runner/optimizer"} <= names
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["steps"] == 2 and set(summary["shares"]) == {"data", "forward", "backward", "optimizer",
                                                                "rest of the loop"}
    assert sum(summary["shares"].values()) == pytest.approx(1.0, abs=0.01)
    assert summary["operators"] and all(0 <= operator["share"] <= 1 for operator in summary["operators"])
    assert "profile of 2 steps" in result.stderr and "top operators by self time" in result.stderr
    assert (folder / "summary.txt").read_text().startswith("profile of 2 steps")
    assert "USDT" not in result.stderr and "epoch 2/2" in result.stderr  # the run trained on, unprofiled


# -- sweeps ------------------------------------------------------------------------------------
def test_a_sweep_may_search_a_groups_lr_mult(tmp_path):
    from utils.sweep.space import read_space

    space = tmp_path / "space.yaml"
    space.write_text("params:\n  param_groups: ['classifier=1', 'classifier=10', 'classifier=100']\n")
    checked = read_space(space, load_config({"model": "LeNet"}), set(), 3)
    assert checked.params["param_groups"] == ("choices", ("classifier=1", "classifier=10", "classifier=100"))
    space.write_text("params:\n  param_groups: ['classifier=1', 'classifier=0']\n")
    with pytest.raises(UsageError, match="lr_mult must be > 0"):
        read_space(space, load_config({"model": "LeNet"}), set(), 3)


def test_a_bare_no_flag_turns_a_boolean_option_off(data):
    result = run_cli("train", *[flag for flag in flags(data, "bare") if not flag.startswith("--progress")],
                     "--no-progress", "--no-decay-norm-bias")
    assert result.returncode == 0, result.stderr
    config = (data / "runs" / "bare" / "config.yaml").read_text()
    assert "progress: false" in config and "decay_norm_bias: false" in config


def test_help_lists_the_fine_tuning_options_and_lr_find():
    result = run_cli("help")
    for name in ("--param-groups", "--layer-decay", "--freeze", "--unfreeze-epoch", "--profile", "lr-find"):
        assert name in result.stdout, name


def _two_ranks(rank, port, answers):
    """One of two gloo processes: a model frozen in epoch 1 and wrapped in DDP, then unfrozen
    and rewrapped as the engine does at epoch 2; each rank backpropagates its own data."""
    import torch.distributed as dist

    from utils.engine.freezing import Freezing
    from utils.engine.wrapping import wrap_modules

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        objects = {"model": torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))}
        cfg = load_config({"freeze": "0", "unfreeze_epoch": 2, "max_epoch": 2})
        freezing = Freezing(cfg, Grouping(cfg))
        freezing.check(objects)
        seen = []
        for epoch in (0, 1):
            if freezing.apply(objects, epoch):
                wrap_modules(objects, cfg, torch.device("cpu"), True)
            data = torch.full((3, 4), float(rank + 1))  # different on each rank
            objects["model"](data).sum().backward()
            body = objects["model"].module[0].weight.grad
            seen.append(None if body is None else body.tolist())  # plain data: a tensor would travel as shared memory
            objects["model"].zero_grad(set_to_none=True)
        answers.put((rank, seen))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_an_unfreeze_under_ddp_rebuilds_the_wrapper_so_the_body_is_all_reduced():
    """Without the rebuild, DDP (built while the body was frozen) would leave each rank's body
    gradient its own, and the ranks' weights would drift apart silently."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    answers = context.Queue()
    workers = [context.Process(target=_two_ranks, args=(rank, port, answers)) for rank in (0, 1)]
    for worker in workers:
        worker.start()
    found = dict(answers.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    assert found[0][0] is None and found[1][0] is None  # epoch 1: frozen, no gradient
    first, second = torch.tensor(found[0][1]), torch.tensor(found[1][1])
    assert torch.equal(first, second)  # epoch 2: one gradient on both ranks
    # and it is the mean of the two ranks' own: inputs 1 and 2 give own gradients g and 2g, the mean 1.5 g
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model(torch.full((3, 4), 1.0)).sum().backward()
    assert torch.allclose(first, 1.5 * model[0].weight.grad)
