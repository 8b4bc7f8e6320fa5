"""Float64 reference for the SFT trainer on LLaVA-OneVision: 10 optimizer steps on the tiny model of
tests/fixtures/llava/hf, each over two micro-batches of two rows (gradient accumulation), rows drawn from the
fixture's media cases (one image taking the anyres path, one down-sampled by anyres_max_4, two images in one sample,
a video of 4 frames, text only), the loss on a random suffix of each row's words only, the mean over all labelled
tokens of the step, torch.optim.AdamW + clip_grad_norm_ + transformers' cosine schedule with warm-up.

The model is transformers' LlavaOnevisionForConditionalGeneration in float64 with llava_onevision_model.py's float64
patches and its vision features before SigLIP's post-layernorm (as LLaVA-NeXT and unireward compute them); the
images and frames go through transformers' LlavaOnevisionImageProcessor, the placeholders are expanded by
LlavaOnevisionProcessor (the video's by the processor's formula), so the batches' ids are the processor's.

Run with the torch venv plus Pillow (as llava_onevision_model.py):
    pip install --target /tmp/pillow pillow==13.0.0   # 12 resizes in another pass order: not unireward's
    PYTHONPATH=/tmp/pillow ~/.cache/unireward/torch-venv/bin/python tests/reference/train_sft_llava.py
Writes tests/fixtures/train_sft_llava/steps.json (config, the micro-batches as SequenceBatch fields with each row's
media as paths relative to tests/fixtures/llava, per-step loss, tokens, grad norm, learning rate, per-task loss) and
final.safetensors (every trained parameter after the 10 steps, computed in float64 and stored in float32 to stay
small, under its checkpoint name).
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionImageProcessor, \
    get_cosine_schedule_with_warmup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llava_onevision_model import (IMAGE_ID, MAX_TILES, PATCHES_PER_TILE, VIDEO_ID, Processor,  # noqa: E402
                                   features_before_post_layernorm, float64_ops, parameter_name, tokenizer,
                                   video_pixels)

HERE = os.path.dirname(os.path.abspath(__file__))
LLAVA = os.path.join(HERE, "..", "fixtures", "llava")
OUT = os.path.join(HERE, "..", "fixtures", "train_sft_llava")
STEPS, MICRO, ROWS, TASKS = 10, 2, 2, 2
FRAMES = 4
FROZEN = "k_proj.bias"
CONFIG = {"lr": 2e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "max_grad_norm": 1.0,
          "warmup_ratio": 0.1, "total_steps": STEPS, "tasks": TASKS, "frozen": FROZEN, "video_frames": FRAMES}
# Each case's media, relative to tests/fixtures/llava.
CASES = {
    "anyres": ["images/anyres_0.png"],
    "downsampled": ["images/downsampled_0.png"],
    "two_images": ["images/two_images_0.png", "images/two_images_1.png"],
    "video": ["video"],
    "text": [],
}


def words(g, n):
    return [f"w{int(i)}" for i in torch.randint(1, IMAGE_ID, (n,), generator=g)]


def row_text(g, case):
    """Random words around the case's placeholders (the video's already expanded), and the words after them that
    the loss learns."""
    pooled = -(-int(PATCHES_PER_TILE ** 0.5) // 2)
    video = ["<video>"] * (FRAMES * pooled * pooled + 1)
    markers = {"anyres": ["<image>"], "downsampled": ["<image>"], "two_images": ["<image>", "w5", "<image>"],
               "video": video, "text": []}[case]
    answer = words(g, int(torch.randint(2, 6, (1,), generator=g)))
    return " ".join(words(g, 2) + markers + words(g, 2) + answer), len(answer)


def micro_batch(g, processor):
    names = list(CASES)
    cases = [names[int(i)] for i in torch.randint(0, len(names), (ROWS,), generator=g)]
    texts, answers = zip(*(row_text(g, c) for c in cases))
    # Nested per sample, as the processor needs them to tell one image in a sample (anyres) from several (each
    # padded to a square).
    images = [[Image.open(os.path.join(LLAVA, p)).convert("RGB") for p in CASES[c]] for c in cases
              if CASES[c] and c != "video"]
    inputs = processor(images=images or None, text=list(texts), padding=True, return_tensors="pt",
                       return_token_type_ids=False)
    if "video" in cases:
        frames = [np.asarray(Image.open(os.path.join(LLAVA, "video", f"frame_{i}.png")).convert("RGB"))
                  for i in range(FRAMES)]
        inputs["pixel_values_videos"] = video_pixels(processor.image_processor, frames).repeat(cases.count("video"),
                                                                                                1, 1, 1, 1)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert inputs.get("batch_num_images", torch.tensor([])).tolist() == [len(x) for x in images]
    labels = torch.full_like(ids, -100)
    for r, n in enumerate(answers):
        length = int(mask[r].sum())
        labels[r, length - n:length] = ids[r, length - n:length]
    assert not ((labels == IMAGE_ID) | (labels == VIDEO_ID)).any()
    tasks = torch.randint(0, TASKS, (ROWS,), generator=g)
    batch = {"rows": ROWS, "len": ids.shape[1], "ids": ids.reshape(-1).tolist(), "mask": mask.reshape(-1).tolist(),
             "labels": labels.reshape(-1).tolist(), "tasks": tasks.tolist(),
             "media": [[{"kind": "video" if p == "video" else "image", "path": p} for p in CASES[c]] for c in cases]}
    return batch, inputs, labels


def row_nll(logits, labels):
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:]
    per_token = F.cross_entropy(logits.transpose(1, 2), shifted, ignore_index=-100, reduction="none")
    return per_token.sum(1), (shifted != -100).sum(1)


def main():
    torch.set_num_threads(1)
    hf = os.path.join(LLAVA, "hf")
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(hf, attn_implementation="eager")
    model = features_before_post_layernorm(model).to(torch.float64).train()
    float64_ops(True)
    processor = Processor(image_processor=LlavaOnevisionImageProcessor.from_pretrained(hf), tokenizer=tokenizer(),
                          video_processor=None, num_image_tokens=PATCHES_PER_TILE,
                          vision_feature_select_strategy="full", vision_aspect_ratio=f"anyres_max_{MAX_TILES}")
    g = torch.Generator().manual_seed(23)
    steps_in = [[micro_batch(g, processor) for _ in range(MICRO)] for _ in range(STEPS)]
    # The key biases get a gradient of pure rounding noise (softmax ignores a bias added to every key's score):
    # frozen. SigLIP's post-layernorm is unused (see features_before_post_layernorm): unireward does not hold it.
    trained = [(n, p) for n, p in model.named_parameters() if FROZEN not in n and "post_layernorm" not in n]
    for n, p in model.named_parameters():
        p.requires_grad_(FROZEN not in n and "post_layernorm" not in n)
    params = [p for _, p in trained]
    opt = torch.optim.AdamW(params, lr=CONFIG["lr"], betas=tuple(CONFIG["betas"]), eps=CONFIG["eps"],
                            weight_decay=CONFIG["weight_decay"], foreach=False)
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(STEPS * CONFIG["warmup_ratio"]), STEPS)
    steps = []
    for step in steps_in:
        opt.zero_grad()
        total = sum(int((labels[:, 1:] != -100).sum()) for _, _, labels in step)
        nll, task_nll, task_tokens = 0.0, [0.0] * TASKS, [0] * TASKS
        for batch, inputs, labels in step:
            args = {k: (v.double() if v.is_floating_point() else v) for k, v in inputs.items()}
            logits = model(**args).logits
            rows, counts = row_nll(logits, labels)
            (rows.sum() / total).backward()
            nll += rows.sum().item()
            for r, t in enumerate(batch["tasks"]):
                task_nll[t] += rows[r].item()
                task_tokens[t] += int(counts[r])
        # A parameter no micro-batch reached (the vision tower in a step without media) has a zero gradient in
        # unireward: AdamW still decays it and moves it by its moments, where torch would skip a None gradient.
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        lr = opt.param_groups[0]["lr"]
        norm = float(torch.nn.utils.clip_grad_norm_(params, CONFIG["max_grad_norm"]))
        opt.step()
        sched.step()
        steps.append({"loss": nll / total, "tokens": total, "grad_norm": norm, "lr": lr,
                      "task_loss": [l / n if n else None for l, n in zip(task_nll, task_tokens)]})
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "steps.json"), "w") as f:
        json.dump({"config": CONFIG, "batches": [[b for b, _, _ in s] for s in steps_in], "steps": steps}, f)
    # Under the checkpoint's names (transformers 4.57 saves legacy ones, language_model.model.*, and renames them
    # to the parameters' names when it loads).
    trained = dict(trained)
    stored = {parameter_name(k): k for k in load_file(os.path.join(hf, "model.safetensors"))}
    final = {stored[n]: p.detach().float().contiguous() for n, p in trained.items()}
    save_file(final, os.path.join(OUT, "final.safetensors"))
    os.chmod(os.path.join(OUT, "final.safetensors"), 0o644)
    print("losses", ["%.4f" % s["loss"] for s in steps], "norms", ["%.3f" % s["grad_norm"] for s in steps])


if __name__ == "__main__":
    main()
