"""Float64 fixtures for LLaVA-OneVision's projector and feature packing, made by transformers 4.57.1's own code.

The projector is `LlavaOnevisionMultiModalProjector`; the packing calls `LlavaOnevisionModel.pack_image_features`
and `LlavaOnevisionModel.apply_pooling` on a stand-in `self` that carries only a tiny `LlavaOnevisionConfig` (no
vision tower or language model is built: the vision features are random inputs), and the scatter repeats
`LlavaOnevisionModel.forward`'s lines: the images' packed features (concatenated) `masked_scatter`ed at the image
token, each video's frames pooled, flattened and followed by one `image_newline`, then `masked_scatter`ed at the
video token. The loss is a fixed random linear function of the resulting embeddings, sum(R * embeds); gradients by
autograd for the vision features (the projector's input), the projector's weights, `image_newline` and the token
embedding table.

Run: python tests/reference/llava_packing.py  (writes tests/fixtures/llava_packing/*.json)
"""
import json
import math
import pathlib
import types

import torch
from transformers import LlavaOnevisionConfig
from transformers.models.llava_onevision.modeling_llava_onevision import (
    LlavaOnevisionModel,
    LlavaOnevisionMultiModalProjector,
    image_size_to_num_patches,
)

OUT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "llava_packing"
C_VISION, HIDDEN, VOCAB, IMAGE, VIDEO, PAD = 4, 3, 12, 10, 11, 0
flat = lambda x: x.detach().reshape(-1).tolist()
# A parameter that no packed row reads (a text-only batch) has no .grad: its gradient is zero.
grad = lambda p: flat(p.grad if p.grad is not None else torch.zeros_like(p))


def config(tile, patch, pinpoints, aspect, select):
    return LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=C_VISION, image_size=tile, patch_size=patch,
                           num_hidden_layers=1, num_attention_heads=1, intermediate_size=4),
        text_config=dict(model_type="qwen2", hidden_size=HIDDEN, vocab_size=VOCAB, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, intermediate_size=4),
        image_grid_pinpoints=pinpoints, vision_aspect_ratio=aspect, vision_feature_select_strategy=select,
        image_token_index=IMAGE, video_token_index=VIDEO, projector_hidden_act="gelu")


PINPOINTS = [[h, w] for h in (8, 16, 24) for w in (8, 16, 24)]


def case(name, media, samples, tile=8, patch=2, aspect="anyres_max_9", select="full", seed=0):
    """`media`: ("image", (h, w)) or ("video", frames), in token order; a sample with exactly one image takes the
    anyres tiles, images of a sample with several take one tile each (transformers' `batch_num_images`).
    `samples`: per sample, a list of text token counts and media markers ("m") in order; padded on the right."""
    g = torch.Generator().manual_seed(seed)
    cfg = config(tile, patch, PINPOINTS, aspect, select)
    me = types.SimpleNamespace(config=cfg)
    side = tile // patch
    rows = side * side + (1 if select == "default" else 0)
    # Which sample each image belongs to, for the one-image-per-sample rule.
    owner = []
    for s in samples:
        for part in s:
            if part == "m":
                owner.append(samples.index(s))
    images_in = {i: sum(1 for (kind, _), o in zip(media, owner) if kind == "image" and o == i) for i in range(len(samples))}
    tiles = []
    for (kind, arg), o in zip(media, owner):
        if kind == "image":
            tiles.append(image_size_to_num_patches(arg, PINPOINTS, tile) if images_in[o] == 1 else 1)
        else:
            tiles.append(arg)
    x = torch.randn(sum(tiles), rows, C_VISION, generator=g, dtype=torch.float64).requires_grad_()
    proj = LlavaOnevisionMultiModalProjector(cfg).double()
    with torch.no_grad():
        for p in proj.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    newline = (torch.randn(HIDDEN, generator=g, dtype=torch.float64)).requires_grad_()
    table = torch.randn(VOCAB, HIDDEN, generator=g, dtype=torch.float64).requires_grad_()

    selected = x[:, 1:] if select == "default" else x
    feats = proj(selected)
    image_parts, image_sizes, video_parts, start = [], [], [], 0
    for (kind, arg), n in zip(media, tiles):
        part = feats[start:start + n]
        start += n
        if kind == "image":
            image_parts.append(part)
            image_sizes.append(list(arg))
        else:
            pooled = LlavaOnevisionModel.apply_pooling(me, part)
            pooled = pooled.reshape(1, n * pooled.shape[1], -1)
            pooled = torch.cat((pooled, newline[None, None, :]), dim=1)
            video_parts.append(pooled.flatten(0, 1))
    lengths = []
    packed_images = None
    if image_parts:
        packed, lens = LlavaOnevisionModel.pack_image_features(
            me, image_parts, torch.tensor(image_sizes), image_newline=newline, vision_aspect_ratio=aspect)
        lengths = lens.tolist()
        packed_images = torch.cat(packed, dim=0)
    video_lengths = [v.shape[0] for v in video_parts]

    # Token ids: text tokens random in [1, IMAGE), media expanded to their packed lengths, padding on the right.
    all_lengths = iter([("image", l) for l in lengths])
    all_videos = iter(video_lengths)
    seqs, m = [], iter(media)
    for s in samples:
        seq = []
        for part in s:
            if part == "m":
                kind, _ = next(m)
                if kind == "image":
                    seq += [IMAGE] * next(all_lengths)[1]
                else:
                    seq += [VIDEO] * next(all_videos)
            else:
                seq += torch.randint(1, IMAGE, (part,), generator=g).tolist()
        seqs.append(seq)
    t = max(len(s) for s in seqs)
    ids = torch.tensor([s + [PAD] * (t - len(s)) for s in seqs])

    embeds = table[ids]
    if packed_images is not None:
        mask = (ids == IMAGE)[..., None].expand_as(embeds)
        embeds = embeds.masked_scatter(mask, packed_images)
    if video_parts:
        mask = (ids == VIDEO)[..., None].expand_as(embeds)
        embeds = embeds.masked_scatter(mask, torch.cat(video_parts, dim=0))
    r = torch.randn(embeds.shape, generator=g, dtype=torch.float64)
    (embeds * r).sum().backward()

    out = dict(
        tile=tile, patch=patch, pinpoints=PINPOINTS, aspect=aspect, select=select, image_token=IMAGE,
        video_token=VIDEO, vocab=VOCAB, hidden=HIDDEN, c_vision=C_VISION,
        media=[{"kind": kind, "size": list(arg) if kind == "image" else None, "tiles": n}
               for (kind, arg), n in zip(media, tiles)],
        image_lengths=lengths, video_lengths=video_lengths,
        x_shape=list(x.shape), ids_shape=list(ids.shape), ids=flat(ids),
        x=flat(x), w1=flat(proj.linear_1.weight), b1=flat(proj.linear_1.bias), w2=flat(proj.linear_2.weight),
        b2=flat(proj.linear_2.bias), newline=flat(newline), table=flat(table), r=flat(r), embeds=flat(embeds),
        grad_x=grad(x), grad_w1=grad(proj.linear_1.weight), grad_b1=grad(proj.linear_1.bias),
        grad_w2=grad(proj.linear_2.weight), grad_b2=grad(proj.linear_2.bias), grad_newline=grad(newline),
        grad_table=grad(table),
    )
    (OUT / f"{name}.json").write_text(json.dumps(out))
    print(f"{name}: media {out['media']}, image rows {lengths}, video rows {video_lengths}, ids {list(ids.shape)}")
    return out


