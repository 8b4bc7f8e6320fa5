#!/usr/bin/env python3
"""The whole LLaVA-OneVision reward model in PyTorch eager (transformers' LlavaOnevisionForConditionalGeneration):
the baseline for `unireward bench llava`.

`--save DIR` first writes a checkpoint with random weights (transformers' init, seed 0) at LLaVA-OneVision-0.5B's
shapes — Qwen2-0.5B (hidden 896, 24 layers, 14/2 heads, intermediate 4864, vocab 152,000, tied embeddings) and the
SigLIP-so400m tower as the Hugging Face conversion stores it (26 layers, hidden 1152, feature layer -1), anyres_max_9
over the 6×6 grid of 384-pixel pinpoints — and beside it `bench_inputs.safetensors`: one image of --image HxW
(random pixels in the tiles its size takes), --prompt random text tokens, the image's placeholders (as many as
transformers packs it into) and --answer random tokens. Then both sides run the same batch from the same files:

    python scripts/bench_torch_llava.py --save /tmp/llava-0.5b          # makes the model, then times PyTorch
    cargo run --release -- bench llava --model /tmp/llava-0.5b          # unireward on the same model and batch

Two passes, each in its own subprocess so that its peak memory is its own (the growth of the peak resident set over
the resident set once the model and inputs exist, or torch.cuda.max_memory_allocated() on CUDA):

- forward + loss:            model(input_ids, pixel_values, image_sizes, labels) under no_grad, the labels the ids
                             with the placeholders at -100 (transformers shifts them);
- forward + loss + backward: the same with grad, then loss.backward() into fresh gradients; with
                             --gradient-checkpointing, transformers' checkpointing of every decoder and encoder layer
                             (the match for `unireward bench llava --recompute`; at full depth PyTorch's activations
                             do not fit in 24 GiB without it).

Times are the median of --iters runs after one warm-up. The loss printed must equal unireward's: as in
tests/reference/llava_onevision_model.py, SigLIP's post-layernorm is made the identity, since transformers 4.57.1
hands its output out as `hidden_states[-1]` (transformers issue 40964) where LLaVA-NeXT, which trained these
checkpoints, reads the last encoder layer's output (one LayerNorm less work for PyTorch).
"""

import argparse
import json
import os
import subprocess
import sys

from bench_torch_qwen2 import time_pass

INPUTS_FILE = "bench_inputs.safetensors"


def make_checkpoint(args):
    """Writes the random model and the batch into args.save."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config
    from transformers import SiglipVisionConfig
    from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

    torch.manual_seed(0)
    text = Qwen2Config(vocab_size=152000, hidden_size=896, intermediate_size=4864, num_hidden_layers=args.text_layers,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                       rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True)
    vision = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=args.vision_layers,
                                num_attention_heads=16, image_size=384, patch_size=14, vision_use_head=False)
    pinpoints = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
    config = LlavaOnevisionConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                  image_token_index=151646, video_token_index=151647, vision_feature_layer=-1,
                                  vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                                  image_grid_pinpoints=pinpoints, tie_word_embeddings=True)
    model = LlavaOnevisionForConditionalGeneration(config).float().eval()
    model.save_pretrained(args.save, safe_serialization=True)

    height, width = args.image
    tiles = image_size_to_num_patches((height, width), pinpoints, 384)
    pixel_values = torch.randn(tiles, 3, 384, 384)
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values[None], torch.tensor([[height, width]]))
    image_tokens = sum(f.shape[0] for f in features)  # one tensor per image
    words = lambda n: torch.randint(0, 151643, (n,))  # ordinary tokens, below the special ones
    ids = torch.cat([words(args.prompt), torch.full((image_tokens,), 151646), words(args.answer)])[None]
    save_file({"input_ids": ids, "pixel_values": pixel_values, "image_size": torch.tensor([height, width])},
              os.path.join(args.save, INPUTS_FILE))
    print(f"wrote {args.save}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; one "
          f"{height}x{width} image in {tiles} tiles, {image_tokens} image tokens, T = {ids.shape[1]}")


def measure(args):
    """One pass's measurement in this process; prints a JSON line."""
    import torch
    from safetensors.torch import load_file
    from transformers import LlavaOnevisionForConditionalGeneration

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(args.model, torch_dtype=dtype,
                                                                   attn_implementation=args.attn).to(device)
    model.train(False)
    if args.gradient_checkpointing:
        # transformers checkpoints only in training mode; these configs have no dropout, so the loss is unchanged.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train(True)
    model.model.vision_tower.vision_model.post_layernorm.forward = lambda x: x  # transformers issue 40964
    inputs = load_file(os.path.join(args.model, INPUTS_FILE))
    ids = inputs["input_ids"].to(device)
    labels = ids.masked_fill(ids == model.config.image_token_index, -100)
    pixel_values = inputs["pixel_values"].to(device, dtype)[None]
    image_sizes = inputs["image_size"].to(device)[None]
    def once():
        if args.mode == "fwd":
            with torch.no_grad():
                return model(input_ids=ids, pixel_values=pixel_values, image_sizes=image_sizes, labels=labels).loss
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, pixel_values=pixel_values, image_sizes=image_sizes, labels=labels).loss
        loss.backward()
        return loss

    r = time_pass(once, args.iters, device)
    print(json.dumps({**r, "result": None, "loss": r["result"].item(), "tokens": ids.shape[1]}))


