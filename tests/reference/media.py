"""Fixtures for tests/media.rs: what transformers' LlavaOnevisionImageProcessor (the slow, PIL-based processor) makes
of images, and what PIL decodes from small image files.

Run with the torch venv plus Pillow (the processor needs it; the venv's pins do not carry it), once with Pillow 13
and once with Pillow 12 (Pillow 13 changed the order of the resampling passes for some sizes; both are checked):
    pip install --target /tmp/pillow pillow==13.0.0 && pip install --target /tmp/pillow12 pillow==12.0.0
    PYTHONPATH=/tmp/pillow ~/.cache/unireward/torch-venv/bin/python tests/reference/media.py
    PYTHONPATH=/tmp/pillow12 ~/.cache/unireward/torch-venv/bin/python tests/reference/media.py
Pillow 13 writes tests/fixtures/media/: the small image files, expected.json, and *.f32 (raw little-endian float32
tensors); Pillow 12 writes pillow12.json and pillow12_*.f32 for the cases whose bytes depend on the pass order.

Processor inputs are synthetic: `pattern(width, height)` is an integer formula that tests/media.rs computes too, so
no large image is committed. Small configurations (16x16 tiles) are compared in full; the real 384x384 configuration
by a strided sample of the values plus two weighted sums over all of them (see `digest`).
"""

import io
import json
import os

import numpy as np
import PIL
import transformers
from PIL import Image
from transformers import LlavaOnevisionImageProcessor

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "media")

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
TINY_PINPOINTS = [[16 * r, 16 * c] for r in range(1, 4) for c in range(1, 4)]

# name: preprocessor_config.json contents (what a checkpoint ships)
CONFIGS = {
    "tiny_bicubic": dict(size={"height": 16, "width": 16}, image_grid_pinpoints=TINY_PINPOINTS, resample=3,
                         image_mean=CLIP_MEAN, image_std=CLIP_STD),
    "tiny_bilinear": dict(size={"height": 16, "width": 16}, image_grid_pinpoints=TINY_PINPOINTS, resample=2,
                          image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]),
    "tiny_lanczos": dict(size={"shortest_edge": 16}, image_grid_pinpoints=TINY_PINPOINTS, resample=1,
                         image_mean=CLIP_MEAN, image_std=CLIP_STD),
    # LLaVA-OneVision's own: SigLIP's 384 tiles, mean = std = 0.5, the 36 default grid pinpoints (1..6 x 1..6 tiles).
    "onevision": dict(size={"height": 384, "width": 384}, resample=3, image_mean=[0.5, 0.5, 0.5],
                      image_std=[0.5, 0.5, 0.5], do_pad=True, do_convert_rgb=True,
                      image_processor_type="LlavaOnevisionImageProcessor", rescale_factor=0.00392156862745098),
}

# (config, width, height, layout): "anyres" is a sample with one image, "square" one of several (pad to square).
IMAGE_CASES = [
    ("tiny_bicubic", 1, 1, "anyres"),
    ("tiny_bicubic", 7, 33, "anyres"),
    ("tiny_bicubic", 33, 7, "anyres"),
    ("tiny_bicubic", 40, 40, "anyres"),
    ("tiny_bicubic", 100, 37, "anyres"),
    ("tiny_bicubic", 17, 26, "anyres"),
    ("tiny_bicubic", 50, 17, "square"),
    ("tiny_bicubic", 17, 50, "square"),
    ("tiny_bilinear", 45, 29, "anyres"),
    ("tiny_lanczos", 29, 45, "anyres"),
    ("onevision", 500, 300, "anyres"),
    ("onevision", 300, 500, "anyres"),
    ("onevision", 7, 33, "anyres"),
    ("onevision", 500, 300, "square"),
]

# Video frames (sizes) resized plainly to the tile size, as the original LLaVA-OneVision code does with SigLIP's
# processor; the frame index selects the pattern's phase so that frames differ.
VIDEO_CASE = ("tiny_bicubic", [(20, 12), (9, 9), (31, 40), (16, 16)])

FULL_LIMIT = 40_000  # tensors up to this many values are stored whole

# Cases whose resizes take both passes with the height shrinking by more than twice the width (7x33 to 16x16):
# Pillow 12 and 13 give different bytes.
PILLOW12_CASES = [("tiny_bicubic", 7, 33, "anyres"), ("tiny_bicubic", 17, 26, "anyres")]


def pattern(width, height, phase=0):
    """The synthetic image both sides compute: edges, gradients and pseudo-noise, all in integers."""
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    v = (x * x * 3 + y * 5 + c * 71 + x * y + phase * 37 + ((x * 7919 + y * 104729 + c * 13) % 61) * 2) % 256
    return v.astype(np.uint8)


def digest(values):
    """A strided sample and two weighted sums (float64) that any one changed value moves far beyond rounding."""
    flat = values.astype(np.float64).ravel()
    i = np.arange(flat.size, dtype=np.float64)
    w1 = ((i * 7 + 3) % 97) / 97.0
    w2 = ((i * 13 + 5) % 89) / 89.0 - 0.5
    return dict(stride=1009, sample=[float(v) for v in flat[::1009]], sum1=float(flat @ w1), sum2=float(flat @ w2))


