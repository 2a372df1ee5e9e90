"""The book's chapter 7: a DCGAN that draws anime faces (registered as `gan`).

    train:    alternate discriminator and generator steps (the engine: utils/engine/loop.py)
    generate: draw --gen-search-num noises, keep the --gen-num the discriminator scores
              highest, write one grid PNG to --gen-img (`test` is the same command)

Losses, on the discriminator's logits r = D(x) for real and f = D(G(z)) for generated images:
  bce (DCGAN, Radford et al. 2016): D: BCE(r, 1) + BCE(f, 0)   G: BCE(f, 1)
  rahinge (relativistic average hinge, Jolicoeur-Martineau 2018; the book's 2nd edition):
      D: relu(1 - (r - mean f)) + relu(1 + (f - mean r))   G: relu(1 + (r - mean f)) + relu(1 - (f - mean r))
A step trains D when global_step % --d-every == 0 and G when global_step % --g-every == 0.

Under torchrun (DDP) each rank draws its own noise, and BatchNorm buffers are not broadcast
before each forward (broadcast_buffers = False): the discriminator runs twice per D step
(real, then generated images), and DDP's copy of rank 0's buffers between the two forwards
would overwrite statistics the first one just used. In training mode BatchNorm normalises
with the batch's own statistics, so this changes nothing a step computes: each rank's
batch-norm layers see that rank's batch, as in the book's single-GPU DCGAN. The running
statistics (used in eval mode: the image grids and `generate`) are rank 0's, copied to every
rank at each epoch end. --sync-bn (CUDA) normalises over the global batch instead.
"""
import dataclasses
import logging

import torch
import torch.nn.functional as F

from models import check_takes
from models.dcgan import layout
from utils.core.errors import UsageError, plural
from utils.core.registry import DATASETS, EXPERIMENTS, MODELS
from utils.engine import checkpoint, distributed, runtime
from utils.engine.averages import chosen_average
from utils.engine.experiment import Experiment
from utils.engine.lr_policy import LrPolicy
from utils.engine.state import load_for_inference
from utils.export import Exportable
from utils.visualize import save_grid

log = logging.getLogger(__name__)
GRID_IMAGES = 64


def build_nets(cfg, device):
    """(generator, discriminator) of cfg's sizes on `device`."""
    netg = MODELS.build(cfg.model, nz=cfg.nz, ngf=cfg.ngf, image_size=cfg.image_size).to(device)
    netd = MODELS.build(cfg.netd, ndf=cfg.ndf, image_size=cfg.image_size).to(device)
    params = sum(p.numel() for p in netg.parameters()), sum(p.numel() for p in netd.parameters())
    log.info("generator %s %.2fM params, discriminator %s %.2fM params", cfg.model, params[0] / 1e6, cfg.netd, params[1] / 1e6)
    return netg, netd


def discriminator_loss(kind, real, fake):
    if kind == "rahinge":
        return F.relu(1 - (real - fake.mean())).mean() + F.relu(1 + (fake - real.mean())).mean()
    return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


def generator_loss(kind, real, fake):
    if kind == "rahinge":
        return F.relu(1 + (real - fake.mean())).mean() + F.relu(1 - (fake - real.mean())).mean()
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