def grid_rows(size, tile=8, patch=2):
    """The unpadded grid transformers keeps, to check a case exercises what it is meant to."""
    from transformers.image_processing_utils import select_best_resolution
    from transformers.models.llava_onevision.modeling_llava_onevision import unpad_image
    h, w = select_best_resolution(size, PINPOINTS)
    side = tile // patch
    grid = torch.zeros(1, h // tile * side, w // tile * side)
    return grid.shape[1:], unpad_image(grid, list(size)).shape[1:]


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    # Wider and taller than their grid: unpadding cuts rows, then columns; anyres_max_9 does not down-sample.
    for name, size in [("wide_unpad", (9, 20)), ("tall_unpad", (20, 9))]:
        full, kept = grid_rows(size)
        assert kept != full, (name, full, kept)
        case(name, [("image", size)], [[3, "m", 2]], seed=1)
    # A 3x3 grid (12x12 patches) under anyres_max_1: ratio = sqrt(h*w / 16) > 1.1, down-sampled.
    full, kept = grid_rows((23, 21))
    assert math.sqrt(kept[0] * kept[1] / 16) > 1.1 and kept != full, kept
    case("downsample", [("image", (23, 21))], [[2, "m", 3]], aspect="anyres_max_1", seed=2)
    # Two images in one sample: a tile each, with the `default` selection (the first feature row dropped).
    case("two_images", [("image", (7, 9)), ("image", (12, 5))], [[2, "m", 1, "m", 2]], select="default", seed=3)
    # 47 high x 188 wide on a 1x3 tile grid (4x12 patches): the unpadded height is 4 * 188/47... = 2.9999999999999996
    # in floats; transformers' int(round(x, 7)) keeps 3 (no rows cut), LLaVA-NeXT's int(x) 2 (one row cut at each end).
    out = case("unpad_rounding", [("image", (47, 188))], [[1, "m", 1]], seed=8)
    x = 47 * (12 / 188)
    assert int(round(x, 7)) == 3 and int(x) == 2
    kept_llava_next = 4 - 2 * ((4 - int(x)) // 2)
    out["llava_next_image_rows"] = 16 + kept_llava_next * 13
    (OUT / "unpad_rounding.json").write_text(json.dumps(out))
    case("video_even", [("video", 4)], [[2, "m", 3]], seed=4)
    case("video_odd", [("video", 4)], [[1, "m", 2]], tile=10, seed=5)
    case("text_only", [], [[7], [4]], seed=6)
    case("batch_mixed", [("image", (9, 20)), ("image", (7, 9)), ("image", (12, 5)), ("video", 2)],
         [[2, "m", 4], [1, "m", "m", 2], [3, "m", 1], [5]], seed=7)
