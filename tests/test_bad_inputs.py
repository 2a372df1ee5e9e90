"""The catalogue of bad inputs: each one is answered by one line that names the fix, the
documented exit code (2 usage or config, 1 runtime), no traceback and no warning noise, and
leaves every file that was already there byte-identical, with nothing new (no run folder of a
run that failed to start, no temp file). The commands run as forks of one process that has
imported torch (tests/cli_server.py), which behave as `python main.py` does and take a second
instead of five; the cases that need a resource limit run as plain subprocesses.

All cases run in one workspace (cwd), which holds tiny data, a finished run `runs/done`, a run
that holds only emergency.pth, a result.csv, broken files of every kind and a read-only copy of
all that. A case may name files it is allowed to change (status.json and TensorBoard events of a
resume that fails on a full disk); everything else is compared by content.
"""
import hashlib
import os
import pickle
import re
import resource
import shutil
import signal
import subprocess

import numpy as np
import pytest

from conftest import make_cifar10, make_dogcat, run_cli

TINY = ("--train-data-root=data/train", "--test-data-root=data/test", "--checkpoint-dir=runs", "--model=LeNet",
        "--image-size=16", "--batch-size=4", "--num-workers=0", "--max-epoch=1", "--print-freq=2", "--progress=false",
        "--debug-file=", "--lr=0.01")
LOG_LINE = re.compile(r"\d\d:\d\d:\d\d (INFO|WARNING) ")


def flags(*extra, **options):
    """TINY with some options replaced (`**{"num-workers": 2}`, or an `extra` "--name=value") and
    `extra` appended (an option given twice is refused)."""
    given = {f.split("=")[0][2:] for f in extra if f.startswith("--")} | set(options)
    chosen = [f for f in TINY if f.split("=")[0][2:] not in given]
    return [*chosen, *(f"--{key}={value}" for key, value in options.items()), *extra]


def make_read_only(path):
    """Make `path` read-only for this process (a read-only bind mount as root, chmod
    otherwise); returns the undo, or None when this machine cannot do either."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return lambda: path.chmod(0o755)
    mounted = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True).returncode == 0
    if mounted and subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True).returncode == 0:
        return lambda: subprocess.run(["umount", str(path)], check=True)
    if mounted:
        subprocess.run(["umount", str(path)])
    return None


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    make_dogcat(root / "data")
    result = run_cli("train", *flags("--env=done"), cwd=root)
    assert result.returncode == 0, result.stderr
    done = root / "runs" / "done"
    crashed = root / "runs" / "crashed"
    crashed.mkdir()
    shutil.copy(done / "last.pth", crashed / "emergency.pth")
    shutil.copy(done / "config.yaml", crashed / "config.yaml")
    corrupt = root / "runs" / "corrupt"
    corrupt.mkdir()
    shutil.copy(done / "config.yaml", corrupt / "config.yaml")
    (root / "result.csv").write_text("id,label\n1,0.500000\n")
    (root / "afile").write_text("a file, not a folder\n")
    rng = np.random.default_rng(7)
    (root / "random.pth").write_bytes(b"\x13" + rng.bytes(4095))  # not 0x80 (pickle) or PK (zip)
    shutil.copy(root / "random.pth", corrupt / "last.pth")
    (root / "empty.pth").write_bytes(b"")
    (root / "pickle.pth").write_bytes(pickle.dumps({"model": OSError("not plain data")}))
    (root / "truncated.pth").write_bytes((done / "last.pth").read_bytes()[:5000])
    (root / "latin1.yaml").write_bytes("# r\xe9sum\xe9\nlr: 0.1\n".encode("latin-1"))
    (root / "broken.yaml").write_text("lr: [0.1\n")
    (root / "typo.yaml").write_text("lr: 0.1\nbatch_sise: 8\n")
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n"
                                                              for p, n in zip("abcdefgh", "bcdefghi"))
    (root / "laughs.yaml").write_text(laughs)
    (root / "twice.yaml").write_text("lr: 0.1\nbatch_size: 8\nlr: 0.2\n")
    (root / "itself.yaml").write_text("lr: &a [1, *a]\n")
    (root / "deep.yaml").write_text("lr: " + "[" * 3000 + "]" * 3000 + "\n")
    (root / "huge.yaml").write_text("# " + "x" * (2 << 20) + "\n")
    (root / "poems.txt").write_text("\n".join(["床前明月光", "疑是地上霜", "举头望明月", "低头思故乡"] * 4) + "\n")
    (root / "empty_folder").mkdir()
    make_cifar10(root / "cifar_broken")
    (root / "cifar_broken" / "cifar-10-batches-py" / "data_batch_2").write_text("not a pickle")
    (root / "out").mkdir()
    for name, content in {"text": b"this is not a jpeg", "zero": b"",
                          "truncated": (root / "data" / "train" / "cat.3.jpg").read_bytes()[:300]}.items():
        bad = root / f"data_{name}"
        shutil.copytree(root / "data", bad)
        (bad / "train" / "dog.5.jpg").write_bytes(content)
    (root / "ro").mkdir()
    shutil.copytree(root / "runs", root / "ro" / "runs")
    shutil.copy(root / "result.csv", root / "ro" / "result.csv")
    undo = make_read_only(root / "ro")
    yield root
    if undo:
        undo()


def snapshot(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def limit_file_size(size):
    """preexec_fn: writes past `size` bytes fail with EFBIG ('file too large'), the same OSError
    path as a full disk (ENOSPC), without needing a small filesystem."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return apply


