"""Runs kernels/adamw.cu (the optimizer's fused step, gradient norm and accumulation) on the host, against numpy.

A check of the kernels for machines without a GPU, reusing heads_kernels_on_host.py's prelude (every CUDA thread
of a block a std::thread, std::barrier for __syncthreads and the warp shuffles). Launch sizes are the library's: one
256-thread block per chunk of at most 32768 elements. The descriptors are built with numpy in the 64-byte layout
src/train/optim/cuda.rs writes. Parameters are f32, bf16 and f16 (with fp32 masters), gradients of mixed dtypes;
sizes cross the chunk boundary; a step with a micro-batch's weight equals the step on the accumulator holding the
weighted gradients, bit for bit. Needs g++ (C++20) and numpy.

    ~/.cache/unireward/torch-venv/bin/python tests/reference/adamw_kernels_on_host.py
"""
import ctypes, os, subprocess, sys, tempfile
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
_heads = open(HERE + "/heads_kernels_on_host.py").read()
exec(_heads[: _heads.index("HARNESS = ")])

HARNESS = r"""
template <typename K>
static void run(unsigned blocks, unsigned threads, K kernel) {
    gridDim = {blocks, 1, 1}; blockDim = {threads, 1, 1};
    for (unsigned b = 0; b < blocks; ++b) {
        blockIdx = {b, 0, 0};
        std::barrier<> bar(threads); block_barrier = &bar;
        warp_barriers.clear();
        for (unsigned w = 0; w < threads / 32; ++w) warp_barriers.emplace_back(new std::barrier<>(32));
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < threads; ++t) ts.emplace_back([=] { threadIdx = {t, 0, 0}; kernel(); });
        for (auto& t : ts) t.join();
    }
}
extern "C" {
void emu_step(const TensorSlot* s, const Chunk* c, unsigned blocks, float* m, float* v, float* w, float weight,
              float scale, float omb1, float b2, float omb2, float eps, float bc1, float bc2s) {
    run(blocks, 256, [=] { adamw_step(s, c, m, v, w, weight, scale, omb1, b2, omb2, eps, bc1, bc2s); });
}
void emu_norm(const TensorSlot* s, const Chunk* c, unsigned blocks, float weight, float* partial) {
    run(blocks, 256, [=] { grad_sq_norm(s, c, weight, partial); });
}
void emu_accumulate(const TensorSlot* s, const Chunk* c, unsigned blocks, float* acc, float weight) {
    run(blocks, 256, [=] { accumulate_grads(s, c, acc, weight); });
}
}
"""

body = open(ROOT + "/kernels/adamw.cu").read().replace('#include "common.cuh"', "")
d = tempfile.mkdtemp()
src = PRELUDE + common_header()
open(d + "/k.cpp", "w").write(src + body.replace('extern "C" __global__', 'extern "C"') + HARNESS)
subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", d + "/k.cpp", "-o", d + "/k.so"], check=True)
lib = ctypes.CDLL(d + "/k.so")
P = lambda a: ctypes.c_void_p(a.ctypes.data)
F = ctypes.c_float

SLOT = np.dtype([("param", "<u8"), ("grad", "<u8"), ("offset", "<i8"), ("numel", "<i8"), ("master_offset", "<i8"),
                 ("lr", "<f4"), ("weight_decay", "<f4"), ("param_dtype", "<i4"), ("grad_dtype", "<i4"), ("pad", "<i8")])
assert SLOT.itemsize == 64
CHUNK = 32768
CODES = {"f32": 0, "bf16": 1, "f16": 2}


def to_bf16_bits(x):
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def storage(x, dtype):
    """(array the kernel reads or writes, its values as f32)."""
    if dtype == "bf16":
        bits = to_bf16_bits(x)
        return bits, from_bf16_bits(bits)
    if dtype == "f16":
        h = x.astype(np.float16)
        return h, h.astype(np.float32)
    f = x.astype(np.float32)
    return f, f.copy()