@EXPERIMENTS.register("gan")
class Gan(Experiment):
    """DCGAN: a generator and a discriminator trained against each other on a folder of images."""
    commands = {
        "train": "train generator and discriminator; writes <checkpoint-dir>/<env>/ (last.pth, images/, TensorBoard)",
        "generate": "write a grid of the --gen-num best-scored of --gen-search-num generated images to --gen-img",
    }
    aliases = {"test": "generate"}
    options = {
        "netd": {"default": "NetD", "doc": "the discriminator (MODELS registry); --model is the generator", "role": "model",
                 "registry": "models"},
        "nz": {"default": 100, "doc": "length of the noise vector the generator draws from", "role": "model", "minimum": 1},
        "ngf": {"default": 64, "doc": "generator width: channels of its last hidden layer", "role": "model", "minimum": 1},
        "ndf": {"default": 64, "doc": "discriminator width: channels of its first layer", "role": "model", "minimum": 1},
        "lr1": {"default": 2e-4, "doc": "generator learning rate (Adam)", "minimum": 0.0},
        "lr2": {"default": 2e-4, "doc": "discriminator learning rate (Adam)", "minimum": 0.0},
        "beta1": {"default": 0.5, "doc": "Adam beta1 of both nets (DCGAN's 0.5)", "minimum": 0.0,
                  "below": [1, "Adam's moving-average factor"]},
        "d_every": {"default": 1, "doc": "train the discriminator every N steps", "minimum": 1},
        "g_every": {"default": 5, "doc": "train the generator every N steps", "minimum": 1},
        "gan_loss": {"default": "bce", "doc": "bce (classic DCGAN) | rahinge (relativistic average hinge, the book's 2nd edition)",
                     "choices": ["bce", "rahinge"]},
        "gen_img": {"default": "", "doc": "grid PNG written by `generate`; '' = result.png in the run dir (of --env, or of "
                    "--load-model-path)", "role": "execution", "path": True, "commands": ["generate"]},
        "gen_num": {"default": 64, "doc": "images in the generated grid: the best-scored of --gen-search-num",
                    "role": "execution", "minimum": 1, "commands": ["generate"]},
        "gen_search_num": {"default": 512, "doc": "noises drawn; the discriminator keeps the best --gen-num",
                           "role": "execution", "minimum": 1, "commands": ["generate"]},
        "gen_mean": {"default": 0.0, "doc": "mean of the generation noise", "role": "execution", "commands": ["generate"]},
        "gen_std": {"default": 1.0, "doc": "standard deviation of the generation noise", "role": "execution", "minimum": 0.0, "commands": ["generate"]},
    }
    # The embedded smoke demo: 800 drawn 64 px faces, trained at 32 px on 2 CPU cores in a few
    # minutes. configs/anime_gan.yaml holds the book's settings (96 px, GPU).
    defaults = {"dataset": "faces", "train_data_root": "data/faces_sample", "model": "NetG", "image_size": 32,
                "ngf": 32, "ndf": 32, "batch_size": 64, "max_epoch": 30, "g_every": 1, "lr_policy": "constant",
                "print_freq": 50}
    losses = ("loss_d", "loss_g")
    ema_modules = ("netg",)  # --ema: a moving average of the generator, which `generate` draws with
    cannot_accumulate = "its two optimizers step against each other on every batch"
    broadcast_buffers = False  # see the module docstring

    def datasets(self):
        layout(self.cfg.image_size)  # an unsupported size fails here, before the run dir exists
        check_takes("model", self.cfg.model, ["nz", "ngf", "image_size"], "generator")
        check_takes("netd", self.cfg.netd, ["ndf", "image_size"], "discriminator")
        if self.cfg.lr_policy == "plateau":
            raise UsageError("--lr-policy=plateau needs a validation metric and the gan has none; use constant, step or cosine")
        dataset = DATASETS.build(self.cfg.dataset, self.cfg, "train")
        log.info("train split: %s", plural(len(dataset), "image"))
        return dataset, None

    def build(self, ctx):
        cfg = self.cfg
        netg, netd = build_nets(cfg, ctx.device)
        netg.to(memory_format=ctx.precision.memory_format)
        netd.to(memory_format=ctx.precision.memory_format)
        optimizer_g = ctx.optimizer(netg, lr=cfg.lr1, betas=(cfg.beta1, 0.999))  # the book's DCGAN: Adam, beta1 0.5
        optimizer_d = ctx.optimizer(netd, lr=cfg.lr2, betas=(cfg.beta1, 0.999))
        # the noise whose images are shown during training, the same for every run of one --seed
        fixed_noise = torch.randn(GRID_IMAGES, cfg.nz, 1, 1, generator=ctx.generator("fixed_noise")).to(ctx.device)
        return {"netg": netg, "netd": netd, "optimizer_g": optimizer_g, "optimizer_d": optimizer_d,
                "lr_policy_g": LrPolicy(optimizer_g, cfg), "lr_policy_d": LrPolicy(optimizer_d, cfg),
                "fixed_noise": fixed_noise}

    def step(self, batch, objects, ctx):
        real, _ = batch
        cfg, precision = self.cfg, ctx.precision
        netg, netd = objects["netg"], objects["netd"]
        scalars = {}
        if ctx.state.global_step % cfg.d_every == 0:
            noise = torch.randn(len(real), cfg.nz, 1, 1, device=ctx.device)
            with precision.autocast():
                with torch.no_grad():
                    fake = netg(noise)
                real_logits, fake_logits = netd(real), netd(fake.contiguous(memory_format=precision.memory_format))
                loss_d = discriminator_loss(cfg.gan_loss, real_logits.float(), fake_logits.float())
            ctx.optimize(loss_d, "optimizer_d")
            scalars.update(loss_d=loss_d.detach(), d_real=real_logits.detach().float().sigmoid().mean(),
                           d_fake=fake_logits.detach().float().sigmoid().mean())
        if ctx.state.global_step % cfg.g_every == 0:
            noise = torch.randn(len(real), cfg.nz, 1, 1, device=ctx.device)
            with precision.autocast():
                fake_logits = netd(netg(noise).contiguous(memory_format=precision.memory_format)).float()
                with torch.no_grad():
                    real_logits = netd(real).float() if cfg.gan_loss == "rahinge" else None
                loss_g = generator_loss(cfg.gan_loss, real_logits, fake_logits)
            ctx.optimize(loss_g, "optimizer_g")
            scalars["loss_g"] = loss_g.detach()
        return scalars

    @torch.no_grad()
    def images(self, objects, ctx):
        """The fixed noise's images, drawn in eval mode (no batch-norm statistics change);
        with --ema, the moving average's too."""
        grids = {}
        # rank 0 only: no DDP collective here
        for tag, netg in (("generated", ctx.unwrap("netg")), ("generated_ema", ctx.averaged("netg"))):
            if netg is None:
                continue
            was_training = netg.training
            netg.eval()
            grids[tag] = (netg(objects["fixed_noise"]).float() + 1) / 2
            netg.train(was_training)
        return grids

    def exportable(self, state, path):
        """The generator of checkpoint `state` (its EMA weights unless --use-ema=false): noise
        (N, nz, 1, 1) in, images (N, 3, size, size) in [-1, 1] out."""
        cfg = self.cfg
        if not isinstance(state.get("netg"), dict):
            raise UsageError(f"{path} has no 'netg' weights: give a checkpoint written by `train --experiment=gan`")
        netg = MODELS.build(cfg.model, nz=cfg.nz, ngf=cfg.ngf, image_size=cfg.image_size)
        average = chosen_average(cfg, state, "netg", path)
        checkpoint.load_weights(netg, state["netg"] if average is None else average,
                                source=f"{path} ({'netg' if average is None else 'netg_ema'})")
        metadata = {"experiment": cfg.experiment, "model": cfg.model, "nz": cfg.nz, "image_size": cfg.image_size,
                    "noise_mean": cfg.gen_mean, "noise_std": cfg.gen_std, "weights": "raw" if average is None else "ema",
                    "epoch": state.get("epoch"), "global_step": state.get("global_step"),
                    "about": "input: noise drawn from N(noise_mean, noise_std^2), N x nz x 1 x 1; output: RGB images "
                             "in [-1, 1], NCHW: (x + 1) / 2 gives [0, 1]"}
        return Exportable(netg.eval(), "noise", "images", (cfg.nz, 1, 1), metadata)

    @torch.no_grad()
    def generate(self):
        """Draw --gen-search-num images, keep the --gen-num that D scores highest, save a grid."""
        if self.cfg.gen_num > self.cfg.gen_search_num:
            raise UsageError(f"--gen-num={self.cfg.gen_num} is more than --gen-search-num={self.cfg.gen_search_num}; "
                             f"draw at least as many as you keep")
        if not distributed.is_main():
            return  # one picture: rank 0 draws it
        self.cfg = dataclasses.replace(self.cfg, gen_img=runtime.output_file(self.cfg, "gen_img", "result.png"))
        runtime.check_output_file(self.cfg.gen_img, "--gen-img")
        cfg, device, state, path = load_for_inference(self.cfg)
        netg, netd = build_nets(cfg, device)
        for name, net in (("netg", netg), ("netd", netd)):
            if not isinstance(state.get(name), dict):
                raise UsageError(f"{path} has no {name!r} weights: give a checkpoint written by `train --experiment=gan`")
            checkpoint.load_weights(net, state[name], source=f"{path} ({name})")
        average = chosen_average(cfg, state, "netg", path)
        if average is not None:
            checkpoint.load_weights(netg, average, source=f"{path} (netg_ema)")
        netg.eval(), netd.eval()
        # Noise from its own CPU generator: the same --seed draws the same picture on any device.
        generator = torch.Generator().manual_seed(cfg.seed)
        noise = torch.randn(cfg.gen_search_num, cfg.nz, 1, 1, generator=generator) * cfg.gen_std + cfg.gen_mean
        images, scores = [], []
        for chunk in noise.split(cfg.batch_size):
            fake = netg(chunk.to(device))
            images.append(fake.float().cpu())
            scores.append(netd(fake).float().cpu())
        best = torch.cat(scores).topk(cfg.gen_num).indices
        save_grid((torch.cat(images)[best] + 1) / 2, cfg.gen_img)
        print(f"wrote {cfg.gen_num} images (the best-scored of {cfg.gen_search_num}) to {cfg.gen_img}")
