"""The book's chapter 9: an "AI poet", a character-level LSTM language model (`poetry`).

    train:    next-character cross-entropy on the poems of --train-data-root (data/poems.py:
              the book's tang.npz, a text file or a folder of them; the embedded default is a
              generated sample, data/poetry_sample.py), validated on held-out poems:
              val_loss (nats per character) and val_perplexity = exp(val_loss), with a
              sample poem in TensorBoard's text tab at each epoch end
    generate: write a poem from a checkpoint (`test` is the same command), as the book does:
              --prefix-words set the mood (read, not printed), the poem starts with
              --start-words, or with --acrostic each line starts with one of them (藏头诗);
              sampled at --temperature from the --top-k likeliest characters with --seed

Padding positions do not count in any loss. Everything a long run needs (resume, stop,
debug, DDP, checkpoints) is the engine's.
"""
import dataclasses
import logging
import math

import torch
import torch.nn.functional as F

from data.base import build_split
from data.poems import MARKS, START
from models import check_takes
from utils.core.errors import UsageError
from utils.core.registry import EXPERIMENTS, MODELS
from utils.engine import checkpoint, distributed, runtime
from utils.engine.averages import chosen_average
from utils.engine.experiment import Experiment
from utils.engine.lr_policy import LrPolicy
from utils.engine.state import load_for_inference
from utils.writers import write_text

log = logging.getLogger(__name__)
LINE_ENDS = "。！？!?"  # where a line of a poem ends: generate breaks lines there


def build_net(cfg, vocabulary_size, device):
    model = MODELS.build(cfg.model, vocab_size=vocabulary_size, embedding_dim=cfg.embedding_dim,
                         hidden_dim=cfg.hidden_dim, num_layers=cfg.num_layers)
    log.info("model %s, %.2fM params, %d characters", cfg.model, sum(p.numel() for p in model.parameters()) / 1e6,
             vocabulary_size - len(MARKS))
    return model.to(device)


def sample_next(logits, temperature, top_k, generator):
    """The index of the next character, drawn from softmax(logits / temperature) over the
    `top_k` likeliest (0 = all), with `generator`; temperature 0 takes the likeliest."""
    logits = logits.double().cpu()
    if temperature == 0:
        return int(logits.argmax())
    if top_k:
        threshold = logits.topk(min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < threshold, -math.inf)
    # From the largest logit down, in float64: a temperature of 1e-300 gives the likeliest
    # (ties share), not 0 / 0; one of 1e300 gives every character alike.
    scaled = (logits - logits.max()) / temperature
    return int(torch.multinomial(scaled.softmax(-1), 1, generator=generator))


@torch.no_grad()
def write_poem(model, vocabulary, cfg, device, generator, start_words=None, acrostic=None):
    """A poem as text, the book's way: <s>, then --prefix-words (their state only), then the
    start words, then sampled characters until </s> or --max-gen-len characters. Acrostic:
    each line forced to begin with the next start word, ended at a line end or </s>."""
    index = {token: position for position, token in enumerate(vocabulary)}
    start_words = cfg.start_words if start_words is None else start_words
    acrostic = cfg.acrostic if acrostic is None else acrostic
    model.eval()

    def feed(token, state):
        logits, state = model(torch.tensor([[index[token]]], device=device), state)
        return logits[0, -1], state

    logits, state = feed(START, None)
    for char in cfg.prefix_words:
        logits, state = feed(char, state)
    text, forced = [], list(start_words)
    if acrostic:
        lines, line = [], []
        for char in forced:
            logits, state = feed(char, state)
            line = [char]
            while len(line) < cfg.max_gen_len:
                token = vocabulary[sample_next(logits, cfg.temperature, cfg.top_k, generator)]
                if token in MARKS:
                    break
                line.append(token)
                logits, state = feed(token, state)
                if token in LINE_ENDS:
                    break
            lines.append("".join(line))
        return "\n".join(lines)
    for char in forced:
        text.append(char)
        logits, state = feed(char, state)
    while len(text) < cfg.max_gen_len:
        token = vocabulary[sample_next(logits, cfg.temperature, cfg.top_k, generator)]
        if token in MARKS:  # </s> ends the poem
            break
        text.append(token)
        logits, state = feed(token, state)
    return "".join(char + "\n" if char in LINE_ENDS else char for char in text).rstrip("\n")


def check_characters(words, vocabulary, option):
    unknown = sorted({char for char in words if char not in vocabulary})
    if unknown:
        shown = " ".join(unknown[:20]) + (f" (and {len(unknown) - 20} more)" if len(unknown) > 20 else "")
        raise UsageError(f"{option} has characters the model never saw: {shown}; use characters of its "
                         f"corpus (e.g. {''.join(vocabulary[len(MARKS):len(MARKS) + 10])})")


