#!/usr/bin/env bash
# Everything a machine with an NVIDIA GPU should run: the GPU tests (CUDA against CPU on random inputs, every op,
# every dtype), the NVRTC compile check for the device's own architecture, the command line's demo on CUDA, the
# Qwen2-0.5B-shaped model benchmark (`unireward bench model`, bf16), the benches in a quick mode and the PyTorch
# eager baselines on the same GPU; then a short table. Exits non-zero on any failure, and when there is no GPU.
#
# The GPU machine has CUDA 13.0 and PyTorch but no Rust toolchain and no network, so the script has two halves:
#
#   scripts/gpu_check.sh build     here, with Rust: builds the test binaries with `--features gpu-tests` and the
#                                  bench binaries (release), and packs those with GPU tests (plus the runtime test
#                                  and the NVRTC compile check), the benches and the CLI, stripped of debug info, into
#                                  gpu-bin/bins.tar.gz (git-ignored); prints its size (the device tool carries at
#                                  most 64 MiB, working tree included).
#   bash scripts/gpu_check.sh run  on the GPU machine, from the repo root, with gpu-bin/ carried: about 8 minutes
#                                  at most (UNIREWARD_GPU_BUDGET seconds, default 420, for tests and benches).
#
# Through the device tool: run `scripts/gpu_check.sh build` here, then
#   run(command="bash scripts/gpu_check.sh run", carry=["gpu-bin"], timeout_s=540)
#
# Under the device tool the whole log is also written to $OUT/gpu_check.log (the reply holds only its tail).
# Environment for `run`: UNIREWARD_GPU_BUDGET (seconds, default 420), UNIREWARD_TEST_TIMEOUT (per test binary,
# default 240), UNIREWARD_BENCH_TIMEOUT (per bench binary, default 150), UNIREWARD_BENCH_FILTER (a criterion
# filter, default: every bench).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly BIN=gpu-bin
readonly START=$SECONDS

step() { printf '\n==> [%4ss] %s\n' "$((SECONDS - START))" "$*"; }
die() {
    printf '\nERROR: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------------------- build

# Prints "<kind> <target name> <executable> <source>" for each executable cargo built, from its JSON messages.
executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    kind = m["target"]["kind"][0]
    if kind in ("rlib", "dylib", "cdylib", "staticlib"):
        kind = "lib"
    if m["profile"]["test"] and kind not in ("bench",):
        kind = "test-" + kind          # test-lib, test-bin, test-test
    print(kind, m["target"]["name"], m["executable"], m["target"]["src_path"])
'
}

build() {
    command -v cargo >/dev/null || die "cargo not found: the build half runs where Rust is installed"
    step "building the test binaries (release, --features gpu-tests) and the bench binaries"
    local tests benches
    tests=$(cargo test --release --features gpu-tests --no-run --message-format=json-render-diagnostics | executables)
    benches=$(cargo bench --features gpu-tests --no-run --message-format=json-render-diagnostics | executables)
    rm -rf "$BIN"
    mkdir -p "$BIN"
    local stage kind name exe src dest
    stage=$(mktemp -d)
    while read -r kind name exe src; do
        case "$kind" in
        test-test) dest="test-$name" ;;
        bench) dest="bench-$name" ;;
        bin) dest="$name" ;;
        *) continue ;;
        esac
        # Test binaries without GPU tests stay here: some need tools the GPU machine lacks (valgrind, a C compiler,
        # the build tree). The runtime test has a CUDA path, and the compile check adds the device's architecture.
        if [[ "$kind" == test-test && "$name" != runtime && "$name" != kernels_compile ]] &&
            ! grep -rqs 'gpu-tests' "$([[ "$src" == */main.rs ]] && dirname "$src" || echo "$src")"; then
            echo "$dest: no GPU tests, not carried"
            continue
        fi
        cp "$exe" "$stage/$dest"
        # Debug info is most of the size; the symbol table stays, so backtraces still name functions.
        strip --strip-debug "$stage/$dest" 2>/dev/null || echo "note: could not strip $dest"
        echo "$dest  <-  $exe"
    done < <(printf '%s\n%s\n' "$tests" "$benches" | sort -u)
    # Tests may read fixtures through the absolute CARGO_MANIFEST_DIR baked in at build time; `run` recreates it.
    pwd >"$BIN/manifest_dir"
    {
        echo "built $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
        echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
        rustc --version
    } >"$BIN/BUILD_INFO"
    # Packed: the binaries share most of their code and shrink about 3x, leaving room under the carry limit.
    tar -C "$stage" -czf "$BIN/bins.tar.gz" .
    step "carry size (must stay under 64 MiB with the working tree)"
    ls -lh "$stage"
    printf 'unpacked: %s MiB\n' "$(($(du -sb "$stage" | cut -f1) / 1048576))"
    rm -rf "$stage"
    ls -lh "$BIN"
    local bytes
    bytes=$(du -sb "$BIN" | cut -f1)
    printf 'total: %s MiB\n' "$((bytes / 1048576))"
    ((bytes < 64 * 1048576)) || die "$BIN is $((bytes / 1048576)) MiB: over the device tool's 64 MiB carry limit"
    echo
    echo 'next, through the device tool: run(command="bash scripts/gpu_check.sh run", carry=["gpu-bin"], timeout_s=540)'
}

