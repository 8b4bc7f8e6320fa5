"""Runs the f32 instantiations of kernels/preference.cu on the host, against the committed float64 fixtures.

A check of the kernels' math for machines without a GPU (the GPU tests compare CUDA against CPU where there is
one): the .cu file is compiled with g++ behind a small prelude that maps CUDA's qualifiers to plain C++ and runs
every block with one thread, blocks looped on the host (so the block reductions are trivial and the grid-stride
loops, the partial-sum layout and all per-item formulas are exercised). Needs g++ and numpy.

    /root/.cache/unireward/venv/bin/python tests/reference/preference_kernels_on_host.py
"""

import ctypes
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
F = os.path.join(ROOT, "tests", "fixtures", "preference") + "/"

PRELUDE = r"""// Host emulation of the CUDA kernels: one thread per block, blocks looped on the host.
#include <cmath>
#include <cstring>
#include <cstdint>
#include <algorithm>
using std::fmin; using std::fmax; using std::fabs; using std::log1p; using std::exp; using std::expm1; using std::log;
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static
#define __align__(x)
struct dim3 { unsigned x, y, z; };
static dim3 blockIdx, threadIdx, blockDim, gridDim;
static inline void __syncthreads() {}
static inline double __longlong_as_double(unsigned long long v) { double d; memcpy(&d, &v, 8); return d; }
static inline float __int_as_float(int v) { float f; memcpy(&f, &v, 4); return f; }
typedef unsigned long long u64;
struct bf16 { unsigned short bits; };
struct f16 { unsigned short bits; };
inline float to_float(float x) { return x; }
inline float to_float(bf16 x) { unsigned u = ((unsigned)x.bits) << 16; float f; memcpy(&f, &u, 4); return f; }
inline float to_float(f16) { return 0.0f; }
template <typename T> inline T from_float(float x);
template <> inline float from_float<float>(float x) { return x; }
template <> inline bf16 from_float<bf16>(float x) { unsigned u; memcpy(&u, &x, 4); u += 0x7fff + ((u >> 16) & 1); return bf16{(unsigned short)(u >> 16)}; }
template <> inline f16 from_float<f16>(float) { return f16{0}; }
"""

HARNESS = r"""static void grid(unsigned x, unsigned y, unsigned z) { gridDim = {x, y, z}; blockDim = {1, 1, 1}; threadIdx = {0, 0, 0}; }
extern "C" {
void emu_dpo(const float* pc, const float* pr, const float* rc, const float* rr, const float* cv, const float* rv,
             const float* pw, const long long* lc, const long long* lr, const long long* order, int n,
             const DpoScalars* s, float* gc, float* gr, float* gcv, float* grv, float* losses, double* partial,
             int blocks) {
    grid(blocks, 1, 1);
    for (unsigned b = 0; b < (unsigned)blocks; ++b) { blockIdx = {b, 0, 0};
        dpo_loss_f32(pc, pr, rc, rr, cv, rv, pw, lc, lr, order, n, *s, gc, gr, gcv, grv, losses, partial); }
}
void emu_bt(const float* rc, const float* rr, const float* m, int n, double coef, double ms, float* gc, float* gr, double* partial, int blocks) {
    grid(blocks, 1, 1);
    for (unsigned b = 0; b < (unsigned)blocks; ++b) { blockIdx = {b, 0, 0}; bradley_terry_f32(rc, rr, m, n, coef, ms, gc, gr, partial); }
}
void emu_kwise(const float* r, const long long* o, int g, int k, int method, double ms, double* lse, float* grad, double* partial, int blocks) {
    grid(blocks, 1, 1);
    for (unsigned b = 0; b < (unsigned)blocks; ++b) { blockIdx = {b, 0, 0}; kwise_loss_f32(r, o, g, k, method, ms, lse, grad, partial); }
}
void emu_sq_err(const float* const* p, long long width, long long chunk, int batch, int chunks, double* partial) {
    grid(chunks, batch, 4);
    for (unsigned z = 0; z < 4; ++z) for (unsigned y = 0; y < (unsigned)batch; ++y) for (unsigned x = 0; x < (unsigned)chunks; ++x) {
        blockIdx = {x, y, z};
        diffusion_sq_err_f32(p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], width, chunk, partial);
    }
}
void emu_grad(const float* pw, const float* tw, const float* pl, const float* tl, const double* coef, int batch, long long width, float* gw, float* gl, int blocks) {
    grid(blocks, 2, 1);
    for (unsigned y = 0; y < 2; ++y) for (unsigned x = 0; x < (unsigned)blocks; ++x) { blockIdx = {x, y, 0};
        diffusion_grad_f32(pw, tw, pl, tl, coef, batch, width, gw, gl); }
}
}
"""


