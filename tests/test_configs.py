"""configs: precedence, typing of text values, and every error path with its message."""
import dataclasses

import pytest

from configs import dump_yaml, load_config
from configs.values import Text
from configs.schema import FIELDS, Config
from utils.core.errors import UsageError


def flags(**values):
    """What the CLI hands over: every value as text."""
    return {key: Text(value) for key, value in values.items()}


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_yaml_flags_precedence(tmp_path):
    path = write(tmp_path, "lr: 0.01\nbatch-size: 8\nmodel: ResNet34\n")
    cfg = load_config(flags(config=str(path), lr="0.5"))
    assert cfg.lr == 0.5  # flag beats file
    assert cfg.batch_size == 8  # file beats default
    assert cfg.model == "ResNet34"
    assert cfg.max_epoch == FIELDS["max_epoch"].default  # untouched default
    assert cfg.config == str(path)


def test_config_is_frozen():
    cfg = load_config({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0


@pytest.mark.parametrize("text", ["false", "False", "0", "no", "off"])
def test_false_words(text):
    assert load_config(flags(progress=text)).progress is False


@pytest.mark.parametrize("text", ["true", "True", "1", "yes"])
def test_true_words(text):
    assert load_config(flags(amp=text)).amp is True


def test_fire_quirks_are_normalised():
    cfg = load_config(flags(lr="1", env="0701", load_model_path="None", batch_size="16"))
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.env == "0701"
    assert cfg.load_model_path is None
    assert cfg.batch_size == 16


def test_use_gpu_alias_sets_device():
    assert load_config(flags(use_gpu="false")).device == "cpu"
    assert load_config(flags(use_gpu="True")).device == "cuda"
    with pytest.raises(UsageError, match=r"--use-gpu=false contradicts --device=cuda"):
        load_config(flags(use_gpu="false", device="cuda"))


def test_hyphen_and_underscore_keys_alike():
    assert load_config({"batch-size": Text("7")}).batch_size == 7
    assert load_config({"batch_size": Text("7")}).batch_size == 7


def test_no_prefix_turns_a_boolean_off():
    assert load_config(flags(no_progress="True")).progress is False


def test_tilde_expanded_in_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_config(flags(train_data_root="~/kaggle/train")).train_data_root == f"{tmp_path}/kaggle/train"


def test_bare_resume_means_last():
    assert load_config(flags(resume="True")).resume == "last"
    assert load_config(flags(resume="ckpt/last.pth")).resume == "ckpt/last.pth"


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("batch_size", "32.0", r"option --batch-size expects an integer, got '32.0'"),
        ("batch_size", "abc", r"option --batch-size expects an integer, got 'abc'"),
        ("lr", "fast", r"option --lr expects a number, got 'fast'"),
        ("lr", "nan", r"option --lr expects a finite number, got 'nan'"),
        ("progress", "maybe", r"option --progress expects a boolean \(true/false, yes/no, 1/0\), got 'maybe'"),
        ("optimizer", "adamm", r"option --optimizer must be one of adam, adamw, sgd; got 'adamm'; did you mean adam"),
        ("batch_size", "0", r"option --batch-size must be >= 1; got 0"),
        ("val_ratio", "1", r"option --val-ratio must be below 1"),
        ("device", "gpu", r"option --device must be auto, cpu, cuda, cuda:N or mps; got 'gpu'"),
        ("env", "a/b/c", r"option --env names a folder"),
        ("model", "ResNet43", r"option --model: unknown model 'ResNet43' in the models registry; closest: ResNet34.*\. Available: .*AlexNet"),
    ],
)
def test_bad_values_name_key_type_and_value(key, value, message):
    with pytest.raises(UsageError, match=message):
        load_config(flags(**{key: value}))


def test_unknown_flag_suggests_close_keys():
    with pytest.raises(UsageError, match=r"unknown option --lrr; did you mean --lr"):
        load_config(flags(lrr="0.1"))


def test_python_values_are_typed_too():
    assert load_config({"lr": 1, "amp": True}).lr == 1.0
    with pytest.raises(UsageError, match=r"--batch-size expects an integer, got '32.0'"):
        load_config({"batch_size": 32.0})
    with pytest.raises(UsageError, match=r"--amp expects a boolean"):
        load_config({"amp": 1})


