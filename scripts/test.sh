#!/usr/bin/env bash
# Every check of unireward, as CI runs it (.ci/run calls this). Needs only a Rust toolchain and python3.
#
#   ./scripts/test.sh
#
# 1. installs the pinned NVRTC 13.0 wheels (no GPU, no CUDA toolkit needed) into a cached virtual environment,
#    ${UNIREWARD_CACHE:-$HOME/.cache/unireward}/nvrtc-venv, and puts their libraries on LD_LIBRARY_PATH;
# 2. cargo fmt --check, cargo clippy -D warnings (GPU test code included) and cargo doc -D warnings (when rustfmt /
#    clippy are installed);
# 3. cargo test: unit, integration and doc tests (CUDA tests are ignored without --features gpu-tests); the C ABI
#    tests need a C compiler and valgrind (installed with apt-get when missing);
# 4. the NVRTC compile check of every kernel for sm_80 and sm_90, with its register/spill table;
# 5. a release build, the demo (`unireward demo --check`: the whole pipeline on its procedural world, failing unless
#    the judge learned, the filter's pairs beat random ones and DPO raised the policy's accuracy; a few minutes) and
#    a smoke run of `unireward demo --kernels`.
# 6. the PyTorch package's tests (bindings/python) in a cached virtual environment with torch, against the release
#    build of libunireward.so; then the CUDA kernels emulated on the host (tests/reference/*_kernels_on_host.py);
# 7. the C++ and CMake checks (scripts/cmake_check.sh; installs cmake and valgrind with apt-get when missing).
#
# Stops at the first failing step with a non-zero exit status (each test step runs all its tests first).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly PINS=(nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.88)
readonly CACHE="${UNIREWARD_CACHE:-$HOME/.cache/unireward}"
readonly VENV="$CACHE/nvrtc-venv"
readonly START=$SECONDS

step() { printf '\n==> [%4ss] %s\n' "$((SECONDS - START))" "$*"; }
run() {
    printf '+ %s\n' "$*"
    "$@"
}
die() {
    printf '\nERROR: %s\n' "$*" >&2
    exit 1
}
trap 'status=$?; [[ $status -eq 0 ]] || printf "\nFAILED (exit %s) after %ss: see the step above.\n" "$status" "$((SECONDS - START))" >&2' EXIT

command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs)"
command -v python3 >/dev/null || die "python3 not found: it installs the NVRTC wheels"
step "toolchain"
cargo --version
rustc --version
python3 --version

step "NVRTC 13.0 wheels in $VENV"
# The stamp records the pins the environment was built with; a change of pins rebuilds it.
if [[ "$(cat "$VENV/.unireward-pins" 2>/dev/null)" != "${PINS[*]}" ]]; then
    rm -rf "$VENV"
    if run python3 -m venv "$VENV"; then
        run "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
    else
        # Debian/Ubuntu without python3-venv: the system pip can still unpack the wheels into a plain folder.
        rm -rf "$VENV"
        run python3 -m pip install --quiet --disable-pip-version-check --target "$VENV/site" "${PINS[@]}" ||
            die "neither python3 -m venv nor python3 -m pip works: install python3-venv (Debian/Ubuntu) or pip"
    fi
    echo "${PINS[*]}" >"$VENV/.unireward-pins"
else
    echo "cached (${PINS[*]})"
fi
# The wheels' layout has moved between CUDA releases (nvidia/cuda_nvrtc/lib, nvidia/cu13/lib): find the library.
nvrtc_so=$(find "$VENV" -name 'libnvrtc.so.13*' -path '*nvidia*' ! -name '*builtins*' | sort | head -n 1)
[[ -n "$nvrtc_so" ]] || die "libnvrtc.so.13 not found under $VENV; delete it and rerun"
NVRTC_DIR=$(dirname "$nvrtc_so")
export LD_LIBRARY_PATH="$NVRTC_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

if cargo fmt --version >/dev/null 2>&1; then
    step "format"
    run cargo fmt --all --check
else
    step "format: skipped (rustfmt not installed)"
fi
if cargo clippy --version >/dev/null 2>&1; then
    step "lint"
    # gpu-tests lints the CUDA test code too; not --all-features: the cxx feature needs a C++ compiler.
    run cargo clippy --all-targets --features gpu-tests -- -D warnings
    # The API documentation's links resolve (a renamed item otherwise leaves a dead link behind).
    RUSTDOCFLAGS="-D warnings" run cargo doc --no-deps --lib --quiet
