#!/usr/bin/env bash
# The C++ and CMake checks (scripts/test.sh calls this; it also runs alone). Needs cargo, cmake >= 3.16, a C++17
# compiler, python3 and valgrind.
#
#   ./scripts/cmake_check.sh
#
# 1. clippy on the cxx bridge (the `cxx` feature needs a C++ compiler, so the main lint leaves it out);
# 2. configures, builds and installs the CMake package (cmake/) into a temporary prefix: cargo builds into the
#    repository's target/ folder, sharing what `cargo build --release` compiled; the library is installed under its
#    SONAME libunireward.so.<UR_ABI_VERSION> with libunireward.so linking to it, and consumers need the SONAME;
# 3. builds and runs the consumer project tests/cmake_consumer (find_package, both targets) and the examples in
#    bindings/cpp against the installed package;
# 4. packages a prebuilt libunireward.so without cargo (UNIREWARD_PREBUILT_LIB: no cxx bridge, no .a installed), builds
#    a C-ABI consumer against it, and checks that asking it for COMPONENTS cxx fails naming the component;
# 5. runs them under valgrind: no leak, no invalid access;
# 6. checks that the README's C++ and CMake examples are the consumer's files, which step 3 built and ran.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly WORK="${UNIREWARD_CMAKE_CHECK_DIR:-target/cmake-check}"
readonly PREFIX="$WORK/prefix"
readonly START=$SECONDS

step() { printf '\n==> [cmake %4ss] %s\n' "$((SECONDS - START))" "$*"; }
run() {
    printf '+ %s\n' "$*"
    "$@"
}
die() {
    printf '\nERROR: %s\n' "$*" >&2
    exit 1
}

for tool in cargo cmake valgrind python3 readelf; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian/Ubuntu: apt-get install -y cmake valgrind)"
done
cmake --version | head -n 1
rm -rf "$WORK"
mkdir -p "$WORK"

if cargo clippy --version >/dev/null 2>&1; then
    step "lint: the cxx bridge"
    run cargo clippy --lib --features cxx -- -D warnings
fi

step "CMake package: configure, build, install into $PREFIX"
run cmake -S cmake -B "$WORK/package" -DCMAKE_INSTALL_PREFIX="$PWD/$PREFIX" -DCMAKE_BUILD_TYPE=Release
run cmake --build "$WORK/package"
run cmake --install "$WORK/package"

abi="$(sed -n 's/^#define UR_ABI_VERSION \([0-9]*\)$/\1/p' include/unireward.h)"
soname="libunireward.so.$abi"
installed="$(find "$PREFIX" -name "$soname")"
[[ -f "$installed" && ! -L "$installed" ]] || die "the package did not install the library as $soname"
[[ "$(readlink "$(dirname "$installed")/libunireward.so")" == "$soname" ]] ||
    die "the package's libunireward.so does not link to $soname"
readelf -d "$installed" | grep -q "Library soname: \[$soname\]" || die "$installed has no SONAME $soname"
echo "installed as $soname (its SONAME), libunireward.so -> $soname"

step "consumer project (tests/cmake_consumer) against the installed package"
run cmake -S tests/cmake_consumer -B "$WORK/consumer" -DCMAKE_PREFIX_PATH="$PWD/$PREFIX"
run cmake --build "$WORK/consumer"
run "$WORK/consumer/dpo"
run "$WORK/consumer/dpo_cxx"
readelf -d "$WORK/consumer/dpo" | grep -q "Shared library: \[$soname\]" || die "the consumer does not need $soname"

step "CMake package from a prebuilt library: no cargo on PATH, no cxx bridge, no libunireward.a installed"
readonly PREBUILT="$WORK/prefix-prebuilt"
so="$installed"
run env PATH=/usr/local/bin:/usr/bin:/bin CARGO_HOME=/nonexistent HOME=/nonexistent cmake -S cmake -B "$WORK/prebuilt" \
    -DCMAKE_INSTALL_PREFIX="$PWD/$PREBUILT" -DUNIREWARD_PREBUILT_LIB="$PWD/$so"
run env PATH=/usr/local/bin:/usr/bin:/bin cmake --build "$WORK/prebuilt"
run env PATH=/usr/local/bin:/usr/bin:/bin cmake --install "$WORK/prebuilt"
[[ -n "$(find "$PREBUILT" -name "$soname")" ]] || die "the prebuilt package has no $soname"
[[ -z "$(find "$PREBUILT" -name libunireward.a)" ]] || die "the prebuilt package installed libunireward.a"
mkdir -p "$WORK/c-only" "$WORK/wants-cxx"
cp tests/cmake_consumer/main.cpp "$WORK/c-only/"
cat >"$WORK/c-only/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.16)
project(c_only LANGUAGES CXX)
find_package(unireward CONFIG REQUIRED)
add_executable(dpo main.cpp)
target_compile_features(dpo PRIVATE cxx_std_17)
target_link_libraries(dpo PRIVATE unireward::unireward)
CMAKE
run cmake -S "$WORK/c-only" -B "$WORK/c-only/build" -DCMAKE_PREFIX_PATH="$PWD/$PREBUILT"
run cmake --build "$WORK/c-only/build"
run "$WORK/c-only/build/dpo"
printf 'cmake_minimum_required(VERSION 3.16)\nproject(wants_cxx LANGUAGES CXX)\nfind_package(unireward CONFIG REQUIRED COMPONENTS cxx)\n' \
    >"$WORK/wants-cxx/CMakeLists.txt"
if cmake -S "$WORK/wants-cxx" -B "$WORK/wants-cxx/build" -DCMAKE_PREFIX_PATH="$PWD/$PREBUILT" >"$WORK/wants-cxx.log" 2>&1; then
    die "COMPONENTS cxx was found in an install without it"
fi
grep -q "component .cxx. (libunireward.a" "$WORK/wants-cxx.log" ||
    die "COMPONENTS cxx from an install without it did not name the component: see $WORK/wants-cxx.log"
echo "COMPONENTS cxx without it: refused, naming the component"

step "examples (bindings/cpp) against the installed package"
run cmake -S bindings/cpp -B "$WORK/examples" -DCMAKE_PREFIX_PATH="$PWD/$PREFIX"
run cmake --build "$WORK/examples"
(cd "$WORK/examples" && run ctest --output-on-failure)

step "valgrind: the C++ programs, no leak and no invalid access"
for program in unireward_example unireward_every_method unireward_cxx_example; do
    run valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect,possible \
        --suppressions=tests/cmake_consumer/valgrind.supp "$WORK/examples/$program" >/dev/null ||
        die "valgrind found errors in $program (rerun the command above without --quiet)"
    echo "$program: valgrind clean"
done

step "README: the C++ and CMake examples are tests/cmake_consumer's files"
python3 - <<'EOF'
import pathlib, sys
readme = pathlib.Path("README.md").read_text()
missing = [f for f in ("CMakeLists.txt", "main.cpp", "cxx_main.cpp")
           if pathlib.Path("tests/cmake_consumer", f).read_text().strip() not in readme]
if missing:
    sys.exit(f"README.md does not contain tests/cmake_consumer/{', '.join(missing)} verbatim: copy them in")
print("the README shows tests/cmake_consumer/{CMakeLists.txt,main.cpp,cxx_main.cpp}")
EOF

step "C++ and CMake checks passed"
