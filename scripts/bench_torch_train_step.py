#!/usr/bin/env python3
"""A whole SFT training step in PyTorch eager: the baseline for `unireward bench train`.

One step is what a transformers + torch training loop does: optimizer.zero_grad() (set_to_none, torch's default),
model(..., labels).loss (transformers shifts the labels; [T, V] f32 logits and cross-entropy), loss.backward(),
torch.nn.utils.clip_grad_norm_(params, 1.0), torch.optim.AdamW(lr 1e-5, weight decay 0.01, fused=True where torch
has the fused CPU kernel, else foreach).step(); f32, N sequences of T random text tokens, every one labelled.

- Qwen2 (default): Qwen2ForCausalLM built from its config at Qwen2-0.5B's shapes (hidden 896, --layers layers,
  14/2 heads, intermediate 4864, vocabulary --vocab, tied embeddings), transformers' init, no download.
- LLaVA-OneVision (--llava DIR): a checkpoint with bench_inputs.safetensors; --save DIR first writes a random one at
  LLaVA-OneVision-0.5B's shapes (scripts/bench_torch_llava.py's, 26 tower layers) whose batch is one --image HxW
  image (anyres: random pixels in the tiles its size takes) between 32 and T - 32 random text tokens.
  --freeze-vision leaves the tower untrained (requires_grad False: no gradients, no optimizer state for it).
  --gradient-checkpointing recomputes each layer in the backward (transformers' gradient_checkpointing_enable).

    python scripts/bench_torch_train_step.py --t 512                      # Qwen2-0.5B shapes
    unireward bench train --t 512                                         # unireward's side
    python scripts/bench_torch_train_step.py --save /tmp/llava-0.5b --freeze-vision
    unireward bench train --model /tmp/llava-0.5b --freeze vision

Time: the median (and minimum) of --iters steps after one warm-up step. Memory: the peak resident set (VmHWM, reset
once the model and inputs exist, so building the model is not counted) while stepping, which holds the
parameters, their gradients, the optimizer's moments and the step's activations.
"""

import argparse
import os
import types

from bench_torch_llava import INPUTS_FILE, make_checkpoint, timing_row
from bench_torch_qwen2 import status_kib, time_pass

PROMPT_TOKENS = 32  # text tokens before the image (as `unireward bench train`)


def qwen2_model(args):
    """The random Qwen2 and its batch (ids, labels)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=args.vocab, hidden_size=896, intermediate_size=4864, num_hidden_layers=args.layers,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32_768,
                         rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, use_cache=False,
                         attn_implementation=args.attn)
    model = Qwen2ForCausalLM(config).float()
    ids = torch.randint(0, config.vocab_size, (args.n, args.t))
    return model, {"input_ids": ids, "labels": ids}


def llava_model(args):
    """The LLaVA-OneVision checkpoint of --llava and its batch, N copies of the saved row."""
    import torch
    from safetensors.torch import load_file
    from transformers import LlavaOnevisionForConditionalGeneration

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(args.llava, torch_dtype=torch.float32,
                                                                   attn_implementation=args.attn)
    model.model.vision_tower.vision_model.post_layernorm.forward = lambda x: x  # transformers issue 40964
    if args.freeze_vision:
        model.model.vision_tower.requires_grad_(False)
    inputs = load_file(os.path.join(args.llava, INPUTS_FILE))
    ids = inputs["input_ids"].repeat(args.n, 1)
    return model, {
        "input_ids": ids,
        "labels": ids.masked_fill(ids == model.config.image_token_index, -100),
        "pixel_values": inputs["pixel_values"][None].repeat(args.n, 1, 1, 1, 1),
        "image_sizes": inputs["image_size"][None].repeat(args.n, 1),
    }


def adamw(params):
    """torch.optim.AdamW with the fused CPU kernel where this torch has it, else foreach; and its name."""
    import torch

    for variant in ("fused", "foreach"):
        try:
            return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, **{variant: True}), variant
        except (RuntimeError, TypeError, ValueError):
            continue
    raise RuntimeError("torch.optim.AdamW has neither fused nor foreach here")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1, help="sequences per step")
    p.add_argument("--t", type=int, default=512, help="text tokens per sequence")
    p.add_argument("--layers", type=int, default=24, help="Qwen2 decoder layers (Qwen2-0.5B: 24)")
    p.add_argument("--vocab", type=int, default=151_936, help="Qwen2 vocabulary (Qwen2-0.5B's by default)")
    p.add_argument("--llava", help="a LLaVA-OneVision checkpoint with bench_inputs.safetensors (default: --save's)")
    p.add_argument("--save", help="write a random LLaVA-OneVision-0.5B-shaped checkpoint and batch here first")
    p.add_argument("--image", default="384x384", help="the image's HxW (--save)")
    p.add_argument("--freeze-vision", action="store_true", help="leave the LLaVA vision tower untrained")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each layer in the backward (unireward's --recompute)")
    p.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="transformers' attention")
    p.add_argument("--iters", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.save:
        image = tuple(int(v) for v in args.image.lower().split("x"))
        make_checkpoint(types.SimpleNamespace(save=args.save, image=image, prompt=PROMPT_TOKENS,
                                             answer=args.t - PROMPT_TOKENS, text_layers=24, vision_layers=26))
        args.llava = args.save
    model, batch = llava_model(args) if args.llava else qwen2_model(args)
    model.train()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, variant = adamw(params)

    def step():
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return loss

    rss_before = status_kib("VmRSS")
    r = time_pass(step, args.iters, torch.device("cpu"))
    peak = status_kib("VmHWM")
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in params)
    what = f"LLaVA-OneVision from {args.llava}" if args.llava else f"Qwen2 ({args.layers} layers, vocab {args.vocab})"
    n, t = batch["input_ids"].shape
    print(f"PyTorch eager training step, {what}, {total / 1e6:.1f}M parameters, {trained / 1e6:.1f}M trained; f32, "
          f"{args.attn} attention, AdamW({variant}=True){', gradient checkpointing' * args.gradient_checkpointing}; "
          f"N = {n}, T = {t}; median of {args.iters} steps after a warm-up")
    print(f"{'step':<26} {'median':>10} {'min':>10} {'tokens/s':>10} {'peak RSS':>12} {'loss':>9}")
    print(timing_row("training step", r, n * t, f"{peak / 2**30:.2f} GiB", r["result"].item()))
    print(f"resident before the first step {rss_before / 2**30:.2f} GiB; torch {r['torch']}, {r['device']}"
          + ("" if r["peak_reset"] else " (peak not reset: VmHWM includes building the model)"))


if __name__ == "__main__":
    main()