def build():
    tmp = tempfile.mkdtemp(prefix="preference_kernels_")
    with open(os.path.join(ROOT, "kernels", "preference.cu")) as f:
        kernels = f.read().replace('#include "common.cuh"', PRELUDE)
    src = os.path.join(tmp, "harness.cpp")
    with open(src, "w") as f:
        f.write(kernels + "\n" + HARNESS)
    lib = os.path.join(tmp, "libkernels.so")
    subprocess.run(["g++", "-O1", "-std=c++17", "-shared", "-fPIC", "-o", lib, src], check=True)
    return ctypes.CDLL(lib)


L = build()
KINDS = ["sigmoid", "hinge", "ipo", "robust", "bco_pair", "exo_pair", "nca_pair", "sppo_hard", "apo_zero",
         "apo_down", "simpo", "orpo", "aot", "aot_pair", "discopop"]  # DpoLossType::ALL order
F_DIVERGENCES = {"reverse_kl": 0, "js_divergence": 1, "alpha_divergence": 2}
BLOCKS = 3  # several blocks, so the grid-stride loops and the block-ordered partial sums are exercised


class DpoScalars(ctypes.Structure):
    """kernels/preference.cu's DpoScalars (cuda.rs mirrors it too)."""
    _fields_ = [(f, ctypes.c_double) for f in ("beta", "eps", "gamma", "delta", "tau", "f_alpha", "exp_cap",
                                               "ld_alpha", "mean_scale", "nll_grad", "reward_scale")] + [
        ("weights", ctypes.c_double * 15), ("kinds", ctypes.c_int * 15), ("terms", ctypes.c_int),
        ("f_divergence", ctypes.c_int), ("reference_free", ctypes.c_int), ("use_ld", ctypes.c_int)]


def ptr(a):
    return None if a is None else a.ctypes.data_as(ctypes.c_void_p)


def f64(x):
    return ctypes.c_double(x)


def as_f32(x):
    """What the library does to an f32 hyper-parameter before widening it."""
    return float(np.float32(x))


def close(what, got, want, rtol=1e-5, atol=1e-7):
    got, want = np.asarray(got, float), np.asarray(want, float)
    scale = np.abs(want).max() if want.size else 0.0
    bad = np.abs(got - want) > rtol * np.abs(want) + max(atol, rtol * scale)
    if bad.any():
        print(f"MISMATCH {what}: got {got[bad][:4]}, want {want[bad][:4]}")
    return not bad.any()


def host_pass(c, i, types, normalised, use_reference, ld_alpha):
    """dpo.rs's host pass (dpo_cpu.rs's `effective`): the effective log-probs, for BCO's mean and AOT's orders."""
    arr = lambda k: np.array(i[k], np.float32).astype(float)
    n = len(i["policy_chosen"])
    lc = np.array(i["chosen_lengths"], float) if normalised else np.ones(n)
    lr = np.array(i["rejected_lengths"], float) if normalised else np.ones(n)
    cr, rr = (arr("reference_chosen") / lc, arr("reference_rejected") / lr) if use_reference else (np.zeros(n),) * 2
    if ld_alpha is not None:
        keep = 1.0 - ld_alpha
        cp = arr("policy_chosen") - keep * arr("policy_chosen_verbose")
        rp = arr("policy_rejected") - keep * arr("policy_rejected_verbose")
    else:
        cp, rp = arr("policy_chosen") / lc, arr("policy_rejected") / lr
    return cp, rp, cr, rr


def aot_orders(cp, rp, cr, rr):
    rows = []
    for values, with_rank in [(cp - rp, True), (cr - rr, False), (cp - cr, True), (rp - rr, True)]:
        perm = np.argsort(values, kind="stable")
        rows.append(perm)
        if with_rank:
            rank = np.empty_like(perm)
            rank[perm] = np.arange(len(perm))
            rows.append(rank)
    return np.concatenate(rows).astype(np.int64)