def test_yaml_unknown_key_names_file(tmp_path):
    path = write(tmp_path, "lr: 0.1\nbatchsize: 3\n")
    with pytest.raises(UsageError, match=rf"{path}: unknown option --batchsize; did you mean --batch-size"):
        load_config(flags(config=str(path)))


def test_yaml_wrong_type_names_file(tmp_path):
    path = write(tmp_path, "max_epoch: ten\n")
    with pytest.raises(UsageError, match=rf"{path}: option --max-epoch expects an integer, got 'ten'"):
        load_config(flags(config=str(path)))


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "lr: 0.1\nmodel: [ResNet34\nseed: 1\n")
    with pytest.raises(UsageError, match=rf"{path}:\d+:\d+: invalid YAML"):
        load_config(flags(config=str(path)))


def test_missing_config_file(tmp_path):
    with pytest.raises(UsageError, match=r"config file '.*nope.yaml' not found"):
        load_config(flags(config=str(tmp_path / "nope.yaml")))


def test_yaml_keeps_strings_the_schema_says_are_strings(tmp_path):
    # YAML 1.1 would read 0701 as the octal integer 449 and `no` as False.
    path = write(tmp_path, "env: 0701\nresult_file: no\nload_model_path: null\nprogress: no\n")
    cfg = load_config(flags(config=str(path)))
    assert (cfg.env, cfg.result_file, cfg.load_model_path, cfg.progress) == ("0701", "no", None, False)


def test_yaml_nested_value_is_an_error(tmp_path):
    path = write(tmp_path, "lr:\n  a: 1\n")
    with pytest.raises(UsageError, match=r"option lr must be a single value, not a dict"):
        load_config(flags(config=str(path)))


def test_saved_config_reproduces_the_run(tmp_path):
    original = load_config(flags(lr="0.0125", env="0701", model="ResNet34", load_model_path="x.pth", amp="true", clip="0.01"))
    path = write(tmp_path, dump_yaml(original), "config.yaml")
    again = load_config(flags(config=str(path)))
    assert dataclasses.replace(again, config=None) == original


def test_presets_load(tmp_path):
    from pathlib import Path

    presets = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert presets, "configs/*.yaml presets are missing"
    for preset in presets:
        load_config(flags(config=str(preset)))


def test_every_field_has_a_doc_and_option_refuses_unknown_groups_and_roles():
    from configs.schema import option

    for field in dataclasses.fields(Config):
        assert field.metadata["doc"].strip(), field.name
    with pytest.raises(ValueError, match=r"option group 'nope' must be one of"):
        option(1, "nope", "a doc")
    with pytest.raises(ValueError, match=r"role 'sometimes' one of"):
        option(1, "run", "a doc", role="sometimes")
    assert option(1, "run", "a doc").metadata["role"] == "run"  # a new option is fixed on --resume unless declared


@pytest.mark.registry
def test_roles_answer_which_options_define_a_run():
    from configs.schema import FIELDS, experiment_fields, with_role
    from utils.core.registry import EXPERIMENTS

    def declared(role):  # the options of that role in the schema and in every experiment, however many
        return {name for fields in (FIELDS, *map(experiment_fields, EXPERIMENTS.names()))
                for name, f in fields.items() if f.metadata["role"] == role}

    assert {"model", "num_classes", "image_size", "experiment", "netd", "nz", "ngf", "ndf", "embedding_dim", "hidden_dim",
            "num_layers"} <= set(with_role("model")) == declared("model")
    assert {"model", "image_size", "experiment", "netd", "nz", "ngf", "ndf"} == set(with_role("model", experiment="gan"))
    assert {"dataset", "train_data_root", "val_ratio", "seed", "skip_bad_images"} <= set(with_role("split")) == declared("split")
    assert {"config", "resume", "accept_altered_checkpoint"} <= set(with_role("invocation")) == declared("invocation")
    may_change = set(with_role("execution"))
    assert {"max_epoch", "num_workers", "print_freq", "debug_file", "env", "load_model_path", "gen_num"} <= may_change
    assert not may_change & {"lr", "batch_size", "optimizer", "lr1", "gan_loss", "amp"}


def test_an_experiments_defaults_sit_between_the_schema_and_the_file(tmp_path):
    cfg = load_config(flags(experiment="gan"))
    assert (cfg.dataset, cfg.model, cfg.image_size, cfg.lr_policy) == ("faces", "NetG", 32, "constant")
    path = write(tmp_path, "image_size: 64\n")
    assert load_config(flags(experiment="gan", config=str(path))).image_size == 64
    assert load_config(flags(experiment="gan", config=str(path), image_size="48")).image_size == 48
    from configs import changed_options

    assert changed_options(cfg) == {"experiment": "gan"}  # its own defaults are not "changes"


