"""Loading the library: the ABI check, the search path and its error, and status → exception mapping."""

import os
import subprocess
import sys

import pytest
import torch

import unireward
from unireward import _lib


def test_abi_version_and_library():
    assert unireward._c.lib.ur_abi_version() == unireward.ABI_VERSION
    assert unireward.library_path().is_file()
    assert unireward.version().count(".") == 2


def test_missing_library_lists_where_it_looked(tmp_path):
    env = dict(os.environ, UNIREWARD_LIB=str(tmp_path / "nowhere.so"))
    r = subprocess.run([sys.executable, "-c", "import unireward"], env=env, capture_output=True, text=True)
    assert r.returncode != 0
    assert "not found" in r.stderr and str(tmp_path / "nowhere.so") in r.stderr


def test_search_order_without_env(monkeypatch, tmp_path):
    monkeypatch.delenv("UNIREWARD_LIB", raising=False)
    monkeypatch.setenv("CARGO_TARGET_DIR", str(tmp_path))
    paths = [str(p) for p in _lib.candidate_paths()]
    root = _lib.repo_root()
    assert paths[:2] == [str(tmp_path / "release" / "libunireward.so"), str(tmp_path / "debug" / "libunireward.so")]
    assert paths[2:] == [str(root / "target" / "release" / "libunireward.so"),
                         str(root / "target" / "debug" / "libunireward.so")]
    assert (root / "Cargo.toml").is_file()


def test_status_becomes_exception_with_name_and_message():
    with pytest.raises(unireward.UnirewardError) as info:
        unireward.sequence_logprobs(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.int64))
    e = info.value
    assert e.status == 3 and e.status_name == "UR_ERROR_SHAPE"
    assert "labels" in e.message and "UR_ERROR_SHAPE" in str(e)


def test_unsupported_dtype_is_refused_before_the_call():
    with pytest.raises(TypeError, match="float64"):
        unireward.sequence_logprobs(torch.randn(2, 3, 4, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.int64))


def test_abi_mismatch_is_refused(monkeypatch):
    monkeypatch.setattr(_lib, "ABI_VERSION", _lib.ABI_VERSION + 1)
    with pytest.raises(ImportError, match=r"has ABI version \d+, but these bindings were written for ABI version"):
        _lib.load_library()
