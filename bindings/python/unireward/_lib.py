"""Finding and loading `libunireward.so`, checking its ABI version, and turning status codes into exceptions."""

import ctypes
import os
import pathlib
import sys

# The `UR_ABI_VERSION` of include/unireward.h these bindings were written for.
ABI_VERSION = 4

_LIB_NAME = {"darwin": "libunireward.dylib", "win32": "unireward.dll"}.get(sys.platform, "libunireward.so")

# Status names by number, as in include/unireward.h (the numbers never change).
STATUS_NAMES = {
    0: "UR_OK",
    1: "UR_ERROR_NULL_POINTER",
    2: "UR_ERROR_INVALID_ARGUMENT",
    3: "UR_ERROR_SHAPE",
    4: "UR_ERROR_DTYPE",
    5: "UR_ERROR_DEVICE",
    6: "UR_ERROR_CUDA_UNAVAILABLE",
    7: "UR_ERROR_CUDA",
    8: "UR_ERROR_KERNEL_COMPILE",
    9: "UR_ERROR_PANIC",
    10: "UR_ERROR_UNSUPPORTED",
    11: "UR_ERROR_CHECKPOINT",
}


class UnirewardError(RuntimeError):
    """A failing `ur_*` call: `status` is its code, `status_name` its name, and the message the library's
    `ur_last_error_message()`."""

    def __init__(self, function: str, status: int, status_name: str, message: str):
        self.function = function
        self.status = status
        self.status_name = status_name
        self.message = message
        super().__init__(f"{function}: {status_name}: {message}")


def repo_root() -> pathlib.Path:
    """The repository root, for a package used from its source tree (bindings/python/unireward/)."""
    return pathlib.Path(__file__).resolve().parents[3]


def candidate_paths():
    """Where the library is looked for, in order: `$UNIREWARD_LIB` (a file), then `$CARGO_TARGET_DIR` and the
    repository's `target/`, release before debug."""
    env = os.environ.get("UNIREWARD_LIB")
    if env:
        return [pathlib.Path(env)]
    target_dirs = []
    if os.environ.get("CARGO_TARGET_DIR"):
        target_dirs.append(pathlib.Path(os.environ["CARGO_TARGET_DIR"]))
    target_dirs.append(repo_root() / "target")
    return [d / profile / _LIB_NAME for d in target_dirs for profile in ("release", "debug")]


def load_library() -> ctypes.CDLL:
    """Loads the library and checks that its ABI version is the one these bindings were written for."""
    paths = candidate_paths()
    found = next((p for p in paths if p.is_file()), None)
    if found is None:
        looked = "\n  ".join(str(p) for p in paths)
        raise ImportError(
            f"unireward: {_LIB_NAME} not found. Looked in:\n  {looked}\n"
            "Build it with `cargo build --release --lib` in the repository, or set UNIREWARD_LIB to its path."
        )
    lib = ctypes.CDLL(str(found))
    lib.ur_abi_version.restype = ctypes.c_uint32
    lib.ur_abi_version.argtypes = []
    version = lib.ur_abi_version()
    if version != ABI_VERSION:
        raise ImportError(
            f"unireward: {found} has ABI version {version}, but these bindings were written for ABI version "
            f"{ABI_VERSION}: rebuild the library from the same checkout as the Python package"
        )
    for name in ("ur_last_error_message", "ur_status_name", "ur_version_string"):
        getattr(lib, name).restype = ctypes.c_char_p
    lib.ur_last_error_message.argtypes = []
    lib.ur_status_name.argtypes = [ctypes.c_int32]
    lib.ur_version_string.argtypes = []
    lib._unireward_path = found
    return lib


def check(lib: ctypes.CDLL, function: str, status: int) -> None:
    """Raises `UnirewardError` for a status other than `UR_OK`."""
    if status == 0:
        return
    message = (lib.ur_last_error_message() or b"").decode("utf-8", "replace")
    name = (lib.ur_status_name(status) or b"").decode() or STATUS_NAMES.get(status, f"status {status}")
    raise UnirewardError(function, status, name, message)