def read(arr, dtype):
    return from_bf16_bits(arr) if dtype == "bf16" else arr.astype(np.float32)


def chunk_list(numels):
    return np.array([(k, s) for k, n in enumerate(numels) for s in range(0, n, CHUNK)], np.int64).reshape(-1, 2)


rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
ok = True
# (numel, param dtype, grad dtype, lr, weight decay): awkward sizes, one across the chunk boundary, one exactly a chunk.
specs = [(40001, "f32", "f32", 1e-2, 0.1), (7, "bf16", "bf16", 3e-2, 0.0), (CHUNK, "f16", "f32", 5e-3, 0.3),
         (1, "f32", "bf16", 2e-2, 0.05), (333, "bf16", "f16", 1e-3, 0.01)]
numels = [s[0] for s in specs]
trainable = sum(numels)
masters_len = sum(n for n, p, *_ in specs if p != "f32")
beta1, beta2, eps, step = 0.9, 0.999, 1e-8, 3
bc1, bc2 = 1 - beta1**step, 1 - beta2**step
scale = 0.37
weight = np.float32(rng.uniform(0.3, 40.0))  # a micro-batch's weight, stepped without the accumulator

params, grads, pvals, gvals = [], [], [], []
m = (rng.standard_normal(trainable) * 0.01).astype(np.float32)
v = (rng.random(trainable) * 1e-4).astype(np.float32)
w = np.zeros(max(masters_len, 1), np.float32)
slots = np.zeros(len(specs), SLOT)
offset = master_offset = 0
for k, (n, pd, gd, lr, wd) in enumerate(specs):
    p, pv = storage(rng.uniform(-1, 1, n), pd)
    g, gv = storage(rng.standard_normal(n) * 0.1, gd)
    params.append(p); grads.append(g); pvals.append(pv); gvals.append(gv)
    mo = -1
    if pd != "f32":
        mo = master_offset
        w[mo:mo + n] = pv + rng.uniform(-1e-3, 1e-3, n).astype(np.float32)  # a master between bf16 values
        master_offset += n
    slots[k] = (p.ctypes.data, g.ctypes.data, offset, n, mo, lr, wd, CODES[pd], CODES[gd], 0)
    offset += n
chunks = chunk_list(numels)
m0, v0, w0 = m.astype(np.float64), v.astype(np.float64), w.astype(np.float64)
start = [a.copy() for a in (m, v, w, *params)]  # the state before the step, for the accumulator's run below

# The float64 reference of the step.
want_m, want_v, want_p = [], [], []
# The size of each result's terms: f32 rounds the terms, so a result that cancels to near zero (one element of m
# where β1·m ≈ −(1−β1)·g) is only as exact as its terms are large.
size_m, size_p = [], []
for k, (n, pd, gd, lr, wd) in enumerate(specs):
    o, mo = slots[k]["offset"], slots[k]["master_offset"]
    g = (weight * gvals[k]).astype(np.float64) * np.float64(np.float32(scale))  # weight·g rounded to f32
    x = w0[mo:mo + n] if mo >= 0 else pvals[k].astype(np.float64)
    mm = m0[o:o + n] + (1 - beta1) * (g - m0[o:o + n])
    vv = beta2 * v0[o:o + n] + (1 - beta2) * g * g
    x = x * (1 - np.float64(np.float32(lr)) * np.float64(np.float32(wd)))
    update = np.float64(np.float32(lr)) / bc1 * mm / (np.sqrt(vv) / np.sqrt(bc2) + eps)
    size_m.append(beta1 * np.abs(m0[o:o + n]) + (1 - beta1) * np.abs(g)); size_p.append(np.abs(x) + np.abs(update))
    x = x - update
    want_m.append(mm); want_v.append(vv); want_p.append(x)