else
    step "lint: skipped (clippy not installed)"
fi

# tests/c_abi.rs compiles C programs against libunireward.so and runs them under valgrind.
missing_c=()
for tool in cc valgrind; do command -v "$tool" >/dev/null || missing_c+=("$tool"); done
if ((${#missing_c[@]})); then
    step "C compiler and valgrind for tests/c_abi.rs"
    command -v apt-get >/dev/null || die "${missing_c[*]} not found and no apt-get: install gcc and valgrind"
    run $([[ $EUID -eq 0 ]] || echo sudo) apt-get update -qq
    run $([[ $EUID -eq 0 ]] || echo sudo) apt-get install -y -qq gcc valgrind
fi
# tests/c_abi.rs links C programs against target/debug/libunireward.so, which `cargo test` alone does not produce.
step "library build (libunireward.so for the C ABI tests)"
run cargo build --lib
step "unit and integration tests"
run cargo test --all-targets --no-fail-fast
step "doc tests"
run cargo test --doc --no-fail-fast

step "NVRTC compile check (sm_80, sm_90)"
run cargo test --test kernels_compile -- --nocapture

step "release build"
run cargo build --release
step "the demo: unireward demo --check (the whole pipeline on the procedural world)"
rm -rf target/demo
run cargo run --release -- demo --check --out target/demo
step "smoke run: unireward demo --kernels"
run cargo run --release -- demo --kernels

# PyTorch bindings (bindings/python): torch (PyPI's default wheel, used on the CPU here), pytest and numpy in a cached
# venv, ${UNIREWARD_CACHE:-~/.cache/unireward}/torch-venv, rebuilt when the pins change; the package is installed
# editable and loads the release libunireward.so built above. pytest's "no tests collected" (exit 5) fails too.
# diffusers runs the Diffusion-DPO example (bindings/python/examples/diffusion_dpo.py); 0.39.0 is its newest release
# that accepts huggingface_hub < 1.0, which transformers 4.57.1 (the reference scripts' version) requires.
readonly TORCH_PINS=(torch==2.10.0 numpy==2.4.6 pytest==9.2.0 "setuptools>=70.1" diffusers==0.39.0)
readonly TORCH_VENV="$CACHE/torch-venv"
step "PyTorch bindings: torch venv in $TORCH_VENV"
if [[ "$(cat "$TORCH_VENV/.unireward-pins" 2>/dev/null)" != "${TORCH_PINS[*]}" ]]; then
    rm -rf "$TORCH_VENV"
    run python3 -m venv "$TORCH_VENV" || die "python3 -m venv failed: install python3-venv (Debian/Ubuntu)"
    run "$TORCH_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${TORCH_PINS[@]}"
    echo "${TORCH_PINS[*]}" >"$TORCH_VENV/.unireward-pins"
else
    echo "cached (${TORCH_PINS[*]})"
fi
run "$TORCH_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e bindings/python
step "PyTorch bindings: pytest"
lib_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release
export UNIREWARD_LIB="$lib_dir/libunireward.so"
[[ -f "$UNIREWARD_LIB" ]] || die "$UNIREWARD_LIB not found after the release build"
run "$TORCH_VENV/bin/python" -m pytest -q bindings/python/tests

# No GPU here: the CUDA kernels of the preference losses, the heads, the log-probs, the comparisons and the
# transformer ops also run on the host, compiled by g++ with every CUDA thread a std::thread or a fiber (barriers
# for __syncthreads and warp shuffles), against float64 references. The GPU tests in scripts/gpu_check.sh remain
# the real check.
step "CUDA kernels emulated on the host"
for harness in tests/reference/*_kernels_on_host.py; do
    run "$TORCH_VENV/bin/python" "$harness"
done

# C++ and CMake (scripts/cmake_check.sh): the CMake package installed to a temporary prefix, the consumer project
# and the C++ examples built against it, valgrind on the examples. cmake and valgrind come from apt when missing.
step "C++ and CMake"
missing_tools=()
for tool in cmake valgrind; do command -v "$tool" >/dev/null || missing_tools+=("$tool"); done
if ((${#missing_tools[@]})); then
    command -v apt-get >/dev/null || die "${missing_tools[*]} not found and no apt-get: install them"
    sudo=$([[ $EUID -eq 0 ]] || echo sudo)
    run $sudo apt-get update -qq
    run $sudo apt-get install -y -qq "${missing_tools[@]}"
fi
run ./scripts/cmake_check.sh

step "all checks passed"
