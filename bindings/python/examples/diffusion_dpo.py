"""Diffusion-DPO with diffusers: align a text-to-image UNet on judge-filtered image pairs with
`unireward.diffusion_dpo_loss`.

Stage 3 of the UnifiedReward pipeline for generation tasks: the judge (`unireward filter`) has chosen, for each
caption, a preferred image and a dispreferred one among a generator's candidates; Diffusion-DPO (Wallace et al.
2023) then trains the generator's denoiser to prefer the chosen images more than a frozen reference copy does. The
training step is diffusers' own (`examples/research_projects/diffusion_dpo/train_diffusion_dpo.py`): the same noise
and timestep for both images of a pair, the UNet's and the reference's noise predictions, and the loss — here one
fused library call that returns the loss, its gradient with respect to the predictions, and diffusers' metrics.

Runs on a CPU in seconds with no download: the UNet (`UNet2DConditionModel`) is built from a tiny config, the
caption encoder is a frozen hashed-word embedding standing in for CLIP, and the model denoises pixels (a latent
model encodes both images with its VAE first and is otherwise trained the same way).

    PYTHONPATH=bindings/python UNIREWARD_LIB=target/release/libunireward.so \\
        python bindings/python/examples/diffusion_dpo.py --steps 20            # pairs drawn on the fly
    ... diffusion_dpo.py --pairs pairs.jsonl --media-folder media/ --steps 200 --beta 5000   # the filter's pairs

The pairs file is what `unireward filter` writes for an image-generation task, one JSON object a line:
`{"caption": "a red square", "chosen_image": "c1_3.png", "rejected_image": "c1_7.png", ...}` (other fields are
ignored); image paths are relative to `--media-folder`, by default the pairs file's folder, as the filter's are to
its own `--media-folder`. Images are read with Pillow (a dependency of diffusers), converted to RGB, resized to
`--size` and scaled to [-1, 1].

β: unireward's loss is `-logσ(-½β((mse_w - mse_l) - (ref_mse_w - ref_mse_l)))`, the paper's and its authors'
code's form, so β here is the paper's β (5000 for SD 1.5). diffusers' script writes `-logσ(β'(ref_diff -
model_diff))` without the ½: its `--beta_dpo` β' equals β / 2 (its default 2500 is β = 5000).
"""

import argparse
import copy
import json
import os
import tempfile
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from PIL import Image
from torch import Tensor, nn

import unireward

CAPTION_TOKENS = 8  # words kept per caption
CAPTION_WIDTH = 32  # the UNet's cross_attention_dim


@dataclass
class Pair:
    caption: str
    chosen: str  # resolved image paths
    rejected: str


def read_pairs(path: str, media_folder: Optional[str] = None) -> List[Pair]:
    """Reads and checks a pairs JSONL file: every line's caption and both images, before any training. Image paths
    are relative to `media_folder` (default: the file's folder)."""
    folder = media_folder or os.path.dirname(os.path.abspath(path))
    pairs = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: a pair is a JSON object")
            caption = record.get("caption")
            if not isinstance(caption, str):
                raise ValueError(f"{where}: `caption` (a string) is missing")
            if "chosen_video" in record:
                raise ValueError(f"{where}: a video pair; this example trains an image model")
            images = []
            for key in ("chosen_image", "rejected_image"):
                value = record.get(key)
                if not isinstance(value, str):
                    raise ValueError(f"{where}: `{key}` (an image path) is missing")
                image = os.path.join(folder, value)
                if not os.path.isfile(image):
                    raise ValueError(f"{where}: `{key}` image {image} does not exist")
                images.append(image)
            pairs.append(Pair(caption, *images))
    if not pairs:
        raise ValueError(f"{path}: no pairs")
    return pairs


def load_image(path: str, size: int) -> Tensor:
    """An image as [3, size, size] in [-1, 1] (diffusers' `Normalize([0.5], [0.5])`)."""
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((size, size), Image.BILINEAR)
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0)
    return pixels.permute(2, 0, 1).contiguous()


class CaptionEncoder(nn.Module):
    """A frozen stand-in for CLIP's text encoder: each word hashed to a row of a seeded random table,
    [B, CAPTION_TOKENS, CAPTION_WIDTH]; padding is row 0."""

    def __init__(self, vocab: int = 512, seed: int = 0):
        super().__init__()
        table = torch.randn(vocab, CAPTION_WIDTH, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("table", table)

    def ids(self, caption: str) -> List[int]:
        words = caption.lower().split()[:CAPTION_TOKENS]
        ids = [1 + zlib.crc32(w.encode()) % (len(self.table) - 1) for w in words]
        return ids + [0] * (CAPTION_TOKENS - len(ids))

    def forward(self, captions: List[str]) -> Tensor:
        return self.table[torch.tensor([self.ids(c) for c in captions])]


def tiny_unet(size: int) -> UNet2DConditionModel:
    """A text-conditioned UNet from a small config (200 k parameters): one cross-attention block down and up."""
    return UNet2DConditionModel(
        sample_size=size, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CAPTION_WIDTH, attention_head_dim=8, norm_num_groups=8,
    )  # fmt: skip


@dataclass
class Predictions:
    """The step's tensors before the loss, winners first: [2B, C, H, W] each."""

    model: Tensor
    reference: Tensor
    target: Tensor


def predictions(unet, ref_unet, scheduler, chosen: Tensor, rejected: Tensor, captions: Tensor,
                generator: torch.Generator) -> Predictions:  # fmt: skip
    """diffusers' Diffusion-DPO step up to the loss: one noise and one timestep per pair, shared by both images."""
    pixels = torch.cat([chosen, rejected])
    pairs = chosen.shape[0]
    noise = torch.randn(chosen.shape, generator=generator).repeat(2, 1, 1, 1)
    steps = scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (pairs,), generator=generator).repeat(2)
    noisy = scheduler.add_noise(pixels, noise, timesteps)
    hidden = captions.repeat(2, 1, 1)
    model_pred = unet(noisy, timesteps, hidden).sample
    with torch.no_grad():
        ref_pred = ref_unet(noisy, timesteps, hidden).sample
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    elif scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(pixels, noise, timesteps)
    else:
        raise ValueError(f"prediction_type {scheduler.config.prediction_type!r}: epsilon or v_prediction")
    return Predictions(model_pred, ref_pred, target)