# ------------------------------------------------------------------------------------------------------------ run

# Puts CUDA 13's libraries (driver, NVRTC, cuBLAS) where the dynamic loader finds them.
cuda_library_path() {
    local dirs=() d
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13.0/lib64 \
        /usr/local/cuda-13/lib64 /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do
        [[ -d "$d" ]] && dirs+=("$d")
    done
    # No toolkit NVRTC: fall back to a pip wheel (nvidia/cu13/lib) in any python on the machine.
    if ! compgen -G '/usr/local/cuda*/lib64/libnvrtc.so.13*' >/dev/null; then
        local so
        so=$(timeout 30 find / -xdev -name 'libnvrtc.so.13' -path '*nvidia*' 2>/dev/null | head -n 1 || true)
        [[ -n "$so" ]] && dirs+=("$(dirname "$so")")
    fi
    local joined
    joined=$(
        IFS=:
        echo "${dirs[*]}"
    )
    export LD_LIBRARY_PATH="$joined${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

# Runs scripts/$1 with --device cuda within the budget, appending its output to the caller's `torch_tables`;
# fails (so a loop can stop) when the budget is spent.
run_torch_baseline() {
    local limit log
    # The model script starts a process per pass, each importing transformers and building a 0.5B model.
    limit=$(step_limit "$([[ "$1" == bench_torch_qwen2* ]] && echo 150 || echo 90)")
    ((limit > 0)) || return 1
    step "PyTorch baseline: $1 --device cuda (timeout ${limit}s)"
    log="$logs/torch.log"
    # shellcheck disable=SC2086 # the script and its flags are split on purpose
    timeout --kill-after=10 "$limit" python3 scripts/$1 --device cuda 2>&1 | tee "$log" || true
    torch_tables+=("$(cat "$log")")
}

# The time limit of the next step: $1 seconds, cut to what is left of the budget; 0 (skip it) under 10 s left.
step_limit() {
    local left=$((BUDGET - (SECONDS - START)))
    if ((left < 10)); then
        echo 0
    elif ((left < $1)); then
        echo "$left"
    else
        echo "$1"
    fi
}

# Human-readable nanoseconds.
human_ns() {
    awk -v ns="$1" 'BEGIN {
        if (ns >= 1e9) printf "%.3f s", ns / 1e9; else if (ns >= 1e6) printf "%.3f ms", ns / 1e6;
        else if (ns >= 1e3) printf "%.2f us", ns / 1e3; else printf "%d ns", ns }'
}

