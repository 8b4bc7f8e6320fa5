"""Loads a LLaVA-OneVision reward checkpoint written by unireward (src/train/reward/run.rs) in transformers and
compares its rewards with unireward's. transformers has no LLaVA-OneVision sequence classifier: the checkpoint is the
source's config and LLaVA weights plus `score.weight` [1, H], which LlavaOnevisionForConditionalGeneration reports as
its one unexpected key; the reward of a row is score.weight . h, h the language model's last hidden state (after its
final norm) at the row's last token, computed here from LlavaOnevisionModel's `last_hidden_state` with the image's
pixel values as unireward preprocessed them (tests/media.rs checks that preprocessing against transformers').

The vision features are read before SigLIP's post-layernorm, as LLaVA-NeXT and unireward read them (transformers
4.57.1 post-normalises them: see `features_before_post_layernorm` in llava_onevision_model.py, which asserts it).

Run (the Rust tests cannot start Python):
    UNIREWARD_REWARD_CHECKPOINT_OUT=/tmp/ur-rm-llava cargo test --release --test train_reward_llava -- run_on_images
    python tests/reference/train_reward_llava.py /tmp/ur-rm-llava     # torch + transformers 4.57.1, no Pillow
Outcome at the commit that added it (transformers 4.57.1, torch 2.10, CPU, float32): `score.weight` the one unexpected key,
max |transformers - unireward| = 2.094e-08 (rewards up to 0.040, spread 1.5e-02) over 4 rows.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import LlavaOnevisionForConditionalGeneration


def main(root):
    checkpoint = os.path.join(root, "checkpoint")
    model, info = LlavaOnevisionForConditionalGeneration.from_pretrained(
        checkpoint, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    assert info["unexpected_keys"] == ["score.weight"] and not info["missing_keys"], info
    model.eval()
    model.model.vision_tower.vision_model.post_layernorm.forward = lambda x: x
    score = load_file(os.path.join(checkpoint, "model.safetensors"))["score.weight"].double()
    with open(os.path.join(root, "expected.json")) as f:
        rows = json.load(f)
    got, want = [], []
    for row in rows:
        pixels = torch.tensor(row["pixel_values"], dtype=torch.float32).view(1, *row["pixel_shape"])
        with torch.no_grad():
            out = model.model(input_ids=torch.tensor([row["ids"]]), pixel_values=pixels,
                              image_sizes=torch.tensor([row["image_size"]]), batch_num_images=torch.tensor([1]))
        got.append((score @ out.last_hidden_state[0, -1].double()).item())
        want.append(row["reward"])
    got, want = torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64)
    err, scale = (got - want).abs().max().item(), want.abs().max().item()
    print("max |transformers - unireward| = %.3e (rewards up to %.3f, spread %.3e) over %d rows"
          % (err, scale, want.std().item(), len(rows)))
    assert want.std().item() > 0 and err <= 1e-5 * max(scale, 1e-3), (got, want)


if __name__ == "__main__":
    main(sys.argv[1])
