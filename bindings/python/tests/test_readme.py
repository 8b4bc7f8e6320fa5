"""The README's PyTorch example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[3] / "README.md"


def test_readme_pytorch_example_runs():
    section = README.read_text().split("## PyTorch", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README's PyTorch section has no python example"
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})