@EXPERIMENTS.register("poetry")
class Poetry(Experiment):
    """A character-level LSTM that writes poems (the book's CharRNN)."""

    commands = {
        "train": "train the language model; writes <checkpoint-dir>/<env>/ (last.pth, best.pth, texts/, TensorBoard)",
        "generate": "write a poem (--start-words, --prefix-words, --acrostic) to --result-file and print it",
    }
    aliases = {"test": "generate"}
    # The embedded demo: the generated sample (data/poetry_sample.py) in a few minutes on 2
    # CPU cores. configs/poetry.yaml holds the book's settings for tang.npz.
    defaults = {"dataset": "poems", "train_data_root": "data/poetry_sample/poems.txt", "model": "CharRNN",
                "batch_size": 64, "max_epoch": 8, "lr": 3e-3, "lr_policy": "constant", "val_ratio": 0.1, "print_freq": 10}
    monitors = {"val_perplexity": "min", "val_loss": "min"}
    batch_names = ("tokens", "index")
    options = {
        "embedding_dim": {"default": 128, "doc": "size of each character's embedding (the book's 128)", "role": "model",
                          "minimum": 1},
        "hidden_dim": {"default": 256, "doc": "LSTM hidden size (the book's 256)", "role": "model", "minimum": 1},
        "num_layers": {"default": 2, "doc": "stacked LSTM layers (the book's 2)", "role": "model", "minimum": 1,
                       "maximum": 1000},
        "seq_len": {"default": 48, "doc": "characters per training sequence: longer poems are cut, shorter padded "
                    "(the book's 125 for tang.npz)", "minimum": 1, "maximum": 100000, "commands": ["train"]},
        "start_words": {"default": "", "doc": "generate: the poem starts with these characters (with --acrostic: one "
                        "line per character)", "role": "execution", "commands": ["generate"]},
        "prefix_words": {"default": "", "doc": "generate: characters read first to set the mood, not printed",
                         "role": "execution", "commands": ["generate"]},
        "acrostic": {"default": False, "doc": "generate an acrostic (藏头诗): each line begins with the next of --start-words",
                     "role": "execution", "commands": ["generate"]},
        "max_gen_len": {"default": 200, "doc": "generate: at most this many characters (per line with --acrostic)",
                        "role": "execution", "minimum": 1, "maximum": 100000, "commands": ["generate"]},
        "temperature": {"default": 1.0, "doc": "generate: sampling temperature (lower: safer, 0: always the likeliest)",
                        "role": "execution", "minimum": 0.0, "commands": ["generate"]},
        "top_k": {"default": 0, "doc": "generate: sample only from the k likeliest characters (0 = all)",
                  "role": "execution", "minimum": 0, "commands": ["generate"]},
        "result_file": {"default": "", "doc": "text file `generate` writes the poem to; '' = result.txt in the run dir",
                        "role": "execution", "path": True, "commands": ["generate"]},
    }

    def datasets(self):
        check_takes("model", self.cfg.model, ["vocab_size"], "language model")
        train_set = build_split(self.cfg, "train")
        self.val_set = build_split(self.cfg, "val")
        self.vocabulary = train_set.vocabulary
        return train_set, self.val_set

    def checkpoint_info(self):
        return {"vocabulary": self.vocabulary}

    def build(self, ctx):
        model = build_net(self.cfg, len(self.vocabulary), ctx.device)
        optimizer = ctx.optimizer(model)
        return {"model": model, "optimizer": optimizer,
                "lr_policy": LrPolicy(optimizer, self.cfg, monitor_mode=self.monitors[self.cfg.monitor])}

    def step(self, batch, objects, ctx):
        tokens, _ = batch
        with ctx.precision.autocast():
            logits, _ = objects["model"](tokens[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=0)
        ctx.optimize(loss, "optimizer")
        return {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, objects, ctx):
        if getattr(self, "val_loader", None) is None:  # one for the run: its workers persist
            self.val_loader = ctx.eval_loader(self.val_set)
        model = ctx.unwrap("model")  # each rank its own share: no DDP collective per batch
        model.eval()
        loss_sum, count = 0.0, 0
        for tokens, _ in self.val_loader:
            tokens = tokens.to(ctx.device)
            with ctx.precision.autocast():
                logits, _ = model(tokens[:, :-1])
            targets = tokens[:, 1:].flatten()
            loss_sum += float(F.cross_entropy(logits.float().flatten(0, 1), targets, ignore_index=0, reduction="sum"))
            count += int((targets != 0).sum())
        totals = ctx.reduce_sums({"loss": loss_sum, "count": count})
        loss = totals["loss"] / totals["count"] if totals["count"] else math.nan
        if ctx.outputs.writes:
            poem = write_poem(model, self.vocabulary, self.cfg, ctx.device, ctx.generator("sample_poem", ctx.state.epoch),
                              start_words="", acrostic=False)
            # two trailing spaces: a line break in TensorBoard's markdown
            ctx.outputs.text("sample", poem.replace("\n", "  \n"), ctx.state.global_step)
        model.train()
        return {"val_loss": loss, "val_perplexity": math.exp(loss) if loss < 700 else math.inf}

    def generate(self):
        """Write a poem from a checkpoint, print it and save it to --result-file."""
        if not distributed.is_main():
            return  # one poem: rank 0 writes it
        self.cfg = dataclasses.replace(self.cfg, result_file=runtime.output_file(self.cfg, "result_file", "result.txt"))
        runtime.check_output_file(self.cfg.result_file, "--result-file")
        if self.cfg.acrostic and not self.cfg.start_words:
            raise UsageError("--acrostic writes one line per character of --start-words; give --start-words")
        cfg, device, state, path = load_for_inference(self.cfg)
        vocabulary = (state.get("info") or {}).get("vocabulary")
        if not vocabulary or not isinstance(state.get("model"), dict):
            raise UsageError(f"{path} holds no poetry model and vocabulary; give a checkpoint written by "
                             f"`train --experiment=poetry`")
        check_characters(cfg.start_words, vocabulary, "--start-words")
        check_characters(cfg.prefix_words, vocabulary, "--prefix-words")
        average = chosen_average(cfg, state, "model", path)  # --use-ema of a run without an average: one line
        model = build_net(cfg, len(vocabulary), device)
        checkpoint.load_weights(model, state["model"] if average is None else average, source=str(path))
        # Its own CPU generator: the same --seed writes the same poem on any device.
        poem = write_poem(model, vocabulary, cfg, device, torch.Generator().manual_seed(cfg.seed))
        write_text(cfg.result_file, poem + "\n")
        print(poem)
        print(f"wrote the poem to {cfg.result_file}")

