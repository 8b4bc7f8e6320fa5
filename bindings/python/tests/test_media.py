"""`unireward.ImageProcessor` against transformers' `LlavaOnevisionImageProcessor` output
(tests/fixtures/media, written by tests/reference/media.py with transformers and Pillow, which are not in the test
environment), and its errors."""

import json
import pathlib

import numpy as np
import pytest
import torch

import unireward
from unireward import UnirewardError

FIXTURES = pathlib.Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "media"


def pattern(width, height, phase=0):
    """tests/reference/media.py's synthetic image: edges, gradients and pseudo-noise in integers."""
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    v = (x * x * 3 + y * 5 + c * 71 + x * y + phase * 37 + ((x * 7919 + y * 104729 + c * 13) % 61) * 2) % 256
    return torch.from_numpy(v.astype(np.uint8))


def cases():
    expected = json.loads((FIXTURES / "expected.json").read_text())
    return [case for case in expected["images"] if "values" in case]


@pytest.mark.parametrize("case", cases(), ids=lambda case: case["name"])
def test_matches_transformers(case):
    processor = unireward.ImageProcessor(FIXTURES / f"{case['config']}.json")
    image = pattern(case["width"], case["height"])
    out = processor(image, layout=case["layout"])
    expected = torch.from_numpy(np.fromfile(FIXTURES / case["values"], dtype="<f4")).reshape(case["shape"])
    assert out.shape == expected.shape
    # Pillow's resampling reproduced byte for byte and the float steps in float32 as transformers does them.
    assert torch.equal(out, expected), (out - expected).abs().max()
    assert processor.output_shape(case["height"], case["width"], case["layout"]) == tuple(case["shape"])


def test_default_config_and_errors():
    processor = unireward.ImageProcessor()
    assert processor.output_shape(300, 500) == (3, 3, 384, 384)
    assert processor.output_shape(300, 500, "square") == (1, 3, 384, 384)
    with pytest.raises(ValueError, match="uint8 tensor"):
        processor(torch.zeros(4, 4, 3))
    with pytest.raises(ValueError, match="uint8 tensor"):
        processor(torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown layout"):
        processor(pattern(4, 4), layout="tiles")
    with pytest.raises(UnirewardError, match="zero size"):
        processor(torch.zeros(0, 4, 3, dtype=torch.uint8))
    with pytest.raises(UnirewardError, match="UR_ERROR_CHECKPOINT.*missing.json"):
        unireward.ImageProcessor(FIXTURES / "missing.json")