# (id, command line, exit code, the one line (regex), files the case may change)
CASES = [
    # -- the config: exit 2 before torch is imported
    ("unknown option", ["train", "--lrr=0.1"], 2, r"unknown option --lrr; did you mean --lr\?"),
    ("another experiment's option", ["train", "--nz=10"], 2,
     r"option --nz belongs to experiment gan, not classify; add --experiment=gan or drop it"),
    ("monitor of another experiment", ["train", "--monitor=val_perplexity"], 2,
     r"option --monitor must be a metric of experiment classify: val_logloss, val_loss, val_accuracy; got 'val_perplexity'"),
    ("wrong type", ["train", "--batch-size=32.0"], 2, r"option --batch-size expects an integer, got '32.0'"),
    ("below minimum", ["train", "--batch-size=0"], 2, r"option --batch-size must be >= 1; got 0"),
    ("not a choice", ["train", "--optimizer=adamm"], 2, r"option --optimizer must be one of adam, adamw, sgd; got 'adamm'; did you mean adam"),
    ("unknown model", ["train", "--model=resnet34"], 2, r"option --model: unknown model 'resnet34'.*ResNet34"),
    ("positional", ["train", "ResNet34"], 2, r"unexpected argument 'ResNet34': options are written --name=value"),
    ("unknown command", ["trian"], 2, r"unknown command 'trian'; did you mean train\?"),
    ("single dash", ["train", "-lr=0.1"], 2, r"option -lr=0.1 has one dash; options take two: --lr=0.1"),
    ("flag twice", ["train", "--batch-size=16", "--batch_size=4"], 2,
     r"option --batch-size is given twice \(16, then 4\); give it once"),
    ("flag and its no- form", ["train", "--progress", "--no-progress"], 2,
     r"option --progress is given twice \(true, then false\); give it once"),
    ("config missing", ["train", "--config=nope.yaml"], 2, r"config file 'nope.yaml' not found"),
    ("config folder", ["train", "--config=out"], 2, r"config file 'out' is a folder; give a .yaml file"),
    ("config not utf-8", ["train", "--config=latin1.yaml"], 2, r"latin1.yaml:1: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"),
    ("config syntax", ["train", "--config=broken.yaml"], 2, r"broken.yaml:2:1: invalid YAML"),
    ("config typo", ["train", "--config=typo.yaml"], 2, r"typo.yaml: unknown option --batch-sise; did you mean --batch-size\?"),
    ("val ratio 1", ["train", "--val-ratio=1"], 2, r"option --val-ratio must be below 1"),
    ("clip too big", ["test", "--clip=0.7"], 2, r"option --clip must be below 0.5"),
    ("bad device", ["train", "--device=gpu"], 2, r"option --device must be auto, cpu, cuda, cuda:N or mps; got 'gpu'"),
    ("env escapes", ["train", "--env=../x"], 2, r"option --env names a folder under --checkpoint-dir"),
    ("gpu contradiction", ["train", "--use-gpu=true", "--device=cpu"], 2, r"--use-gpu=true contradicts --device=cpu"),
    ("resume needs env", ["train", "--resume"], 2, r"--resume needs --env=<run name>"),
    ("command of another experiment", ["generate"], 2, r"experiment classify has no command 'generate'"),
    ("gan has no val", ["val", "--experiment=gan"], 2, r"experiment gan has no command 'val'"),
    # -- hostile YAML: one line in well under a second, however the file is built
    ("config billion laughs", ["train", "--config=laughs.yaml"], 2,
     r"laughs.yaml:\d+:\d+: invalid YAML: expands to more than 100,000 values \(aliases of aliases\?\)"),
    ("config duplicate key", ["train", "--config=twice.yaml"], 2,
     r"twice.yaml:3:1: invalid YAML: key 'lr' appears twice \(first on line 1\); keep one"),
    ("config alias of itself", ["train", "--config=itself.yaml"], 2,
     r"itself.yaml:1:5: invalid YAML: an alias refers to the collection that holds it"),
    ("config nested deep", ["train", "--config=deep.yaml"], 2, r"deep.yaml: invalid YAML: nested too deeply"),
    ("config of megabytes", ["train", "--config=huge.yaml"], 2,
     r"huge.yaml: invalid YAML: the file has 2.1 MB; a runner YAML file is at most 1024 kB"),
    ("100 kB of value", ["train", "--lr=" + "9" * 100_000], 2, r"option --lr expects a finite number, got '9{57}\.\.\.'"),
    # -- absurd numbers: finite and within what the code holds (exit 2, before torch)
    ("lr past float32", ["train", "--lr=1e39"], 2,
     r"option --lr must be at most 1e\+15 \(the engine computes in float32, and options multiply one another there\); "
     r"got 1e\+39"),
    ("weight decay 1e300", ["train", "--weight-decay=1e300"], 2, r"option --weight-decay must be at most 1e\+15"),
    ("batch size 1e20", ["train", "--batch-size=1e20"], 2, r"option --batch-size expects an integer, got '1e20'"),
    ("batch size past int64", ["train", "--batch-size=" + "1" + "0" * 20], 2,
     r"option --batch-size must be at most 9223372036854775807 \(torch's 64-bit integers\); got 1" + "0" * 20),
    ("seq len 10**12", ["train", "--experiment=poetry", "--seq-len=10**12"], 2,
     r"option --seq-len expects an integer, got '10\*\*12'"),
    ("seq len a trillion", ["train", "--experiment=poetry", "--seq-len=1000000000000"], 2,
     r"option --seq-len must be <= 100000; got 1000000000000"),
    ("mixup alpha 1e-300", ["train", "--mixup=1e-300"], 2,
     r"option --mixup must be 0 \(off\) or at least 0.0001 \(float32's Beta sampling degenerates below it\); got 1e-300"),
    ("cutmix alpha 1e-300", ["train", "--cutmix=1e-300"], 2, r"option --cutmix must be 0 \(off\) or at least 0.0001"),
    ("temperature nan", ["generate", "--experiment=poetry", "--temperature=nan"], 2,
     r"option --temperature expects a finite number, got 'nan'"),
    ("stale-after inf", ["sweep", "--study=s", "--trials=1", "--search-space=x.yaml", "--stale-after=inf"], 2,
     r"option --stale-after expects a finite number, got 'inf'"),
    ("stale-after a century", ["sweep", "--study=s", "--trials=1", "--search-space=x.yaml", "--stale-after=3e9"], 2,
     r"option --stale-after must be at most 2.592e\+06 seconds \(30 days\); got 3e\+09"),
    ("threads past the machine", ["train", "--threads=100000"], 2, r"option --threads must be <= 1024; got 100000"),
    ("workers past the machine", ["train", "--num-workers=100000"], 2, r"option --num-workers must be <= 1024"),
    ("image size past the limit", ["train", "--image-size=100000"], 2, r"option --image-size must be <= 8192"),
    ("beta1 of 1", ["train", "--experiment=gan", "--beta1=1"], 2,
     r"option --beta1 must be below 1 \(Adam's moving-average factor\); got 1.0"),
    ("layers past the limit", ["train", "--experiment=poetry", "--num-layers=1000000000000"], 2,
     r"option --num-layers must be <= 1000"),
    ("model larger than memory", ["train", "--experiment=poetry", "--train-data-root=poems.txt", "--checkpoint-dir=runs",
                                  "--env=new", "--num-workers=0", "--hidden-dim=1000000000", "--debug-file="], 1,
     r"out of memory: .*; lower --batch-size, --image-size or the model's sizes \(`\S*python\S* \S*main.py help` lists them\)"),
    # -- the run: exit 2 for a contradiction, before a run folder exists
    ("resume changes lr", ["train", "--checkpoint-dir=runs", "--env=done", "--resume", "--lr=0.5"], 2,
     r"--lr=0.5 would change the resumed run \(it has 0.01\)"),
    ("resume best.pth", ["train", "--resume=runs/done/best.pth"], 2,
     r"runs/done/best.pth holds weights only \(no run state\) \(resume runs/done/last.pth\)"),
    ("run exists", ["train", *flags("--env=done")], 2, r"runs/done already holds a run; it has finished \(\d+ of --max-epoch=\d+ "
                                                    r"epochs done\); train it further with `.*main.py train --env=done "
                                                    r"--checkpoint-dir=runs --resume --max-epoch=\d+`, or start a new one "
                                                    r"with another --env"),
    ("num classes unlike the data", ["train", *flags("--env=new", "--num-classes=1")], 2,
     r"--num-classes=1 but the data has 2 classes \(cat, dog\); drop --num-classes \(it comes from the data\) or use "
     r"--num-classes=2"),
    ("model too big for the images", ["train", *flags("--env=new", "--model=AlexNet")], 2,
     r"--model=AlexNet cannot take 3 x 16 x 16 images \(.*\); use a larger --image-size or another --model"),
    ("not a classifier", ["train", *flags("--env=new", "--model=NetG")], 2, r"--model=NetG is not a classifier"),
    ("unknown torchvision model", ["train", *flags("--env=new", "--model=torchvision.resnet999")], 2,
     r"torchvision has no classification model 'resnet999'"),
    ("gan image size", ["train", "--experiment=gan", "--image-size=33", "--env=new", "--checkpoint-dir=runs"], 2,
     r"--image-size=33"),
    # -- data: exit 1, nothing written
    ("data missing", ["train", *flags("--env=new", "--train-data-root=nowhere")], 1,
     r"data folder '.*nowhere' does not exist; it should hold cat.<n>.jpg"),
    ("data is a file", ["train", *flags("--env=new", "--train-data-root=afile")], 1,
     r"data folder '.*afile' is a file, not a folder"),
    ("data empty", ["train", *flags("--env=new", "--train-data-root=empty_folder")], 1, r"no images in '.*empty_folder'"),
    ("cifar10 missing", ["train", *flags("--env=new", "--dataset=cifar10", "--train-data-root=data")], 1,
     r"CIFAR-10 not found: expected data/cifar-10-batches-py/ with data_batch_1 ... data_batch_5 and batches.meta "
     r"\(cifar-10-python.tar.gz unpacked\) \(missing data_batch_1\); add --download to fetch it \(cifar-10-python.tar.gz, "
     r"163 MB, from https://www.cs.toronto.edu/~kriz/cifar.html\) or copy the files there"),
    ("cifar10 batch not a pickle", ["train", *flags("--env=new", "--dataset=cifar10", "--train-data-root=cifar_broken")], 1,
     r"CIFAR-10: .*cifar_broken/cifar-10-batches-py/data_batch_2 is not a python pickle of a CIFAR batch \(.*\)"),
    ("mnist in the cifar folder", ["train", *flags("--env=new", "--dataset=mnist", "--train-data-root=cifar_broken")], 1,
     r"MNIST not found: expected cifar_broken/MNIST/raw/ with train-images-idx3-ubyte, train-labels-idx1-ubyte "
     r"\(missing train-images-idx3-ubyte\); add --download"),
    ("imagefolder without class folders", ["train", *flags("--env=new", "--dataset=imagefolder", "--train-data-root=data/test")], 1,
     r"no class folders in 'data/test': --dataset=imagefolder expects <root>/<class>/<image> \(e.g. <root>/daisy/1.jpg\); "
     r"it holds 7 images directly: move them into one folder per class"),
    ("no train images", ["train", *flags("--env=new", "--val-ratio=0.99")], 1,
     r"--val-ratio=0.99 leaves no training images of the 24 in .*; lower --val-ratio"),
    ("no val images", ["train", *flags("--env=new", "--val-ratio=0.01")], 1,
     r"--val-ratio=0.01 leaves no validation images of the 24 in .*; raise --val-ratio"),
    ("text as jpg", ["train", *flags("--env=new", "--train-data-root=data_text/train")], 1,
     r"cannot read image '.*data_text/train/dog.5.jpg': not an image format Pillow reads; fix or delete it, or add "
     r"--skip-bad-images to leave unreadable files out"),
    ("text as jpg, 2 workers", ["train", *flags("--env=new", "--train-data-root=data_text/train", **{"num-workers": 2})], 1,
     r"cannot read image '.*data_text/train/dog.5.jpg': .*add --skip-bad-images"),
    ("zero-byte jpg, 2 workers", ["train", *flags("--env=new", "--train-data-root=data_zero/train", **{"num-workers": 2})], 1,
     r"cannot read image '.*data_zero/train/dog.5.jpg': empty file \(0 bytes\); fix or delete it"),
    ("truncated jpg, 2 workers", ["train", *flags("--env=new", "--train-data-root=data_truncated/train", **{"num-workers": 2})], 1,
     r"cannot read image '.*data_truncated/train/dog.5.jpg': (image file is truncated|Truncated File Read)"),
    # -- models and weights
    ("pretrained missing", ["train", *flags("--env=new", "--pretrained=missing.pth")], 1,
     r"--pretrained=missing.pth: no such file; give a local weights file \(.pth\), or hub with a --model=torchvision"),
    ("pretrained hub for our model", ["train", *flags("--env=new", "--pretrained=hub")], 1,
     r"--pretrained=hub downloads torchvision weights: use --model=torchvision.<name>"),
    ("weights of another model", ["train", *flags("--env=new", "--model=SqueezeNet", "--load-model-path=runs/done/best.pth",
                                                  **{"image-size": 64})], 1,
     r"runs/done/best.pth does not fit model SqueezeNet: .*Was it trained with another --model"),
    ("random bytes", ["test", "--load-model-path=random.pth"], 1, r"'random.pth' is not a checkpoint \(it starts with bytes"),
    ("empty checkpoint", ["test", "--load-model-path=empty.pth"], 1, r"'empty.pth' is not a checkpoint \(the file is empty\)"),
    ("pickled object", ["test", "--load-model-path=pickle.pth"], 1,
     r"checkpoint 'pickle.pth' holds Python objects that need unsafe unpickling; refused, since that could run any "
     r"code \(torch's safe loader: Unsupported .*\). Re-save only tensors/plain data"),
    ("truncated checkpoint", ["test", "--load-model-path=truncated.pth"], 1, r"checkpoint 'truncated.pth' is unreadable"),
    ("checkpoint is a folder", ["test", "--load-model-path=runs/done"], 1, r"checkpoint 'runs/done' is a folder; give a .pth file"),
    ("unknown run", ["val", "--checkpoint-dir=runs", "--env=dnoe"], 1, r"no checkpoint in runs/dnoe .*; did you mean --env=done\?"),
    ("resume unknown run", ["train", "--checkpoint-dir=runs", "--env=dnoe", "--resume"], 1,
     r"nothing to resume: runs/dnoe/last.pth does not exist; did you mean --env=done\?"),
    ("only emergency.pth", ["test", "--checkpoint-dir=runs", "--env=crashed"], 1,
     r"no checkpoint in runs/crashed but emergency.pth, the state saved when the run crashed; use it with "
     r"--load-model-path=runs/crashed/emergency.pth"),
    # -- outputs: exit 1, previous files kept
    ("result file is a folder", ["test", "--checkpoint-dir=runs", "--env=done", "--result-file=out"], 1,
     r"--result-file=out is a folder; give a file name, e.g. --result-file=out/result.csv"),
    ("result under a file", ["test", "--checkpoint-dir=runs", "--env=done", "--result-file=afile/result.csv"], 1,
     r"--result-file: cannot create folder 'afile': 'afile' is a file, not a folder"),
    ("checkpoint dir is a file", ["train", *flags("--env=new", "--checkpoint-dir=afile")], 1,
     r"--checkpoint-dir: cannot create folder 'afile/new': 'afile' is a file, not a folder"),
    ("runs of a file", ["runs", "--checkpoint-dir=afile"], 1, r"--checkpoint-dir=afile is a file, not a folder of runs"),
    ("runs with a training option", ["runs", "--lr=1"], 2, r"runs takes --checkpoint-dir=<folder> and --diff <run> <run>; got --lr"),
    ("resume a corrupt last.pth", ["train", "--checkpoint-dir=runs", "--env=corrupt", "--resume"], 1,
     r"'runs/corrupt/last.pth' is not a checkpoint \(it starts with bytes 13"),
    ("not a generator", ["train", "--experiment=gan", "--model=LeNet", "--env=new", "--checkpoint-dir=runs"], 2,
     r"--model=LeNet is not a generator \(it takes no nz, ngf"),
    ("gen-num above search", ["generate", "--experiment=gan", "--gen-num=600", "--load-model-path=x.pth"], 2,
     r"--gen-num=600 is more than --gen-search-num=512; draw at least as many as you keep"),
    ("generate a classify run", ["generate", "--experiment=gan", "--checkpoint-dir=runs", "--env=done"], 2,
     r"runs/done/best.pth was trained by experiment 'classify'; add --experiment=classify \(its commands: train, val, test\)"),
    ("gen-img is a folder", ["generate", "--experiment=gan", "--load-model-path=x.pth", "--gen-img=out"], 1,
     r"--gen-img=out is a folder; give a file name, e.g. --gen-img=out/result.png"),
]
READ_ONLY = [
    ("read-only checkpoint dir", ["train", *flags("--env=new", "--checkpoint-dir=ro/runs")], 1,
     r"--checkpoint-dir: cannot write in 'ro/runs': (read-only file system|permission denied)"),
    ("read-only run on resume", ["train", *flags("--env=done", "--checkpoint-dir=ro/runs", "--resume", "--max-epoch=2")], 1,
     r"--checkpoint-dir: cannot write in 'ro/runs/done': (read-only file system|permission denied)"),
    ("read-only result folder", ["test", "--checkpoint-dir=runs", "--env=done", "--test-data-root=data/test",
                                 "--result-file=ro/result.csv"], 1,
     r"--result-file: cannot write in 'ro': (read-only file system|permission denied)"),
]


