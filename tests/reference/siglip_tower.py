"""Float64 reference for the SigLIP vision tower (src/model/siglip): tiny random SiglipVisionModel checkpoints, the
selected layer's hidden states for random pixels, and the gradient of a fixed random projection of those features
with respect to every parameter the selected layers use and to the pixels.

Each model is built from a config (no hub access), its parameters drawn at random (the default init leaves norms at
one and biases at zero, which would hide a loader that mixes them up), saved with save_pretrained (safetensors,
under `vision_model.`), loaded back and converted to float64 (exact from the stored f32/bf16). Stock transformers
computes the eager attention softmax in float32 even for a float64 model; this script swaps in a float64 softmax with
the same formula and asserts that stock transformers agrees to float32 accuracy.

Run with the torch venv:
    ~/.cache/unireward/torch-venv/bin/python tests/reference/siglip_tower.py
Writes tests/fixtures/siglip/<case>/ (config.json, model.safetensors, reference.safetensors; rerunning writes
identical bytes). reference.safetensors holds:
- feature_layer int64 [] (transformers' vision_feature_layer: an index into hidden_states, 0 = the embeddings) and
  layers int64 [] (the encoder layers that produce it).
- pixel_values float64 [2, C, S, S] (standard normal).
- features float64 [2, P, hidden] = hidden_states[feature_layer], never post-normed (see check_against_transformers:
  transformers 4.57.1 post-norms hidden_states[-1], unlike the LLaVA-NeXT tower and other transformers releases).
- projection float64 [2, P, hidden] (standard normal); loss = sum(features * projection).
- grad.<name> float64 for every parameter with a gradient, named relative to `vision_model.` (the embeddings and the
  first `layers` encoder layers; later layers, post_layernorm and the head get none), and grad.pixel_values.
"""

import hashlib
import os
import shutil
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import SiglipVisionConfig, SiglipVisionModel
from transformers.models.siglip import modeling_siglip

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "siglip")
PREFIX = "vision_model."
IMAGES = 2

# name: (config, stored dtype, vision_feature_layer)
CASES = {
    # The LLaVA-NeXT convention on a small scale: 3 stored layers and the head, features of layer -2 (2 layers run);
    # 16×16 images in 4×4 patches.
    "select_minus2": (dict(hidden_size=24, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                           image_size=16, patch_size=4), torch.float32, -2),
    # The Hugging Face llava_onevision convention: no head, every stored layer runs (-1); a 23×23 image in 5×5
    # patches leaves 3 pixel rows and columns unread (as 384 = 27·14 + 6 does for so400m); stored in bf16.
    "ragged_bf16": (dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                         image_size=23, patch_size=5, vision_use_head=False), torch.bfloat16, -1),
}

STOCK = modeling_siglip.eager_attention_forward


def eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' eager attention without the float32 softmax."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def hidden_states(model, pixels):
    """The embeddings and each encoder layer's output, none post-normed (what LLaVA reads)."""
    vision = model.vision_model
    states = [vision.embeddings(pixels)]
    for layer in vision.encoder.layers:
        states.append(layer(states[-1], None))
    return states


def check_against_transformers(model, pixels, states):
    """transformers' own hidden_states equal ours, except that 4.57.1 replaces the last entry by last_hidden_state,
    which is post-normed (check_model_inputs; huggingface/transformers#40964, fixed by #40994 in later releases):
    the LLaVA-NeXT tower and earlier and later transformers read the last layer's output before post_layernorm."""
    with torch.no_grad():
        theirs = model(pixel_values=pixels, output_hidden_states=True).hidden_states
        assert len(theirs) == len(states)
        for i, (a, b) in enumerate(zip(theirs[:-1], states[:-1])):
            assert torch.equal(a, b), i
        last = theirs[-1]
        if not torch.equal(last, states[-1]):
            assert torch.equal(last, model.vision_model.post_layernorm(states[-1]))
            print("  (this transformers post-norms hidden_states[-1]; the reference does not)", file=sys.stderr)


def make_case(name, seed):
    overrides, dtype, feature_layer = CASES[name]
    torch.manual_seed(seed)
    config = SiglipVisionConfig(**overrides, attn_implementation="eager")
    model = SiglipVisionModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    out_dir = os.path.join(FIXTURES, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    model.to(dtype).save_pretrained(out_dir)

    model = SiglipVisionModel.from_pretrained(out_dir, attn_implementation="eager").to(torch.float64).eval()
    layers = feature_layer % (config.num_hidden_layers + 1)
    g = torch.Generator().manual_seed(100 + seed)
    side = config.image_size
    pixels = torch.randn(IMAGES, config.num_channels, side, side, generator=g, dtype=torch.float64)
    patches = (side // config.patch_size) ** 2
    projection = torch.randn(IMAGES, patches, config.hidden_size, generator=g, dtype=torch.float64)

    modeling_siglip.eager_attention_forward = eager_attention
    pixels.requires_grad_()
    feats = hidden_states(model, pixels)[feature_layer]
    assert feats.shape == projection.shape, feats.shape
    (feats * projection).sum().backward()
    out = {
        "feature_layer": torch.tensor(feature_layer),
        "layers": torch.tensor(layers),
        "pixel_values": pixels.detach(),
        "features": feats.detach(),
        "projection": projection,
        "grad.pixel_values": pixels.grad,
    }
    used = {"embeddings.", *(f"encoder.layers.{i}." for i in range(layers))}
    for param_name, param in model.named_parameters():
        name_in_tower = param_name.removeprefix(PREFIX)
        if any(name_in_tower.startswith(u) for u in used):
            out[f"grad.{name_in_tower}"] = param.grad
        else:
            assert param.grad is None or not param.grad.any(), param_name

    check_against_transformers(model, pixels.detach(), hidden_states(model, pixels.detach()))
    modeling_siglip.eager_attention_forward = STOCK
    with torch.no_grad():
        stock = hidden_states(model, pixels.detach())[feature_layer]
    stock_err = ((stock - out["features"]).abs().max() / out["features"].abs().max()).item()
    assert stock_err < 1e-5, stock_err

    out = {k: v.detach().contiguous() for k, v in out.items()}
    path = os.path.join(out_dir, "reference.safetensors")
    save_file(out, path)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    sizes = {f: os.path.getsize(os.path.join(out_dir, f)) for f in sorted(os.listdir(out_dir))}
    print(f"{name}: layers {layers}, {sizes}, reference sha256 {digest}, "
          f"max|feature| {out['features'].abs().max().item():.4g}, stock-vs-float64 {stock_err:.2e}",
          file=sys.stderr)


def main():
    torch.set_num_threads(1)
    for seed, name in enumerate(CASES):
        make_case(name, seed)


if __name__ == "__main__":
    main()