def check_dpo():
    ok = True
    for case in json.load(open(F + "dpo.json"))["cases"]:
        c, i, e, name = case["config"], case["inputs"], case["expected"], case["name"]
        n = len(i["policy_chosen"])
        arr = lambda k: None if i[k] is None else np.array(i[k], np.float32)
        types = c["loss_type"]
        normalised = any(t in ("ipo", "simpo", "orpo") for t in types)
        use_reference = i["reference_chosen"] is not None and not any(t in ("simpo", "orpo") for t in types)
        lengths = lambda k: np.array(i[k], np.int64) if normalised else None
        ld = c["ld_alpha"]
        ld_alpha = None if ld is None else as_f32(ld)
        cp, rp, cr, rr = host_pass(c, i, types, normalised, use_reference, ld_alpha)
        beta = as_f32(c["beta"])
        alpha = c["rpo_alpha"]
        tokens = float(np.sum(i["chosen_lengths"])) if alpha is not None else 1.0
        weights = arr("pair_weights")
        mean_weight = float(np.mean(weights.astype(float))) if weights is not None else 1.0
        go = as_f32(c["grad_output"])
        nll_grad = -go * as_f32(alpha) * mean_weight / tokens if alpha is not None else 0.0
        s = DpoScalars()
        s.beta, s.eps, s.gamma = beta, as_f32(c["label_smoothing"]), as_f32(c["simpo_gamma"])
        s.tau, s.mean_scale, s.nll_grad = as_f32(c["discopop_tau"]), go / n, nll_grad
        s.exp_cap = math.floor(math.log(float(np.finfo(np.float32).max)) * 1e4) / 1e4
        s.f_divergence = F_DIVERGENCES[c["f_divergence_type"]]
        s.f_alpha = as_f32(c["f_alpha_divergence_coef"]) if s.f_divergence == 2 else 0.0
        s.reference_free, s.use_ld, s.ld_alpha = int(c["reference_free"]), int(ld is not None), ld_alpha or 1.0
        s.terms = len(types)
        for k, (t, w) in enumerate(zip(types, c["loss_weights"])):
            s.kinds[k], s.weights[k] = KINDS.index(t), as_f32(w)
        s.reward_scale = sum(as_f32(w) for w in c["loss_weights"])
        if c["bco"] is not None:
            batch_mean = beta * float(np.mean(np.concatenate([cp - cr, rp - rr])))
            if c["bco"][0] == "fixed":
                s.delta = as_f32(c["bco"][1])
            else:
                mean, count = as_f32(c["bco"][0]), as_f32(c["bco"][1])
                s.delta = mean + (batch_mean - mean) / (count + 1.0)
        order = aot_orders(cp, rp, cr, rr) if any(t in ("aot", "aot_pair") for t in types) else None
        gc, gr, gcv, grv = (np.zeros(n, np.float32) for _ in range(4))
        losses, part = np.zeros(n, np.float32), np.zeros(BLOCKS * 9)
        refs = (arr("reference_chosen"), arr("reference_rejected")) if use_reference else (None, None)
        L.emu_dpo(ptr(arr("policy_chosen")), ptr(arr("policy_rejected")), ptr(refs[0]), ptr(refs[1]),
                  ptr(arr("policy_chosen_verbose")), ptr(arr("policy_rejected_verbose")), ptr(weights),
                  ptr(lengths("chosen_lengths")), ptr(lengths("rejected_lengths")), ptr(order), n, ctypes.byref(s),
                  ptr(gc), ptr(gr), ptr(gcv), ptr(grv), ptr(losses), ptr(part), BLOCKS)
        sums = part.reshape(BLOCKS, 9).sum(0)
        loss = sums[0] / n + (as_f32(alpha) * mean_weight * -sums[8] / tokens if alpha is not None else 0.0)
        ok &= close(f"{name} loss", loss, e["loss"])
        ok &= close(f"{name} losses", losses, e["losses"])
        ok &= close(f"{name} grad chosen", gc, e["grad_policy_chosen"])
        ok &= close(f"{name} grad rejected", gr, e["grad_policy_rejected"])
        if ld is not None:
            ok &= close(f"{name} grad chosen verbose", gcv, e["grad_policy_chosen_verbose"])
            ok &= close(f"{name} grad rejected verbose", grv, e["grad_policy_rejected_verbose"])
        m = e["metrics"]
        for idx, key in [(1, "rewards_chosen"), (2, "rewards_rejected"), (3, "rewards_accuracies"),
                         (4, "logps_chosen"), (5, "logps_rejected"), (6, "log_odds_ratio"), (7, "log_odds_chosen")]:
            if m[key] is not None:
                ok &= close(f"{name} {key}", sums[idx] / n, m[key], atol=1e-6)
    return ok