def check(ws, args, code, message, may_change=(), cli=run_cli, **run):
    before = snapshot(ws)
    result = cli(*args, cwd=ws, **run)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    assert lines and all(LOG_LINE.match(line) for line in lines[:-1]), result.stderr  # one line, after the log
    assert re.fullmatch(rf"error: .*{message}.*", lines[-1]), lines[-1]
    after = snapshot(ws)
    changed = {name for name in set(before) | set(after) if before.get(name) != after.get(name)}
    assert {name for name in changed if not any(re.fullmatch(p, name) for p in may_change)} == set()
    return result


@pytest.mark.parametrize("args, code, message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input(ws, forked_cli, args, code, message):
    check(ws, args, code, message, cli=forked_cli)


@pytest.mark.parametrize("args, code, message", [case[1:] for case in READ_ONLY], ids=[case[0] for case in READ_ONLY])
def test_read_only_output(ws, forked_cli, args, code, message):
    probe = ws / "ro" / "probe"
    try:
        probe.write_text("x")
        probe.unlink()
        if os.geteuid() == 0:
            pytest.skip("this machine can make no read-only folder for root (no bind mount)")
    except OSError:
        pass
    check(ws, args, code, message, cli=forked_cli)


def test_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(ws):
    # best.pth (epoch 2 improves or not) or last.pth is the first write past the limit.
    result = check(ws, ["train", *flags("--env=done", "--resume", "--max-epoch=2")], 1,
                   r"cannot write runs/done/(best|last).pth: file too large; the previous (best|last).pth is kept",
                   may_change=[r"runs/done/(status.json|config.yaml|events.out.tfevents.*|manifest.json|data-files.json.gz)",
                               r"runs/done/(source\..*diff|fingerprints/.*)"],
                   preexec_fn=limit_file_size(max(100_000, uncommitted_diff_size() + 20_000)))
    assert "emergency" not in result.stderr


def uncommitted_diff_size():
    """Bytes of the source.diff a run writes from this checkout (0 when it is clean, as in CI):
    a limit below it would stop the run at its start, before any checkpoint."""
    from utils.engine import provenance

    git = provenance.git_state() or {}
    return len((git.get("diff") or "").encode())


def test_full_disk_while_writing_the_csv_keeps_the_previous_one(ws):
    check(ws, ["test", "--checkpoint-dir=runs", "--env=done", "--test-data-root=data/test", "--num-workers=0",
               "--result-file=result.csv"], 1,
          r"cannot write result.csv: file too large; the previous result.csv is kept", preexec_fn=limit_file_size(40))


def test_skip_bad_images_leaves_them_out_alike_for_any_workers_and_on_resume(tmp_path):
    from conftest import tiny_flags
    import torch

    data = tmp_path / "data"
    make_dogcat(data, per_class=12, test_images=7)
    (data / "train" / "dog.5.jpg").write_bytes(b"")
    (data / "train" / "cat.2.jpg").write_text("not an image")
    (data / "train" / "cat.7.jpg").write_bytes((data / "train" / "cat.8.jpg").read_bytes()[:300])
    (data / "test" / "3.jpg").write_bytes(b"")

    def train(env, **options):
        result = run_cli("train", *tiny_flags(data, tmp_path, env=env, **{"skip-bad-images": "true", "max-epoch": 2, **options}))
        assert result.returncode == 0, result.stderr
        return result

    result = train("w0")
    told = [line for line in result.stderr.splitlines() if "--skip-bad-images: skipped" in line]
    assert len(told) == 1 and "skipped 3 unreadable images: cat.2.jpg (" in told[0], result.stderr
    listed = (tmp_path / "runs" / "w0" / "skipped_images.txt").read_text().splitlines()
    assert [line.split("\t")[0].rsplit("/", 1)[1] for line in listed] == ["cat.2.jpg", "cat.7.jpg", "dog.5.jpg"]
    assert "empty file (0 bytes)" in listed[2]
    train("w2", **{"num-workers": 2})
    train("part", **{"max-epoch": 1})
    train("part", **{"resume": "true"})
    weights = [torch.load(tmp_path / "runs" / env / "last.pth", weights_only=True)["model"] for env in ("w0", "w2", "part")]
    assert all(torch.equal(weights[0][k], other[k]) for other in weights[1:] for k in weights[0])

    result = run_cli("test", "--env=w0", f"--checkpoint-dir={tmp_path / 'runs'}", f"--test-data-root={data / 'test'}",
                     f"--result-file={tmp_path / 'r.csv'}")
    assert result.returncode == 0, result.stderr
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert len(rows) == 8 and "3,0.500000" in rows  # Kaggle wants every id: the unreadable one is a coin flip
