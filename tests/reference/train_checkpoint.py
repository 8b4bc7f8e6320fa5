"""Loads the checkpoints unireward's checkpoint writer saved (tests/train_checkpoint.rs, run with
UNIREWARD_CHECKPOINT_OUT=DIR) in transformers and checks that they give the logits unireward's in-memory model gave
(the weights were perturbed before saving, standing in for training), and that they differ from the untouched
source's.

Run by hand (the Rust tests cannot start Python):
    UNIREWARD_CHECKPOINT_OUT=/tmp/ur-ckpt cargo test --test train_checkpoint -- bit_for_bit
    ~/.cache/unireward/torch-venv/bin/python tests/reference/train_checkpoint.py /tmp/ur-ckpt

Outcome at the commit that added it (transformers 4.57.1, torch 2.10, CPU, float32), with no missing or unexpected
key reported by transformers:
    qwen2: max |transformers - unireward| = 2.980e-06 (logits up to 6.571); the source checkpoint differs by 9.958e-01
    llava: max |transformers - unireward| = 4.172e-06 (logits up to 6.044); the source checkpoint differs by 1.910e-01
(the llava checkpoint is the HF layout written in 8 shards with its index).
"""

import os
import sys

import torch
from safetensors.torch import load_file
from transformers import LlavaOnevisionForConditionalGeneration, Qwen2ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures")
TOLERANCE = 1e-5


def logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits.double()


def check(name, cls, written, source, expected_file):
    expected = load_file(expected_file)
    ids, mask = expected["ids"].long(), expected["mask"].long()
    want = expected["logits"].double()
    model = cls.from_pretrained(written, dtype=torch.float32).eval()
    got = logits(model, ids, mask)
    real = mask.bool()
    err = (got - want)[real].abs().max().item()
    scale = want[real].abs().max().item()
    original = logits(cls.from_pretrained(source, dtype=torch.float32).eval(), ids, mask)
    moved = (original - want)[real].abs().max().item()
    print(f"{name}: max |transformers - unireward| = {err:.3e} (logits up to {scale:.3f}); "
          f"the source checkpoint differs by {moved:.3e}")
    assert err <= TOLERANCE * max(1.0, scale), f"{name}: {err} > {TOLERANCE}"
    assert moved > 1e-3, f"{name}: the written checkpoint gives the source's logits: the perturbation was not saved"


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.environ["UNIREWARD_CHECKPOINT_OUT"]
    check("qwen2", Qwen2ForCausalLM, os.path.join(out, "qwen2"), os.path.join(FIXTURES, "qwen2", "gqa_untied"),
          os.path.join(out, "qwen2_logits.safetensors"))
    check("llava", LlavaOnevisionForConditionalGeneration, os.path.join(out, "llava"),
          os.path.join(FIXTURES, "llava", "hf"), os.path.join(out, "llava_logits.safetensors"))


if __name__ == "__main__":
    main()