STEP_SCALARS = (F(scale), F(1 - beta1), F(beta2), F(1 - beta2), F(eps), F(bc1), F(np.sqrt(bc2)))
lib.emu_step(P(slots), P(chunks), len(chunks), P(m), P(v), P(w), F(weight), *STEP_SCALARS)


def check(what, got, want, rel, size=None):
    """The largest error against the largest value (or of the results' terms: `size`)."""
    err = np.abs(got - want).max() / max(np.abs(want if size is None else size).max(), 1e-30)
    good = bool(err <= rel)
    largest = "value" if size is None else "term"
    print(f"{what}: max error {err:.1e} of the largest {largest} {'ok' if good else 'FAIL'}")
    return good


for k, (n, pd, gd, lr, wd) in enumerate(specs):
    o, mo = slots[k]["offset"], slots[k]["master_offset"]
    name = f"slot {k} ({n} {pd} params, {gd} grads)"
    ok &= check(name + " exp_avg", m[o:o + n], want_m[k], 1e-6, size_m[k])
    ok &= check(name + " exp_avg_sq", v[o:o + n], want_v[k], 1e-6)
    if mo >= 0:
        ok &= check(name + " master", w[mo:mo + n], want_p[k], 1e-6, size_p[k])
        stored = read(params[k], pd)
        rounded = storage(w[mo:mo + n], pd)[1]
        same = np.array_equal(stored, rounded)
        print(f"{name}: parameter = master rounded to nearest {'ok' if same else 'FAIL'}")
        ok &= same
    else:
        ok &= check(name + " param", params[k], want_p[k], 1e-6, size_p[k])

# The same step from the accumulator: the gradients accumulated with `weight` into a zeroed buffer, then stepped with
# weight 1 from its ranges, must give the weighted step's state and parameters bit for bit (and the same norm).
m_a, v_a, w_a, *params_a = [a.copy() for a in start]
acc = np.zeros(trainable, np.float32)
lib.emu_accumulate(P(slots), P(chunks), len(chunks), P(acc), F(weight))
slots_a = slots.copy()
for k in range(len(specs)):
    slots_a[k]["param"] = params_a[k].ctypes.data
    slots_a[k]["grad"] = acc.ctypes.data + 4 * int(slots[k]["offset"])
    slots_a[k]["grad_dtype"] = CODES["f32"]
lib.emu_step(P(slots_a), P(chunks), len(chunks), P(m_a), P(v_a), P(w_a), F(1.0), *STEP_SCALARS)
same = all(np.array_equal(a, b) for a, b in zip((m_a, v_a, w_a, *params_a), (m, v, w, *params)))
print(f"weighted step = step on the accumulator, bit for bit {'ok' if same else 'FAIL'}")
ok &= same

# The norm's partial sums (weighted, and from the accumulator), and accumulation (weighted, into the moment layout
# and into the master layout).
partial = np.full(len(chunks), np.nan, np.float32)
lib.emu_norm(P(slots), P(chunks), len(chunks), F(weight), P(partial))
want_sq = sum(float(((weight * g).astype(np.float64) ** 2).sum()) for g in gvals)
ok &= check("sum of squared gradients", np.array([partial.astype(np.float64).sum()]), np.array([want_sq]), 1e-6)
partial_a = np.full(len(chunks), np.nan, np.float32)
lib.emu_norm(P(slots_a), P(chunks), len(chunks), F(1.0), P(partial_a))
same = np.array_equal(partial, partial_a)
print(f"weighted norm = norm of the accumulator, bit for bit {'ok' if same else 'FAIL'}")
ok &= same
acc = rng.standard_normal(trainable).astype(np.float32)
want_acc = acc.astype(np.float64) + 0.25 * np.concatenate(gvals).astype(np.float64)
lib.emu_accumulate(P(slots), P(chunks), len(chunks), P(acc), F(0.25))
ok &= check("accumulated gradients", acc, want_acc, 1e-6)
sys.exit(0 if ok else 1)