def timing_row(label, r, tokens, memory, loss):
    """A table row of a time_pass result: the label, median and minimum time, tokens per second, memory (text) and
    loss, under the header these scripts print."""
    return (f"{label:<26} {r['median_s']:>8.3f} s {r['min_s']:>8.3f} s {tokens / r['median_s']:>10.0f} "
            f"{memory:>12} {loss:>9.4f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a checkpoint with bench_inputs.safetensors (default: --save's)")
    p.add_argument("--save", help="write the random LLaVA-OneVision-0.5B-shaped checkpoint and batch here first")
    p.add_argument("--image", default="384x384", help="the image's HxW (--save)")
    p.add_argument("--prompt", type=int, default=32, help="text tokens before the image (--save)")
    p.add_argument("--answer", type=int, default=256, help="text tokens after the image (--save)")
    p.add_argument("--text-layers", type=int, default=24, help="language model layers (--save)")
    p.add_argument("--vision-layers", type=int, default=26, help="vision tower layers (--save)")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="transformers' attention")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--iters", type=int, default=2, help="timed runs after one warm-up")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each layer in the backward (transformers' gradient checkpointing)")
    p.add_argument("--mode", choices=["fwd", "fwdbwd"], help=argparse.SUPPRESS)
    args = p.parse_args()
    args.image = tuple(int(v) for v in args.image.lower().split("x"))
    if args.mode:
        measure(args)
        return
    if args.save:
        make_checkpoint(args)
    args.model = args.model or args.save
    if not args.model:
        sys.exit("give --model DIR (made by --save) or --save DIR")
    print(f"PyTorch eager, LlavaOnevisionForConditionalGeneration from {args.model}, {args.dtype} on {args.device}, "
          f"{args.attn} attention; median of {args.iters} runs after a warm-up, each pass in its own process")
    print(f"{'pass':<26} {'median':>10} {'min':>10} {'tokens/s':>10} {'peak extra':>12} {'loss':>9}")
    for mode, label in [("fwd", "forward + loss (no_grad)"), ("fwdbwd", "forward + loss + backward")]:
        cmd = [sys.executable, __file__, "--mode", mode, "--model", args.model, "--dtype", args.dtype,
               "--attn", args.attn, "--device", args.device, "--iters", str(args.iters),
               "--threads", str(args.threads)] + (["--gradient-checkpointing"] if args.gradient_checkpointing else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{mode} on {args.device} failed: {proc.stderr.strip().splitlines()[-1:]}")
        r = json.loads(proc.stdout.splitlines()[-1])
        print(timing_row(label, r, r["tokens"], f"{r['extra_bytes'] / 2**20:.1f} MiB", r["loss"]))
    print(f"torch {r['torch']}, {r['device']}"
          + ("" if r["peak_reset"] else " (peak memory not reset: VmHWM includes building the model)"))


if __name__ == "__main__":
    main()