run_checks() {
    [[ -f "$BIN/bins.tar.gz" ]] ||
        die "$BIN/bins.tar.gz is missing: run 'scripts/gpu_check.sh build' where Rust is installed, then carry $BIN"
    BUDGET=${UNIREWARD_GPU_BUDGET:-420}
    local test_timeout=${UNIREWARD_TEST_TIMEOUT:-240} bench_timeout=${UNIREWARD_BENCH_TIMEOUT:-150}
    local failures=0 gpu=yes summary=() logs
    logs=$(mktemp -d)
    # Under the device tool, $OUT is a folder that comes back: keep the whole log there.
    if [[ -n "${OUT:-}" && -d "${OUT:-}" ]]; then
        exec > >(tee "$OUT/gpu_check.log") 2>&1
        # On exit, close our end and let tee write the last lines (the summary) before the tool reads the output.
        TEE_PID=$!
        trap 'exec >&- 2>&-; wait "$TEE_PID" 2>/dev/null || true' EXIT
    fi
    cat "$BIN/BUILD_INFO" 2>/dev/null || true

    step "GPU"
    cuda_library_path
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    if ! command -v nvidia-smi >/dev/null; then
        gpu="no GPU: nvidia-smi is not installed"
    elif ! timeout 60 nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap \
        --format=csv,noheader; then
        gpu="no GPU: nvidia-smi failed (no driver or no device)"
    fi
    [[ "$gpu" == yes ]] || printf '\n*** %s: GPU tests will fail with CudaUnavailable ***\n' "$gpu"

    # Fixture paths compiled in as absolute paths under the build machine's checkout: point that path here.
    export CARGO_MANIFEST_DIR=$PWD
    local built_in
    built_in=$(cat "$BIN/manifest_dir" 2>/dev/null || true)
    if [[ -n "$built_in" && ! -e "$built_in" ]]; then
        mkdir -p "$(dirname "$built_in")" 2>/dev/null && ln -s "$PWD" "$built_in" 2>/dev/null ||
            echo "note: could not link $built_in to $PWD; tests reading fixtures by absolute path may fail"
    fi
    # Criterion would ask `cargo metadata` for its output folder; give it one.
    export CARGO_TARGET_DIR="$logs/target"

    local bin name log rc limit result
    local bins="$logs/bin"
    mkdir -p "$bins"
    tar -C "$bins" -xzf "$BIN/bins.tar.gz"

    for bin in "$bins"/test-*; do
        [[ -x "$bin" ]] || continue
        name=${bin#"$bins"/}
        log="$logs/$name.log"
        limit=$(step_limit "$test_timeout")
        if ((limit == 0)); then
            summary+=("$(printf '%-42s %s' "$name" 'SKIPPED: out of time')")
            failures=$((failures + 1))
            continue
        fi
        step "$name (timeout ${limit}s)"
        local extra=()
        [[ "$name" == test-kernels_compile ]] && extra=(--nocapture)
        rc=0
        timeout --kill-after=10 "$limit" "$bin" --color never "${extra[@]}" 2>&1 | tee "$log" || rc=$?
        result=$(grep -E '^test result:' "$log" | tail -n 1 || true)
        if [[ $rc -eq 124 || $rc -eq 137 ]]; then
            result="TIMED OUT after ${limit}s"
        elif [[ -z "$result" ]]; then
            result="CRASHED (exit $rc)"
        else
            result=$(sed -E 's/^test result: ([A-Za-z]+)\. ([0-9]+) passed; ([0-9]+) failed; ([0-9]+) ignored.*/\1: \2 passed, \3 failed, \4 ignored/' <<<"$result")
        fi
        ((rc == 0)) || failures=$((failures + 1))
        summary+=("$(printf '%-42s %s' "$name" "$result")")
    done

    # The command line on the GPU: what a user runs first.
    if [[ -x "$bins/unireward" ]]; then
        local smoke
        for smoke in "devices" "demo --device cuda" "demo --device cuda --dtype bf16"; do
            limit=$(step_limit 120)
            if ((limit == 0)); then
                summary+=("$(printf '%-42s %s' "unireward $smoke" 'SKIPPED: out of time')")
                failures=$((failures + 1))
                continue
            fi
            step "unireward $smoke (timeout ${limit}s)"
            rc=0
            # shellcheck disable=SC2086 # the subcommand and its flags are split on purpose
            timeout --kill-after=10 "$limit" "$bins/unireward" $smoke 2>&1 || rc=$?
            ((rc == 0)) && result=ok || result="FAILED (exit $rc)"
            ((rc == 0)) || failures=$((failures + 1))
            summary+=("$(printf '%-42s %s' "unireward $smoke" "$result")")
        done
    fi

    # The Qwen2-0.5B-shaped model on the GPU (every transformer kernel at once), before the op benches so the budget
    # cannot skip it; its table goes to the summary beside PyTorch's (bench_torch_qwen2.py below).
    local model_table=()
    if [[ -x "$bins/unireward" ]]; then
        local model_bench="bench model --device cuda:0 --dtype bf16"
        limit=$(step_limit 180)
        if ((limit == 0)); then
            summary+=("$(printf '%-42s %s' "unireward $model_bench" 'SKIPPED: out of time')")
            failures=$((failures + 1))
        else
            step "unireward $model_bench (timeout ${limit}s)"
            log="$logs/bench_model.log"
            rc=0
            # shellcheck disable=SC2086 # the subcommand and its flags are split on purpose
            timeout --kill-after=10 "$limit" "$bins/unireward" $model_bench 2>&1 | tee "$log" || rc=$?
            ((rc == 0)) && result=ok || result="FAILED (exit $rc)"
            ((rc == 0)) || failures=$((failures + 1))
            summary+=("$(printf '%-42s %s' "unireward $model_bench" "$result")")
            model_table+=("$(cat "$log")")
        fi
    fi

    # PyTorch eager on the same GPU, for the side-by-side tables (informative: a failure here fails nothing). The
    # model's twin runs right after ours, before the op benches can use up the budget.
    local torch_tables=() torch_scripts=()
    if [[ "$gpu" == yes ]] && timeout 60 python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
        torch_scripts=("bench_torch_qwen2.py --dtype bf16 --attn sdpa" "bench_torch_logprobs.py --impl both"
            "bench_torch_logprobs.py --dtype bf16" "bench_torch_losses.py")
        run_torch_baseline "${torch_scripts[0]}"
    else
        echo "(PyTorch baselines skipped: no GPU, or no torch with CUDA in python3)"
    fi

    local filter=()
    [[ -n "${UNIREWARD_BENCH_FILTER:-}" ]] && filter=("$UNIREWARD_BENCH_FILTER")
    for bin in "$bins"/bench-*; do
        [[ -x "$bin" ]] || continue
        name=${bin#"$bins"/}
        log="$logs/$name.log"
        limit=$(step_limit "$bench_timeout")
        if ((limit == 0)); then
            summary+=("$(printf '%-42s %s' "$name" 'SKIPPED: out of time')")
            failures=$((failures + 1))
            continue
        fi
        step "$name (quick mode, timeout ${limit}s)"
        rc=0
        timeout --kill-after=10 "$limit" "$bin" --bench --warm-up-time 1 --measurement-time 2 --sample-size 10 \
            --noplot --output-format bencher "${filter[@]}" 2>&1 | tee "$log" || rc=$?
        # bencher format: "test <id> ... bench:   1,234,567 ns/iter (+/- 890)", the median.
        local id ns
        while read -r id ns; do
            summary+=("$(printf '%-42s %-44s %s' "$name" "$id" "$(human_ns "${ns//,/}")")")
        done < <(sed -nE 's/^test (.+) \.\.\. bench: +([0-9,]+) ns\/iter.*/\1 \2/p' "$log")
        if ((rc != 0)); then
            failures=$((failures + 1))
            summary+=("$(printf '%-42s %s' "$name" "FAILED (exit $rc$( ((rc == 124 || rc == 137)) && echo ', timed out'))")")
        fi
    done

    local script
    for script in "${torch_scripts[@]:1}"; do
        run_torch_baseline "$script" || break
    done

    step "summary (test binary: results; bench: median time)"
    ((${#model_table[@]} == 0)) || printf '%s\n\n' "${model_table[@]}"
    ((${#torch_tables[@]} == 0)) || printf '%s\n\n' "${torch_tables[@]}"
    [[ "$gpu" == yes ]] || echo "*** $gpu ***"
    printf '%s\n' "${summary[@]:-nothing ran: $BIN/ holds no test or bench binaries}"
    rm -rf "$logs"
    if [[ "$gpu" != yes ]]; then
        echo "FAILED: $gpu"
        exit 1
    fi
    ((failures == 0)) || die "$failures test or bench binaries failed"
    echo "all GPU checks passed in $((SECONDS - START))s"
}

case "${1:-}" in
build) build ;;
run) run_checks ;;
*)
    sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
