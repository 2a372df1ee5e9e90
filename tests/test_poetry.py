"""The poetry experiment (the book's chapter 9 CharRNN): data formats, learning, generate,
bit-exact resume, and the engine's services (TensorBoard text, runs) on a language model."""
import collections
import math
import os
import re
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, load, run_cli
from data import poems, poetry_sample

FLAGS = {"experiment": "poetry", "embedding-dim": 32, "hidden-dim": 64, "seq-len": 28, "batch-size": 8, "max-epoch": 5,
         "num-workers": 0, "print-freq": 5, "progress": "false", "debug-file": "", "val-ratio": 0.2, "lr": 0.01}


def poetry_flags(tmp_path, env, **extra):
    values = {**FLAGS, "train-data-root": tmp_path / "sample" / "poems.txt", "checkpoint-dir": tmp_path / "runs",
              "env": env, **extra}
    return [f"--{key}={value}" for key, value in values.items()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """300 generated quatrains and one uninterrupted run of 5 epochs (30 steps each)."""
    tmp_path = tmp_path_factory.mktemp("poetry")
    poetry_sample.generate(tmp_path / "sample", count=300)
    result = run_cli("train", *poetry_flags(tmp_path, "reference"))
    assert result.returncode == 0, result.stderr
    return tmp_path, result


def unigram_entropy(lines):
    """Nats per predicted token of the corpus's character frequencies (</s> included)."""
    counts = collections.Counter("".join(lines))
    counts["</s>"] = len(lines)
    total = sum(counts.values())
    return -sum(count / total * math.log(count / total) for count in counts.values())


def test_the_model_learns_far_below_the_unigram_entropy_of_its_corpus(reference):
    tmp_path, result = reference
    state = load(tmp_path / "runs" / "reference" / "best.pth")
    corpus = (tmp_path / "sample" / "poems.txt").read_text(encoding="utf-8").split()
    val_loss = state["metrics"]["val_loss"]
    assert val_loss < 0.6 * unigram_entropy(corpus), (val_loss, unigram_entropy(corpus))
    assert math.isclose(state["metrics"]["val_perplexity"], math.exp(val_loss))
    assert "best val_perplexity" in result.stdout
    assert "generate --experiment=poetry --env=reference" in result.stdout  # what to run next


def test_a_poet_run_reproduces_bit_for_bit_from_a_checkpoint_of_its_middle(reference, tmp_path):
    runs = reference[0] / "runs"
    result = run_cli("reproduce", f"--checkpoint-dir={runs}", "--env=reference")
    assert result.returncode == 0, result.stderr
    assert "reproduced: epoch 1 bit-identical (model, optimizer, lr policy: " in result.stdout, result.stdout


def test_the_vocabulary_is_sorted_after_the_marks_and_kept_in_every_checkpoint(reference):
    tmp_path, _ = reference
    corpus = (tmp_path / "sample" / "poems.txt").read_text(encoding="utf-8").split()
    expected = ["<pad>", "<s>", "</s>"] + sorted(set("".join(corpus)))
    for name in ("last.pth", "best.pth"):
        state = load(tmp_path / "runs" / "reference" / name)
        assert state["info"]["vocabulary"] == expected, name
        assert state["model"]["embeddings.weight"].shape == (len(expected), 32)
    assert load(tmp_path / "runs" / "reference" / "last.pth")["optimizer_steps"] == {"optimizer": 150}


def test_sequences_are_cut_or_padded_to_seq_len_plus_one():
    index = {token: position for position, token in enumerate(["<pad>", "<s>", "</s>", "a", "b"])}
    assert poems.encode("ab", index, 6) == [1, 3, 4, 2, 0, 0]
    assert poems.encode("abab", index, 4) == [1, 3, 4, 3]


def test_the_books_npz_a_text_file_and_a_folder_give_the_same_poems(tmp_path):
    lines = ["床前明月光，疑是地上霜。", "白日依山尽，黄河入海流。", "春眠不觉晓。"]
    (tmp_path / "poems.txt").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    (tmp_path / "folder" / "deep").mkdir(parents=True)
    (tmp_path / "folder" / "a.txt").write_text(lines[0] + "\n", encoding="utf-8")
    (tmp_path / "folder" / "deep" / "b.txt").write_text("\n".join(lines[1:]), encoding="utf-8")
    # The book's layout: rows of 20 indices padded at the front with </s>, <START> ... <EOP>.
    words = ["</s>", "<START>", "<EOP>"] + sorted(set("".join(lines)))
    word2ix = {word: index for index, word in enumerate(words)}
    data = np.zeros((len(lines), 20), dtype=np.int32)
    for row, line in enumerate(lines):
        encoded = [word2ix["<START>"]] + [word2ix[char] for char in line] + [word2ix["<EOP>"]]
        data[row, 20 - len(encoded):] = encoded
    np.savez_compressed(tmp_path / "tang.npz", data=data, word2ix=np.array(word2ix),
                        ix2word=np.array({index: word for word, index in word2ix.items()}))
    for source in ("poems.txt", "folder", "tang.npz"):
        assert list(poems.read_corpus(str(tmp_path / source))) == lines, source  # folder: a.txt, then deep/b.txt


def test_a_folder_named_like_a_text_file_is_not_read_and_an_unreadable_file_is_one_line(tmp_path):
    from utils.core.errors import UserError

    (tmp_path / "corpus" / "x.txt").mkdir(parents=True)  # a folder whose name ends in .txt
    with pytest.raises(UserError, match=r"no .txt files in '.*corpus'; --train-data-root takes"):
        poems.read_corpus(str(tmp_path / "corpus"))
    (tmp_path / "corpus" / "poems.txt").write_text("床前明月光\n", encoding="utf-8")
    assert poems.read_corpus(str(tmp_path / "corpus")) == ("床前明月光",)
    with pytest.raises(UserError, match=r"cannot read .*x.txt: is a directory; --train-data-root takes"):
        poems.read_lines(tmp_path / "corpus" / "x.txt")


def test_a_temperature_near_zero_writes_the_likeliest_poem_not_nan(reference, tmp_path):
    from experiments.poetry import sample_next

    logits = torch.tensor([0.5, 2.0, 2.0 - 1e-6, -3.0])
    generator = torch.Generator().manual_seed(0)
    for temperature in (1e-300, 1e-30, 5e-324):
        assert {sample_next(logits, temperature, 0, generator) for _ in range(20)} <= {1, 2}  # the top two, tied
    assert sample_next(torch.tensor([0.0, 9.0, 1.0]), 1e-300, 0, generator) == 1
    assert sample_next(torch.tensor([0.0, 9.0, 1.0]), 1e15, 2, generator) in (1, 2)  # flat over the top k
    run_dir = reference[0] / "runs" / "reference"
    poems_by = {}
    for temperature in ("0", "1e-300"):
        result = run_cli("generate", "--experiment=poetry", f"--load-model-path={run_dir / 'best.pth'}",
                         f"--temperature={temperature}", f"--result-file={tmp_path / temperature}.txt")
        assert result.returncode == 0, result.stderr
        poems_by[temperature] = (tmp_path / f"{temperature}.txt").read_text(encoding="utf-8")
    assert poems_by["1e-300"] == poems_by["0"]


def test_a_npz_that_asks_to_build_anything_else_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    array = np.empty((), dtype=object)
    array[()] = Evil()
    with open(tmp_path / "evil.npz", "wb") as handle:
        np.savez(handle, data=np.zeros((1, 3), dtype=np.int32), ix2word=array)
    from utils.core.errors import UserError

    with pytest.raises(UserError, match=r"asks to build posix.system"):
        poems.read_npz(tmp_path / "evil.npz")


def test_generate_prints_and_writes_the_same_poem_for_the_same_seed(reference, tmp_path):
    run_dir = reference[0] / "runs" / "reference"
    args = ["generate", "--experiment=poetry", f"--load-model-path={run_dir / 'best.pth'}", "--start-words=春风",
            "--prefix-words=秋", "--top-k=5", "--temperature=0.8"]
    first = run_cli(*args, f"--result-file={tmp_path / 'a.txt'}")
    second = run_cli(*args, f"--result-file={tmp_path / 'b.txt'}")
    assert second.returncode == 0, second.stderr
    assert first.returncode == 0, first.stderr
    poem = (tmp_path / "a.txt").read_text(encoding="utf-8")
    assert poem == (tmp_path / "b.txt").read_text(encoding="utf-8") and poem.startswith("春风")
    assert first.stdout.startswith(poem)  # printed as written
    other = run_cli(*args, "--seed=7", f"--result-file={tmp_path / 'c.txt'}")
    assert (tmp_path / "c.txt").read_text(encoding="utf-8") != poem
    assert other.returncode == 0


def test_an_acrostic_has_one_line_per_start_word_each_beginning_with_it(reference, tmp_path):
    result = run_cli("test", "--experiment=poetry", "--env=reference", f"--checkpoint-dir={reference[0] / 'runs'}",
                     "--start-words=春秋江月", "--acrostic", f"--result-file={tmp_path / 'acrostic.txt'}")
    assert result.returncode == 0, result.stderr  # `test` is the poetry experiment's generate too
    lines = (tmp_path / "acrostic.txt").read_text(encoding="utf-8").rstrip("\n").split("\n")
    assert [line[0] for line in lines] == list("春秋江月")


@pytest.mark.parametrize("args, message", [
    (["--start-words=深度"], r"--start-words has characters the model never saw: 度"),
    (["--prefix-words=<s>"], r"--prefix-words has characters the model never saw"),
    (["--acrostic"], r"--acrostic writes one line per character of --start-words; give --start-words"),
    (["--top-k=-1"], r"option --top-k must be >= 0"),
    (["--use-ema"], r"best.pth holds no moving average of the weights \(the run was trained without --ema\); drop "
                    r"--use-ema"),
])
def test_generate_refuses_what_it_cannot_write_in_one_line(reference, tmp_path, args, message):
    result = run_cli("generate", "--experiment=poetry", "--env=reference", f"--checkpoint-dir={reference[0] / 'runs'}",
                     f"--result-file={tmp_path / 'poem.txt'}", *args)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: "), result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "poem.txt").exists()


def test_sigint_mid_epoch_then_resume_equals_uninterrupted(reference):
    tmp_path, _ = reference
    stopped = run_cli("train", *poetry_flags(tmp_path, "sigint"), env={"RUNNER_FAULT_AT_STEP": "40:SIGINT"})
    assert stopped.returncode == 130, stopped.stderr
    state = load(tmp_path / "runs" / "sigint" / "last.pth")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 10, 40)
    resumed = run_cli("train", "--env=sigint", f"--checkpoint-dir={tmp_path / 'runs'}", "--resume", "--progress=false")
    assert resumed.returncode == 0, resumed.stderr  # no --experiment: the checkpoint says poetry
    expected, actual = load(tmp_path / "runs" / "reference" / "last.pth"), load(tmp_path / "runs" / "sigint" / "last.pth")
    for key, value in expected["model"].items():
        assert torch.equal(value, actual["model"][key]), key
    for index, param_state in expected["optimizer"]["state"].items():
        for name, value in param_state.items():
            assert torch.equal(value, actual["optimizer"]["state"][index][name]), (index, name)
    assert expected["best"] == actual["best"]