def test_an_experiments_own_options_join_only_its_runs_config(tmp_path):
    import pickle

    gan = load_config(flags(experiment="gan", nz="12", gen_num="3"))
    assert (gan.nz, gan.gen_num, gan.netd) == (12, 3, "NetD")
    assert pickle.loads(pickle.dumps(gan)) == gan  # torchrun broadcasts the config
    classify = load_config({})
    assert not hasattr(classify, "nz") and classify.clip == 0.005 and classify.monitor == "val_logloss"
    assert "\nnz:" not in dump_yaml(classify) and "\nclip:" in dump_yaml(classify)
    assert "\nnz: 12\n" in dump_yaml(gan) and "\nclip:" not in dump_yaml(gan)
    path = write(tmp_path, "experiment: gan\ngen-std: 0.5\n")
    assert load_config(flags(config=str(path))).gen_std == 0.5
    with pytest.raises(UsageError, match=r"c.yaml: option --gen-std belongs to experiment gan, not classify"):
        load_config(flags(config=str(path), experiment="classify"))
    with pytest.raises(UsageError, match=r"option --gen-num expects an integer, got 'many'"):
        load_config(flags(experiment="gan", gen_num="many"))
    with pytest.raises(UsageError, match=r"option --monitor must be a metric of experiment classify: .*; "
                                         r"got 'val_acuracy'; did you mean val_accuracy\?"):
        load_config(flags(monitor="val_acuracy"))


def test_the_start_of_run_log_lists_every_option_typed_even_at_its_default(tmp_path):
    from configs import describe
    from configs.loader import given_names

    path = write(tmp_path, "num_workers: 2\n")  # the default, set in the file
    flags = {"batch-size": Text("32"), "lr": Text("2"), "max_epoch": Text("3"), "config": str(path)}
    cfg = load_config(flags)
    assert given_names(flags, cfg) == {"batch_size", "lr", "max_epoch", "num_workers"}
    line = describe(cfg, cfg, given_names(flags, cfg))[0]
    assert line == "config: you set --batch-size=32 --num-workers=2 --lr=2 --max-epoch=3", line  # schema order; 2, not 2.0
    assert describe(cfg)[0] == "config: you set --lr=2 --max-epoch=3"  # without the names: what differs only


def test_the_demo_data_is_found_from_any_working_directory(tmp_path, monkeypatch):
    from conftest import ROOT

    assert load_config({}).train_data_root == "data/sample/train"  # in the repository: as the defaults say
    monkeypatch.chdir(tmp_path)
    cfg = load_config({})
    assert cfg.train_data_root == str(ROOT / "data" / "sample" / "train")
    assert load_config({"experiment": "gan"}).train_data_root == str(ROOT / "data" / "faces_sample")
    assert cfg.checkpoint_dir == "checkpoints"  # runs go where you are
    assert load_config({"train_data_root": "data/mine"}).train_data_root == "data/mine"  # what you give is yours
    from configs import changed_options

    assert changed_options(cfg) == {}  # the anchored demo path is still the default


@pytest.mark.registry
def test_a_command_on_an_existing_run_takes_the_runs_experiment(tmp_path):
    """train --resume (or val, generate) with --env needs no --experiment, even with the run's
    own options; a given --experiment still decides, and a new --env is the default's."""
    (tmp_path / "runs" / "poet").mkdir(parents=True)
    (tmp_path / "runs" / "poet" / "config.yaml").write_text("experiment: poetry\nhidden_dim: 64\n")
    given = {"env": "poet", "checkpoint-dir": str(tmp_path / "runs"), "resume": "", "hidden-dim": Text("64")}
    cfg = load_config(given)
    assert (cfg.experiment, cfg.hidden_dim, cfg.monitor) == ("poetry", 64, "val_perplexity")
    assert load_config({"env": "other", "checkpoint-dir": str(tmp_path / "runs")}).experiment == "classify"
    # (another experiment may declare --hidden-dim too: the message names each that has it)
    with pytest.raises(UsageError, match=r"option --hidden-dim belongs to experiment (\w+ and )*poetry( and \w+)*, not gan"):
        load_config({**given, "experiment": "gan"})