def check_reward_models():
    ok = True
    fixture = json.load(open(F + "reward_model.json"))
    for case in fixture["bradley_terry"]:
        i, e, name = case["inputs"], case["expected"], case["name"]
        n = len(i["rewards_chosen"])
        rc, rr = np.array(i["rewards_chosen"], np.float32), np.array(i["rewards_rejected"], np.float32)
        margin = None if i["margin"] is None else np.array(i["margin"], np.float32)
        coef = as_f32(case["center_rewards_coefficient"] or 0.0)
        gc, gr = np.zeros(n, np.float32), np.zeros(n, np.float32)
        part = np.zeros(BLOCKS * 5)
        L.emu_bt(ptr(rc), ptr(rr), ptr(margin), n, f64(coef), f64(1.0 / n), ptr(gc), ptr(gr), ptr(part), BLOCKS)
        s = part.reshape(BLOCKS, 5).sum(0)
        ok &= close(f"bt {name} loss", (s[0] + coef * s[1]) / n, e["loss"])
        ok &= close(f"bt {name} grad chosen", gc, e["grad_chosen"])
        ok &= close(f"bt {name} grad rejected", gr, e["grad_rejected"])
        ok &= close(f"bt {name} accuracy", s[2] / n, e["accuracy"])
    for case in fixture["kwise"]:
        i, e, name = case["inputs"], case["expected"], case["name"]
        g, k = i["groups"], i["k"]
        rewards = np.array(i["rewards"], np.float32)
        order = None if i["order"] is None else np.array(i["order"], np.int64)
        grad, lse, part = np.zeros(g * k, np.float32), np.zeros(g * k), np.zeros(BLOCKS * 2)
        method = 0 if case["method"] == "all_pairs" else 1
        L.emu_kwise(ptr(rewards), ptr(order), g, k, method, f64(1.0 / g), ptr(lse), ptr(grad), ptr(part), BLOCKS)
        s = part.reshape(BLOCKS, 2).sum(0)
        ok &= close(f"kwise {name} loss", s[0] / g, e["loss"])
        ok &= close(f"kwise {name} grad", grad, e["grad"])
        ok &= close(f"kwise {name} accuracy", s[1] / g, e["accuracy"])
    return ok


def check_diffusion_dpo():
    ok = True
    for case in json.load(open(F + "diffusion_dpo.json"))["cases"]:
        i, e, name = case["inputs"], case["expected"], case["name"]
        shape = case["shape"]
        b, d = shape[0], int(np.prod(shape[1:]))
        a = {k: np.array(v, np.float32) for k, v in i.items()}
        chunk = 16  # small chunks: several blocks per sample
        chunks = -(-d // chunk)
        streams = [a["model_winner"], a["target_winner"], a["model_loser"], a["target_loser"], a["ref_winner"],
                   a["target_winner"], a["ref_loser"], a["target_loser"]]
        pointers = (ctypes.c_void_p * 8)(*[s.ctypes.data for s in streams])
        part = np.zeros(4 * b * chunks)
        L.emu_sq_err(pointers, ctypes.c_longlong(d), ctypes.c_longlong(chunk), b, chunks, ptr(part))
        mse = part.reshape(4, b, chunks).sum(2) / d
        # The per-sample math runs on the host in the library (diffusion_dpo.rs); repeated here in numpy.
        beta = as_f32(case["beta"])
        inside = -0.5 * beta * ((mse[0] - mse[1]) - (mse[2] - mse[3]))
        loss = np.mean(np.logaddexp(0.0, -inside))
        c = beta / (1.0 + np.exp(inside)) / (b * d)
        coef = np.concatenate([c, -c])
        gw, gl = np.zeros(b * d, np.float32), np.zeros(b * d, np.float32)
        L.emu_grad(ptr(a["model_winner"]), ptr(a["target_winner"]), ptr(a["model_loser"]), ptr(a["target_loser"]),
                   ptr(coef), b, ctypes.c_longlong(d), ptr(gw), ptr(gl), BLOCKS)
        ok &= close(f"diffusion {name} loss", loss, e["loss"])
        ok &= close(f"diffusion {name} grad winner", gw, e["grad_model_winner"])
        ok &= close(f"diffusion {name} grad loser", gl, e["grad_model_loser"])
        for s, key in enumerate(["model_mse_winner", "model_mse_loser", "ref_mse_winner", "ref_mse_loser"]):
            ok &= close(f"diffusion {name} {key}", mse[s].mean(), e[key])
    return ok


if __name__ == "__main__":
    results = {"dpo": check_dpo(), "reward models": check_reward_models(), "diffusion-dpo": check_diffusion_dpo()}
    for what, ok in results.items():
        print(f"{what}: {'ok' if ok else 'MISMATCH'}")
    sys.exit(0 if all(results.values()) else 1)