def dpo_loss(preds: Predictions, beta: float):
    """`unireward.diffusion_dpo_loss` on the step's predictions, split into winners and losers: (loss, metrics)."""
    mw, ml = preds.model.chunk(2)
    rw, rl = preds.reference.chunk(2)
    tw, tl = preds.target.chunk(2)
    return unireward.diffusion_dpo_loss(mw, ml, rw, rl, tw, tl, beta=beta)


@dataclass
class Trainer:
    unet: UNet2DConditionModel
    ref_unet: UNet2DConditionModel
    encoder: CaptionEncoder
    scheduler: DDPMScheduler
    optimizer: torch.optim.Optimizer
    beta: float
    max_grad_norm: float = 1.0

    def step(self, chosen: Tensor, rejected: Tensor, captions: List[str],
             generator: torch.Generator) -> Dict[str, float]:  # fmt: skip
        """One optimizer step on a batch of pairs; the gradients stay in the UNet's `.grad` until the next step."""
        self.optimizer.zero_grad()
        with torch.no_grad():
            hidden = self.encoder(captions)
        preds = predictions(self.unet, self.ref_unet, self.scheduler, chosen, rejected, hidden, generator)
        loss, metrics = dpo_loss(preds, self.beta)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.max_grad_norm)
        self.optimizer.step()
        return {"loss": loss.item(), "grad_norm": grad_norm.item(), **{k: v.item() for k, v in metrics.items()}}


def make_trainer(size: int, beta: float, lr: float, seed: int) -> Trainer:
    """The UNet, its frozen reference copy, the caption encoder, DDPM's schedule and AdamW."""
    torch.manual_seed(seed)
    unet = tiny_unet(size)
    ref_unet = copy.deepcopy(unet).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    return Trainer(unet.train(), ref_unet, CaptionEncoder(seed=seed), scheduler, optimizer, beta)


def load_batch(pairs: List[Pair], size: int):
    chosen = torch.stack([load_image(p.chosen, size) for p in pairs])
    rejected = torch.stack([load_image(p.rejected, size) for p in pairs])
    return chosen, rejected, [p.caption for p in pairs]


COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}


def draw_demo_pairs(folder: str, size: int = 16) -> str:
    """Writes a small judged-pairs file in the filter's format: for each caption "a <colour> square", the chosen image
    shows that colour, the rejected one another; returns the pairs file's path."""
    names = list(COLOURS)
    with open(os.path.join(folder, "pairs.jsonl"), "w", encoding="utf-8") as out:
        for i, colour in enumerate(names):
            other = names[(i + 1) % len(names)]
            files = {}
            for role, fill in (("chosen", colour), ("rejected", other)):
                pixels = np.full((size, size, 3), 245, dtype=np.uint8)
                lo, hi = size // 4 + i % 2, 3 * size // 4 + i % 2
                pixels[lo:hi, lo:hi] = COLOURS[fill]
                files[f"{role}_image"] = f"{i}_{role}.png"
                Image.fromarray(pixels).save(os.path.join(folder, f"{i}_{role}.png"))
            out.write(json.dumps({"caption": f"a {colour} square", **files}) + "\n")
    return os.path.join(folder, "pairs.jsonl")


def train(pairs: List[Pair], steps: int, batch_size: int, size: int, beta: float, lr: float, seed: int,
          log=print) -> List[Dict[str, float]]:  # fmt: skip
    """Aligns a fresh tiny UNet on the pairs for `steps` steps, cycling through them in file order."""
    trainer = make_trainer(size, beta, lr, seed)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for step in range(steps):
        batch = [pairs[(step * batch_size + i) % len(pairs)] for i in range(batch_size)]
        metrics = trainer.step(*load_batch(batch, size), generator)
        history.append(metrics)
        log(f"step {step + 1}: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return history


def main(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", help="the filter's pairs JSONL (caption, chosen_image, rejected_image); "
                        "default: draw a few")  # fmt: skip
    parser.add_argument("--media-folder", help="the folder image paths are relative to; default the pairs file's")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--size", type=int, default=16, help="image side the UNet works at")
    parser.add_argument("--beta", type=float, default=5000.0, help="the paper's β (diffusers' --beta_dpo × 2)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.size % 2:
        parser.error("--size must be even (the UNet halves it once)")
    run = lambda pairs: train(pairs, args.steps, args.batch_size, args.size, args.beta, args.lr, args.seed)
    if args.pairs:
        return run(read_pairs(args.pairs, args.media_folder))
    with tempfile.TemporaryDirectory() as folder:
        return run(read_pairs(draw_demo_pairs(folder, args.size)))


if __name__ == "__main__":
    main()