def test_a_run_of_two_epochs_trained_further_equals_the_uninterrupted_run(reference):
    tmp_path, _ = reference
    first = run_cli("train", *poetry_flags(tmp_path, "further", **{"max-epoch": 2}))
    assert first.returncode == 0, first.stderr
    further = run_cli("train", "--env=further", f"--checkpoint-dir={tmp_path / 'runs'}", "--resume", "--max-epoch=5",
                      "--progress=false")
    assert further.returncode == 0, further.stderr
    expected, actual = load(tmp_path / "runs" / "reference" / "last.pth"), load(tmp_path / "runs" / "further" / "last.pth")
    assert all(torch.equal(value, actual["model"][key]) for key, value in expected["model"].items())
    assert (actual["epoch"], actual["global_step"]) == (5, 150)


def test_tensorboard_has_the_curves_and_a_sample_poem_and_runs_lists_the_run(reference):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = reference[0] / "runs" / "reference"
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert {"train/loss", "val/perplexity", "val/loss"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val/perplexity")] == [30, 60, 90, 120, 150]
    assert "sample/text_summary" in events.Tags()["tensors"]
    assert sorted(p.name for p in (run_dir / "texts").iterdir())[-1] == "sample_step0000150.txt"
    table = run_cli("runs", f"--checkpoint-dir={reference[0] / 'runs'}").stdout
    assert re.search(r"reference +poetry +CharRNN +5/5 +val_perplexity \d+\.\d{4} \(epoch \d\) +finished", table)


@pytest.mark.slow
def test_two_processes_train_on_sharded_sequences(reference):
    from test_distributed import torchrun

    tmp_path, _ = reference
    result = torchrun("train", *poetry_flags(tmp_path, "ddp", **{"max-epoch": 1}))
    assert result.returncode == 0, result.stderr[-3000:]
    state = load(tmp_path / "runs" / "ddp" / "last.pth")
    assert state["global_step"] == 15 and state["world_size"] == 2  # 240 poems in global batches of 2 x 8
    assert not any(key.startswith("module.") for key in state["model"])


@pytest.mark.slow
def test_the_debug_file_opens_the_prompt_with_the_batch_by_name(reference):
    import pexpect

    tmp_path, _ = reference
    debug_file = tmp_path / "debug"
    debug_file.touch()
    flags = poetry_flags(tmp_path, "debug", **{"debug-file": debug_file})
    child = pexpect.spawn(sys.executable, [str(ROOT / "main.py"), "train", *flags], cwd=str(ROOT),
                          env=dict(os.environ, PYTHONUNBUFFERED="1"), encoding="utf-8", timeout=60, dimensions=(40, 200))
    child.expect("ipdb>")
    child.sendline("p tuple(tokens.shape), type(model).__name__")
    child.expect(r"\(8, 29\), 'CharRNN'\)")
    child.expect("ipdb>")
    child.sendline("q")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130, child.before
    assert load(tmp_path / "runs" / "debug" / "last.pth")["global_step"] == 5