def store(name, values):
    """Small tensors whole (raw float32), large ones as a digest."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if values.size <= FULL_LIMIT:
        values.tofile(os.path.join(OUT, name + ".f32"))
        return dict(values=name + ".f32")
    return dict(digest=digest(values))


def processor(config):
    return LlavaOnevisionImageProcessor(**config)


def image_cases(cases_to_run=IMAGE_CASES, prefix=""):
    cases = []
    for config, width, height, layout in cases_to_run:
        image = Image.fromarray(pattern(width, height))
        # A sample with two images takes the pad-to-square path for each; the output holds one entry per image.
        images = [[image]] if layout == "anyres" else [[image, image]]
        # The channel axis is named: transformers cannot infer it for a 1x1x3 array.
        out = processor(CONFIGS[config])(images, return_tensors="np", do_pad=False, input_data_format="channels_last")
        pixels = out["pixel_values"][0]
        name = f"{prefix}{config}_{width}x{height}_{layout}"
        case = dict(name=name, config=config, width=width, height=height, layout=layout, shape=list(pixels.shape),
                    image_size=[int(s) for s in out["image_sizes"][0]])
        case.update(store(name, pixels))
        cases.append(case)
    return cases


def video_case():
    config, sizes = VIDEO_CASE
    proc = processor(CONFIGS[config])
    frames = [pattern(w, h, phase) for phase, (w, h) in enumerate(sizes)]
    size = CONFIGS[config]["size"]
    # _preprocess is the per-frame part of preprocess (resize to the tile size, rescale, normalise) with no anyres.
    pixels = np.stack(proc._preprocess(frames, do_resize=True, size=(size["height"], size["width"]), resample=3,
                                       do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                                       image_mean=proc.image_mean, image_std=proc.image_std,
                                       input_data_format="channels_last"))
    case = dict(name="video", config=config, frames=[list(s) for s in sizes], shape=list(pixels.shape))
    case.update(store("video", pixels))
    return case


def decode_files():
    """Small files in each format and mode, and the RGB pixels PIL's convert("RGB") makes of them."""
    rng = np.random.default_rng(11)
    files = {}

    palette = Image.fromarray(rng.integers(0, 16, (9, 12), dtype=np.uint8), mode="P")
    palette.putpalette(list(rng.integers(0, 256, 48, dtype=np.uint8)))
    files["palette.png"] = (palette, dict(format="PNG", transparency=3))  # tRNS on entry 3: dropped by RGB
    files["rgba.png"] = (Image.fromarray(rng.integers(0, 256, (7, 10, 4), dtype=np.uint8), mode="RGBA"),
                         dict(format="PNG"))
    files["gray_alpha.png"] = (Image.fromarray(rng.integers(0, 256, (5, 6, 2), dtype=np.uint8), mode="LA"),
                               dict(format="PNG"))
    smooth = pattern(13, 11)
    files["gray.jpg"] = (Image.fromarray(smooth[:, :, 0], mode="L"), dict(format="JPEG", quality=90))
    files["color.jpg"] = (Image.fromarray(smooth), dict(format="JPEG", quality=90))
    files["lossless.webp"] = (Image.fromarray(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)),
                              dict(format="WEBP", lossless=True))
    files["lossy.webp"] = (Image.fromarray(smooth), dict(format="WEBP", quality=80))
    # 16-bit PNGs: PIL keeps the high byte of RGB, and clips 16-bit grey (mode I;16) to 255.
    files["rgb16.png"] = (None, None)
    files["gray16.png"] = (Image.fromarray(np.array([[0, 200, 255, 256, 4095, 65535]], dtype=np.uint16)),
                           dict(format="PNG"))

    expected = {}
    for name, (image, options) in files.items():
        path = os.path.join(OUT, name)
        if name == "rgb16.png":
            write_rgb16_png(path, rng.integers(0, 65536, (3, 4, 3), dtype=np.uint16))
        else:
            image.save(path, **options)
        expected[name] = pil_rgb(Image.open(path))

    # An animated GIF: five full opaque frames of 8x6, each with its own palette.
    frames = [Image.fromarray(pattern(8, 6, phase)).quantize(colors=32) for phase in range(5)]
    path = os.path.join(OUT, "anim.gif")
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0, disposal=1)
    gif = Image.open(path)
    gif_frames = []
    for index in range(gif.n_frames):
        gif.seek(index)
        gif_frames.append(pil_rgb(gif))
    expected["anim.gif"] = gif_frames
    return expected


def write_rgb16_png(path, pixels):
    """PIL cannot write 16-bit RGB: a minimal PNG writer (zlib, filter 0) for one."""
    import struct
    import zlib

    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)))
        f.write(chunk(b"IEND", b""))


def pil_rgb(image):
    rgb = np.asarray(image.convert("RGB"))
    return dict(width=rgb.shape[1], height=rgb.shape[0], rgb=rgb.ravel().tolist())


def main():
    os.makedirs(OUT, exist_ok=True)
    if int(PIL.__version__.split(".")[0]) < 13:
        for name in os.listdir(OUT):
            if name.startswith("pillow12"):
                os.remove(os.path.join(OUT, name))
        with open(os.path.join(OUT, "pillow12.json"), "w") as f:
            json.dump(dict(pillow=PIL.__version__, images=image_cases(PILLOW12_CASES, "pillow12_")), f)
        print(f"wrote the Pillow {PIL.__version__} cases to {os.path.normpath(OUT)}")
        return
    for name in os.listdir(OUT):
        if not name.startswith("pillow12"):
            os.remove(os.path.join(OUT, name))
    for name, config in CONFIGS.items():
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            json.dump(config, f, indent=1)
    expected = dict(pillow=PIL.__version__, transformers=transformers.__version__, images=image_cases(),
                    video=video_case(), decoded=decode_files())
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f)
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
