/*
 * Calls every export of include/unireward.h from C, on the CPU: the successful paths (their inputs and outputs are
 * dumped to the file named by argv[1], and tests/c_abi.rs recomputes every output with the Rust API and compares),
 * and the failing paths (NULL pointers, wrong dtype, device, rank, strides, shapes, configs), whose status codes
 * and messages are checked here. Exits nonzero on the first failed check. tests/c_abi.rs also runs it under
 * valgrind. The Qwen2 model calls run on a fixture checkpoint whose directory, greedy prompt and expected tokens
 * tests/c_abi.rs passes as arguments, the judge calls on the tiny judge checkpoint it assembles.
 */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unireward.h"

static FILE* dump_file;
static int checks;

#define CHECK(cond, ...)                                              \
  do {                                                                \
    checks++;                                                         \
    if (!(cond)) {                                                    \
      fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                   \
      fprintf(stderr, "\n");                                          \
      exit(1);                                                        \
    }                                                                 \
  } while (0)

/* A call that must succeed. */
#define OK(call)                                                                                    \
  do {                                                                                              \
    ur_status s_ = (call);                                                                          \
    CHECK(s_ == UR_OK, "%s returned %s: %s", #call, ur_status_name(s_), ur_last_error_message());   \
  } while (0)

/* A call that must fail with `status`, with a message mentioning `needle`. */
#define FAILS(status, needle, call)                                                                        \
  do {                                                                                                     \
    ur_status s_ = (call);                                                                                 \
    const char* m_ = ur_last_error_message();                                                              \
    CHECK(s_ == (status), "%s returned %s, expected %s (message: %s)", #call, ur_status_name(s_),          \
          ur_status_name(status), m_);                                                                     \
    CHECK(strstr(m_, (needle)) != NULL, "%s: message \"%s\" does not mention \"%s\"", #call, m_, (needle)); \
  } while (0)

static const DLDataType F32 = {kDLFloat, 32, 1};
static const DLDataType F64 = {kDLFloat, 64, 1};
static const DLDataType BF16 = {kDLBfloat, 16, 1};
static const DLDataType I32 = {kDLInt, 32, 1};
static const DLDataType I64 = {kDLInt, 64, 1};

/* A DLTensor with its own shape storage (row-major, strides NULL). */
typedef struct {
  DLTensor dl;
  int64_t shape[4];
} Tensor;

static Tensor* tensor(Tensor* t, void* data, DLDataType dtype, int ndim, ...) {
  va_list ap;
  va_start(ap, ndim);
  memset(t, 0, sizeof *t);
  for (int i = 0; i < ndim; i++) t->shape[i] = va_arg(ap, int64_t);
  va_end(ap);
  t->dl.data = data;
  t->dl.device.device_type = kDLCPU;
  t->dl.ndim = ndim;
  t->dl.dtype = dtype;
  t->dl.shape = t->shape;
  return t;
}
#define D(x) ((int64_t)(x))

static int64_t numel(const DLTensor* t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

/* One line per array: key dtype ndim dims... values... (floats with 9 significant digits: exact for f32). */
static void dump(const char* key, const Tensor* t) {
  const DLTensor* d = &t->dl;
  const char* name = d->dtype.code == kDLFloat ? "f32" : d->dtype.bits == 32 ? "i32" : "i64";
  fprintf(dump_file, "%s %s %d", key, name, d->ndim);
  for (int i = 0; i < d->ndim; i++) fprintf(dump_file, " %lld", (long long)d->shape[i]);
  const char* base = (const char*)d->data + d->byte_offset;
  for (int64_t i = 0; i < numel(d); i++) {
    if (d->dtype.code == kDLFloat) fprintf(dump_file, " %.9g", ((const float*)base)[i]);
    else if (d->dtype.bits == 32) fprintf(dump_file, " %d", ((const int32_t*)base)[i]);
    else fprintf(dump_file, " %lld", (long long)((const int64_t*)base)[i]);
  }
  fprintf(dump_file, "\n");
}

static void dump_scalar(const char* key, float v) { fprintf(dump_file, "%s f32 0 %.9g\n", key, v); }

/* Values in multiples of 1/4 in [-2, 2): exact in float32 and bfloat16, so both paths see the same inputs. */
static void fill(float* x, int n, int seed) {
  for (int i = 0; i < n; i++) x[i] = (float)((i * 7 + seed * 13) % 17) * 0.25f - 2.0f;
}

static int close_to(float a, float b, float tol) { return fabsf(a - b) <= tol * (1.0f + fabsf(b)); }

static ur_context* ctx;

static void test_version_and_status(void) {
  CHECK(ur_abi_version() == UR_ABI_VERSION, "ABI %u", ur_abi_version());
  uint64_t cached = ur_host_cache_bytes();
  CHECK(ur_host_cache_release() == cached && ur_host_cache_bytes() == 0, "host cache released");
  char expected[64];
  snprintf(expected, sizeof expected, "%d.%d.%d", UR_VERSION_MAJOR, UR_VERSION_MINOR, UR_VERSION_PATCH);
  CHECK(strcmp(ur_version_string(), expected) == 0, "%s vs %s", ur_version_string(), expected);
  CHECK(strcmp(ur_status_name(UR_OK), "UR_OK") == 0, "name");
  CHECK(strcmp(ur_status_name(UR_ERROR_UNSUPPORTED), "UR_ERROR_UNSUPPORTED") == 0, "name");
  CHECK(strcmp(ur_status_name(UR_ERROR_SHAPE), "UR_ERROR_SHAPE") == 0, "name");
  CHECK(strcmp(ur_status_name(77), "UR_UNKNOWN_STATUS") == 0, "name");
  CHECK(strcmp(ur_status_name(-1), "UR_UNKNOWN_STATUS") == 0, "name");
  /* The numbers are the ABI. */
  CHECK(UR_ERROR_NULL_POINTER == 1 && UR_ERROR_DTYPE == 4 && UR_ERROR_PANIC == 9 && UR_ERROR_UNSUPPORTED == 10 &&
            UR_ERROR_CHECKPOINT == 11,
        "codes");
  CHECK(strcmp(ur_status_name(UR_ERROR_CHECKPOINT), "UR_ERROR_CHECKPOINT") == 0, "name");
}

static void test_context(void) {
  FAILS(UR_ERROR_NULL_POINTER, "out", ur_context_create(NULL));
  ur_context_free(NULL);
  ur_context* other = NULL;
  OK(ur_context_create(&other));
  CHECK(other != NULL, "context");
  ur_context_free(other);
  OK(ur_context_create(&ctx));
}

enum { N = 2, T = 3, V = 5, H = 4 };

static void test_logprobs(void) {
  float logits[N * T * V], logps[N], counts[N], mean_logits[N], entropy[N], lse[N * T];
  int64_t labels[N * T] = {1, 4, -100, 0, 2, 3};
  fill(logits, N * T * V, 1);
  Tensor tl, tlab, tlp, tc, tm, te, tlse;
  tensor(&tl, logits, F32, 3, D(N), D(T), D(V));
  tensor(&tlab, labels, I64, 2, D(N), D(T));
  tensor(&tlp, logps, F32, 1, D(N));
  tensor(&tc, counts, F32, 1, D(N));
  tensor(&tm, mean_logits, F32, 1, D(N));
  tensor(&te, entropy, F32, 1, D(N));
  tensor(&tlse, lse, F32, 2, D(N), D(T));
  OK(ur_logprobs_forward(ctx, &tl.dl, &tlab.dl, NULL, NULL, &tlp.dl, &tc.dl, &tm.dl, &te.dl, &tlse.dl, NULL));
  dump("lp.logits", &tl);
  dump("lp.labels", &tlab);
  dump("lp.logps", &tlp);
  dump("lp.counts", &tc);
  dump("lp.mean_logits", &tm);
  dump("lp.entropy", &te);
  dump("lp.lse", &tlse);
  CHECK(counts[0] == 2.0f && counts[1] == 3.0f, "counts %g %g", counts[0], counts[1]);

  /* Mean reduction, int32 labels, a float mask, explicit row-major strides and a byte offset. */
  ur_logprobs_config cfg = ur_logprobs_config_default();
  CHECK(cfg.struct_size == sizeof cfg && cfg.ignore_index == -100 && cfg.reduction == UR_REDUCTION_SUM, "defaults");
  cfg.reduction = UR_REDUCTION_MEAN;
  int32_t labels32[1 + N * T] = {99, 1, 4, -100, 0, 2, 3};
  float mask[N * T] = {1, 0, 1, 1, 1, 0};
  float mean_logps[N];
  Tensor tlab32, tmask, tmean;
  tensor(&tlab32, labels32, I32, 2, D(N), D(T));
  tlab32.dl.byte_offset = sizeof(int32_t);
  int64_t strides[3] = {T * V, V, 1};
  Tensor tl_strided = tl;
  tl_strided.dl.shape = tl_strided.shape;
  tl_strided.dl.strides = strides;
  tensor(&tmask, mask, F32, 2, D(N), D(T));
  tensor(&tmean, mean_logps, F32, 1, D(N));
  OK(ur_logprobs_forward(ctx, &tl_strided.dl, &tlab32.dl, &tmask.dl, &cfg, &tmean.dl, NULL, NULL, NULL, NULL, NULL));
  dump("lpm.mask", &tmask);
  dump("lpm.logps", &tmean);

  /* bfloat16 logits (the inputs are exact in bf16) agree with float32. */
  uint16_t logits_bf16[N * T * V];
  for (int i = 0; i < N * T * V; i++) {
    uint32_t bits;
    memcpy(&bits, &logits[i], 4);
    logits_bf16[i] = (uint16_t)(bits >> 16);
  }
  float logps_bf16[N];
  Tensor tbf, tlpb;
  tensor(&tbf, logits_bf16, BF16, 3, D(N), D(T), D(V));
  tensor(&tlpb, logps_bf16, F32, 1, D(N));
  OK(ur_logprobs_forward(ctx, &tbf.dl, &tlab.dl, NULL, NULL, &tlpb.dl, NULL, NULL, NULL, NULL, NULL));
  for (int n = 0; n < N; n++) CHECK(close_to(logps_bf16[n], logps[n], 1e-5f), "bf16 %g vs %g", logps_bf16[n], logps[n]);

  /* Backward into a separate buffer, then in place over a copy of the logits: the same gradient. */
  float grad_logps[N] = {1.0f, -0.5f}, grad[N * T * V], in_place[N * T * V];
  Tensor tg, tgrad, tip;
  tensor(&tg, grad_logps, F32, 1, D(N));
  tensor(&tgrad, grad, F32, 3, D(N), D(T), D(V));
  memset(grad, 0x7f, sizeof grad); /* garbage: every element must be written */
  OK(ur_logprobs_backward(ctx, &tl.dl, &tlab.dl, NULL, &tlse.dl, &tc.dl, &tg.dl, NULL, &tgrad.dl, NULL));
  dump("lp.grad_logps", &tg);
  dump("lp.grad", &tgrad);
  memcpy(in_place, logits, sizeof logits);
  tensor(&tip, in_place, F32, 3, D(N), D(T), D(V));
  OK(ur_logprobs_backward(ctx, &tip.dl, &tlab.dl, NULL, &tlse.dl, &tc.dl, &tg.dl, NULL, &tip.dl, NULL));
  CHECK(memcmp(in_place, grad, sizeof grad) == 0, "in-place gradient differs from the out-of-place one");
  for (int v = 0; v < V; v++) CHECK(grad[2 * V + v] == 0.0f, "ignored token has a gradient");

  /* Failing paths. */
  FAILS(UR_ERROR_NULL_POINTER, "ctx",
        ur_logprobs_forward(NULL, &tl.dl, &tlab.dl, NULL, NULL, &tlp.dl, NULL, NULL, NULL, NULL, NULL));
  FAILS(UR_ERROR_NULL_POINTER, "logits",
        ur_logprobs_forward(ctx, NULL, &tlab.dl, NULL, NULL, &tlp.dl, NULL, NULL, NULL, NULL, NULL));
  FAILS(UR_ERROR_NULL_POINTER, "logps_out",
        ur_logprobs_forward(ctx, &tl.dl, &tlab.dl, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL));
  Tensor bad = tl;
  bad.dl.shape = NULL;
  FAILS(UR_ERROR_NULL_POINTER, "logits->shape",
        ur_logprobs_forward(ctx, &bad.dl, &tlab.dl, NULL, NULL, &tlp.dl, NULL, NULL, NULL, NULL, NULL));
  bad = tl;
  bad.dl.shape = bad.shape;
  bad.dl.data = NULL;
  FAILS(UR_ERROR_NULL_POINTER, "logits->data",
        ur_logprobs_forward(ctx, &bad.dl, &tlab.dl, NULL, NULL, &tlp.dl, NULL, NULL, NULL, NULL, NULL));
  bad.dl.data = logits;
  bad.dl.dtype = F64;
  FAILS(UR_ERROR_UNSUPPORTED, "logits",
        ur_logprobs_forward(ctx, &bad.dl, &tlab.dl, NULL, NULL, &tlp.dl, NULL, NULL, NULL, NULL, NULL));
  bad.dl.dtype = I32;
  FAILS(UR_ERROR_DTYPE, "logits",
        ur_logprobs_forward(ctx, &bad.dl, &tlab.dl, NULL, NULL, &tlp.dl, NULL, NULL, NULL, NULL, NULL));
  bad.dl.dtype = F32;
  bad.dl.dtype.lanes = 4;
  FAILS(UR_ERROR_UNSUPPORTED, "lanes",
        ur_logprobs_forward(ctx, &bad.dl, &tlab.dl, NULL, NULL, &tlp.dl, NULL, NULL, NULL, NULL, NULL));
  bad.dl.dtype = F32;
  bad.dl.ndim = 2;
  bad.shape[1] = T * V;
  FAILS(UR_ERROR_SHAPE, "rank",
        ur_logprobs_forward(ctx, &bad.dl, &tlab.dl, NULL, NULL, &tlp.dl, NULL, NULL, NULL, NULL, NULL));
  bad = tl;
  bad.dl.shape = bad.shape;
  bad.dl.ndim = 99;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "ndim",
        ur_logprobs_forward(ctx, &bad.dl, &tlab.dl, NULL, NULL, &tlp.dl, NULL, NULL, NULL, NULL, NULL));
  bad.dl.ndim = 3;
  bad.shape[2] = -5;
  FAILS(UR_ERROR_SHAPE, "negative",
        ur_logprobs_forward(ctx, &bad.dl, &tlab.dl, NULL, NULL, &tlp.dl, NULL, NULL, NULL, NULL, NULL));
  bad = tl;
  bad.dl.shape = bad.shape;
  int64_t transposed[3] = {T * V, 1, T}; /* a [N,V,T] buffer viewed as [N,T,V] */
  bad.dl.strides = transposed;
  FAILS(UR_ERROR_UNSUPPORTED, "strides",
        ur_logprobs_forward(ctx, &bad.dl, &tlab.dl, NULL, NULL, &tlp.dl, NULL, NULL, NULL, NULL, NULL));
  bad.dl.strides = NULL;
  bad.dl.byte_offset = 2;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "aligned",
        ur_logprobs_forward(ctx, &bad.dl, &tlab.dl, NULL, NULL, &tlp.dl, NULL, NULL, NULL, NULL, NULL));
  bad.dl.byte_offset = 0;
  bad.dl.device.device_type = kDLOpenCL;
  FAILS(UR_ERROR_UNSUPPORTED, "device type",
        ur_logprobs_forward(ctx, &bad.dl, &tlab.dl, NULL, NULL, &tlp.dl, NULL, NULL, NULL, NULL, NULL));
  bad.dl.device.device_type = kDLCUDA;
  FAILS(UR_ERROR_DEVICE, "one device",
        ur_logprobs_forward(ctx, &bad.dl, &tlab.dl, NULL, NULL, &tlp.dl, NULL, NULL, NULL, NULL, NULL));
  Tensor short_labels;
  tensor(&short_labels, labels, I64, 2, D(N), D(T - 1));
  FAILS(UR_ERROR_SHAPE, "labels",
        ur_logprobs_forward(ctx, &tl.dl, &short_labels.dl, NULL, NULL, &tlp.dl, NULL, NULL, NULL, NULL, NULL));
  Tensor wrong_out;
  tensor(&wrong_out, logps, F32, 1, D(N + 1));
  float big[N + 1];
  wrong_out.dl.data = big;
  FAILS(UR_ERROR_SHAPE, "logps_out",
        ur_logprobs_forward(ctx, &tl.dl, &tlab.dl, NULL, NULL, &wrong_out.dl, NULL, NULL, NULL, NULL, NULL));
  int64_t int_out[N];
  tensor(&wrong_out, int_out, I64, 1, D(N));
  FAILS(UR_ERROR_DTYPE, "logps_out",
        ur_logprobs_forward(ctx, &tl.dl, &tlab.dl, NULL, NULL, &wrong_out.dl, NULL, NULL, NULL, NULL, NULL));
  int64_t bad_labels[N * T] = {1, 4, 7, 0, 2, 3};
  Tensor tbad_labels;
  tensor(&tbad_labels, bad_labels, I64, 2, D(N), D(T));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "label",
        ur_logprobs_forward(ctx, &tl.dl, &tbad_labels.dl, NULL, NULL, &tlp.dl, NULL, NULL, NULL, NULL, NULL));
  ur_logprobs_config bad_cfg = ur_logprobs_config_default();
  bad_cfg.struct_size = 8;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "struct_size",
        ur_logprobs_forward(ctx, &tl.dl, &tlab.dl, NULL, &bad_cfg, &tlp.dl, NULL, NULL, NULL, NULL, NULL));
  bad_cfg = ur_logprobs_config_default();
  bad_cfg.reduction = 7;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "reduction",
        ur_logprobs_forward(ctx, &tl.dl, &tlab.dl, NULL, &bad_cfg, &tlp.dl, NULL, NULL, NULL, NULL, NULL));
  /* A gradient buffer that half-overlaps the logits is neither in place nor separate. */
  Tensor shifted;
  tensor(&shifted, in_place, F32, 3, D(N), D(T), D(V));
  shifted.dl.byte_offset = sizeof(float);
  Tensor src_copy;
  tensor(&src_copy, in_place, F32, 3, D(N), D(T), D(V));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "overlaps",
        ur_logprobs_backward(ctx, &src_copy.dl, &tlab.dl, NULL, &tlse.dl, &tc.dl, &tg.dl, NULL, &shifted.dl, NULL));
  FAILS(UR_ERROR_NULL_POINTER, "lse",
        ur_logprobs_backward(ctx, &tl.dl, &tlab.dl, NULL, NULL, &tc.dl, &tg.dl, NULL, &tgrad.dl, NULL));
  /* A forward output written over the logits it reads. */
  Tensor logps_over_logits;
  tensor(&logps_over_logits, in_place, F32, 1, D(N));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`logps_out` overlaps `logits`",
        ur_logprobs_forward(ctx, &src_copy.dl, &tlab.dl, NULL, NULL, &logps_over_logits.dl, NULL, NULL, NULL, NULL,
                            NULL));
  Tensor lse_i64;
  tensor(&lse_i64, labels, I64, 2, D(N), D(T));
  FAILS(UR_ERROR_DTYPE, "lse",
        ur_logprobs_backward(ctx, &tl.dl, &tlab.dl, NULL, &lse_i64.dl, &tc.dl, &tg.dl, NULL, &tgrad.dl, NULL));
  /* The message of the last failure stays until the next failure. */
  OK(ur_logprobs_forward(ctx, &tl.dl, &tlab.dl, NULL, NULL, &tlp.dl, NULL, NULL, NULL, NULL, NULL));
  CHECK(strstr(ur_last_error_message(), "lse") != NULL, "message: %s", ur_last_error_message());
}

static void test_fused_linear(void) {
  float hidden[N * T * H], weight[V * H], bias[V], logps[N], lse[N * T], counts[N];
  int64_t labels[N * T] = {1, 4, -100, 0, 2, 3};
  fill(hidden, N * T * H, 2);
  fill(weight, V * H, 3);
  fill(bias, V, 4);
  Tensor th, tw, tb, tlab, tlp, tlse, tc;
  tensor(&th, hidden, F32, 3, D(N), D(T), D(H));
  tensor(&tw, weight, F32, 2, D(V), D(H));
  tensor(&tb, bias, F32, 1, D(V));
  tensor(&tlab, labels, I64, 2, D(N), D(T));
  tensor(&tlp, logps, F32, 1, D(N));
  tensor(&tlse, lse, F32, 2, D(N), D(T));
  tensor(&tc, counts, F32, 1, D(N));
  ur_fused_linear_config cfg = ur_fused_linear_config_default();
  cfg.chunk_tokens = 2;
  OK(ur_fused_linear_logprobs_forward(ctx, &th.dl, &tw.dl, &tb.dl, &tlab.dl, NULL, &cfg, &tlp.dl, &tc.dl, NULL,
                                      NULL, &tlse.dl, NULL));
  dump("fl.hidden", &th);
  dump("fl.weight", &tw);
  dump("fl.bias", &tb);
  dump("fl.labels", &tlab);
  dump("fl.logps", &tlp);
  dump("fl.lse", &tlse);
  float grad_logps[N] = {0.75f, -1.25f}, gh[N * T * H], gw[V * H], gb[V];
  Tensor tg, tgh, tgw, tgb;
  tensor(&tg, grad_logps, F32, 1, D(N));
  tensor(&tgh, gh, F32, 3, D(N), D(T), D(H));
  tensor(&tgw, gw, F32, 2, D(V), D(H));
  tensor(&tgb, gb, F32, 1, D(V));
  OK(ur_fused_linear_logprobs_backward(ctx, &th.dl, &tw.dl, &tb.dl, &tlab.dl, NULL, &tlse.dl, &tg.dl, &cfg,
                                       &tgh.dl, &tgw.dl, &tgb.dl, NULL));
  dump("fl.grad_logps", &tg);
  dump("fl.grad_hidden", &tgh);
  dump("fl.grad_weight", &tgw);
  dump("fl.grad_bias", &tgb);

  FAILS(UR_ERROR_NULL_POINTER, "grad_bias_out",
        ur_fused_linear_logprobs_backward(ctx, &th.dl, &tw.dl, &tb.dl, &tlab.dl, NULL, &tlse.dl, &tg.dl, &cfg,
                                          &tgh.dl, &tgw.dl, NULL, NULL));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "grad_bias_out",
        ur_fused_linear_logprobs_backward(ctx, &th.dl, &tw.dl, NULL, &tlab.dl, NULL, &tlse.dl, &tg.dl, &cfg,
                                          &tgh.dl, &tgw.dl, &tgb.dl, NULL));
  Tensor wrong_w;
  tensor(&wrong_w, weight, F32, 2, D(H), D(V));
  FAILS(UR_ERROR_SHAPE, "weight",
        ur_fused_linear_logprobs_forward(ctx, &th.dl, &wrong_w.dl, NULL, &tlab.dl, NULL, NULL, &tlp.dl, NULL, NULL,
                                         NULL, NULL, NULL));
  float wrong_grad_w[V * H];
  tensor(&wrong_w, wrong_grad_w, F32, 2, D(H), D(V));
  FAILS(UR_ERROR_SHAPE, "grad_weight_out",
        ur_fused_linear_logprobs_backward(ctx, &th.dl, &tw.dl, &tb.dl, &tlab.dl, NULL, &tlse.dl, &tg.dl, &cfg,
                                          &tgh.dl, &wrong_w.dl, &tgb.dl, NULL));
}

enum { P = 3 };

static void test_dpo(void) {
  float pc[P] = {-3.0f, -5.5f, -2.25f}, pr[P] = {-4.0f, -5.0f, -6.0f};
  float rc[P] = {-3.5f, -5.0f, -2.75f}, rr[P] = {-3.75f, -5.25f, -5.5f};
  int64_t lc[P] = {3, 5, 2}, lr[P] = {4, 6, 5};
  float gc[P], gr[P], loss;
  ur_dpo_metrics m = {.struct_size = sizeof m};
  Tensor tpc, tpr, trc, trr, tlc, tlr, tgc, tgr;
  tensor(&tpc, pc, F32, 1, D(P));
  tensor(&tpr, pr, F32, 1, D(P));
  tensor(&trc, rc, F32, 1, D(P));
  tensor(&trr, rr, F32, 1, D(P));
  tensor(&tlc, lc, I64, 1, D(P));
  tensor(&tlr, lr, I64, 1, D(P));
  tensor(&tgc, gc, F32, 1, D(P));
  tensor(&tgr, gr, F32, 1, D(P));
  dump("dpo.pc", &tpc);
  dump("dpo.pr", &tpr);
  dump("dpo.rc", &trc);
  dump("dpo.rr", &trr);
  dump("dpo.lc", &tlc);
  dump("dpo.lr", &tlr);
  const int32_t types[] = {UR_DPO_SIGMOID, UR_DPO_IPO, UR_DPO_SIMPO, UR_DPO_APO_ZERO};
  for (unsigned k = 0; k < sizeof types / sizeof types[0]; k++) {
    ur_dpo_config cfg = ur_dpo_config_default();
    cfg.loss_type = types[k];
    cfg.beta = 0.5f;
    cfg.use_rpo_alpha = k == 0;
    cfg.rpo_alpha = 0.25f;
    OK(ur_dpo_loss(ctx, &tpc.dl, &tpr.dl, &trc.dl, &trr.dl, &tlc.dl, &tlr.dl, &cfg, &loss, &tgc.dl, &tgr.dl, &m,
                   NULL));
    char key[64];
    snprintf(key, sizeof key, "dpo%d.loss", types[k]);
    dump_scalar(key, loss);
    snprintf(key, sizeof key, "dpo%d.gc", types[k]);
    dump(key, &tgc);
    snprintf(key, sizeof key, "dpo%d.gr", types[k]);
    dump(key, &tgr);
    snprintf(key, sizeof key, "dpo%d.margins", types[k]);
    dump_scalar(key, m.rewards_margins);
    snprintf(key, sizeof key, "dpo%d.accuracies", types[k]);
    dump_scalar(key, m.rewards_accuracies);
    CHECK(k == 0 ? !isnan(m.nll_loss) : isnan(m.nll_loss), "nll_loss %g", m.nll_loss);
  }
  /* The defaults are TRL's, and NULL means the defaults. */
  ur_dpo_config d = ur_dpo_config_default();
  CHECK(d.struct_size == sizeof d && d.loss_type == UR_DPO_SIGMOID && d.beta == 0.1f && d.grad_output == 1.0f, "defaults");
  float loss_null_cfg, loss_default_cfg;
  OK(ur_dpo_loss(ctx, &tpc.dl, &tpr.dl, &trc.dl, &trr.dl, NULL, NULL, NULL, &loss_null_cfg, &tgc.dl, &tgr.dl, NULL,
                 NULL));
  OK(ur_dpo_loss(ctx, &tpc.dl, &tpr.dl, &trc.dl, &trr.dl, NULL, NULL, &d, &loss_default_cfg, &tgc.dl, &tgr.dl, NULL,
                 NULL));
  CHECK(loss_null_cfg == loss_default_cfg, "%g vs %g", loss_null_cfg, loss_default_cfg);
  /* Extensible structs: a caller built against ABI 2's header (the struct ended at grad_output) gets the defaults of
     the later fields; a newer caller's longer struct is accepted when its unknown fields are zero. */
  {
    struct {
      ur_dpo_config c;
      uint64_t newer_field;
    } longer = {ur_dpo_config_default(), 0};
    float loss_old, loss_new;
    ur_dpo_config old = ur_dpo_config_default();
    old.struct_size = offsetof(ur_dpo_config, f_divergence_type);
    old.f_divergence_type = 99; /* past the caller's struct: never read */
    OK(ur_dpo_loss(ctx, &tpc.dl, &tpr.dl, &trc.dl, &trr.dl, NULL, NULL, &old, &loss_old, &tgc.dl, &tgr.dl, NULL, NULL));
    CHECK(loss_old == loss_default_cfg, "an ABI 2 config: %g vs %g", loss_old, loss_default_cfg);
    longer.c.struct_size = sizeof longer;
    OK(ur_dpo_loss(ctx, &tpc.dl, &tpr.dl, &trc.dl, &trr.dl, NULL, NULL, &longer.c, &loss_new, &tgc.dl, &tgr.dl, NULL,
                   NULL));
    CHECK(loss_new == loss_default_cfg, "a longer config: %g vs %g", loss_new, loss_default_cfg);
    longer.newer_field = 1;
    FAILS(UR_ERROR_INVALID_ARGUMENT, "does not know",
          ur_dpo_loss(ctx, &tpc.dl, &tpr.dl, &trc.dl, &trr.dl, NULL, NULL, &longer.c, &loss_new, &tgc.dl, &tgr.dl, NULL,
                      NULL));
    old.struct_size = offsetof(ur_dpo_config, grad_output); /* shorter than any released struct */
    FAILS(UR_ERROR_INVALID_ARGUMENT, "struct_size",
          ur_dpo_loss(ctx, &tpc.dl, &tpr.dl, &trc.dl, &trr.dl, NULL, NULL, &old, &loss_old, &tgc.dl, &tgr.dl, NULL, NULL));
    /* WPO's flag (where a reserved field was) needs the pair weights. */
    ur_dpo_config weighted = ur_dpo_config_default();
    weighted.use_weighting = 1;
    FAILS(UR_ERROR_INVALID_ARGUMENT, "`use_weighting` needs `pair_weights`",
          ur_dpo_loss(ctx, &tpc.dl, &tpr.dl, &trc.dl, &trr.dl, NULL, NULL, &weighted, &loss_old, &tgc.dl, &tgr.dl,
                      NULL, NULL));
  }
  /* Outputs over inputs or over each other are refused (one shared check for every export). */
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`grad_policy_chosen_out` overlaps `policy_chosen`",
        ur_dpo_loss(ctx, &tpc.dl, &tpr.dl, &trc.dl, &trr.dl, NULL, NULL, NULL, &loss_null_cfg, &tpc.dl, &tgr.dl, NULL,
                    NULL));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "overlaps",
        ur_dpo_loss(ctx, &tpc.dl, &tpr.dl, &trc.dl, &trr.dl, NULL, NULL, NULL, &loss_null_cfg, &tgc.dl, &tgc.dl, NULL,
                    NULL));

  FAILS(UR_ERROR_NULL_POINTER, "loss_out",
        ur_dpo_loss(ctx, &tpc.dl, &tpr.dl, &trc.dl, &trr.dl, NULL, NULL, NULL, NULL, &tgc.dl, &tgr.dl, NULL, NULL));
  FAILS(UR_ERROR_NULL_POINTER, "grad_policy_rejected_out",
        ur_dpo_loss(ctx, &tpc.dl, &tpr.dl, &trc.dl, &trr.dl, NULL, NULL, NULL, &loss, &tgc.dl, NULL, NULL, NULL));
  /* A mixture (TRL's loss_type list with loss_weights) with BCO's running mean and the per-pair losses. */
  {
    const int32_t types[2] = {UR_DPO_SIGMOID, UR_DPO_BCO_PAIR};
    const float weights[2] = {0.8f, 0.2f};
    float l[P];
    Tensor losses;
    tensor(&losses, l, F32, 1, D(P));
    ur_dpo_config mix = ur_dpo_config_default();
    mix.num_loss_types = 2;
    mix.loss_types = types;
    mix.loss_weights = weights;
    mix.losses_out = &losses.dl;
    ur_dpo_metrics m = {.struct_size = sizeof m};
    OK(ur_dpo_loss(ctx, &tpc.dl, &tpr.dl, &trc.dl, &trr.dl, NULL, NULL, &mix, &loss, &tgc.dl, &tgr.dl, &m, NULL));
    CHECK(fabsf(loss - (l[0] + l[1] + l[2]) / 3.0f) <= 1e-6f * fabsf(loss), "mixture loss %g vs losses %g %g %g", loss,
          l[0], l[1], l[2]);
    CHECK(m.bco_count == 1.0f && !isnan(m.bco_delta), "bco state %g %g", m.bco_delta, m.bco_count);
    mix.loss_weights = NULL;
    FAILS(UR_ERROR_NULL_POINTER, "loss_weights",
          ur_dpo_loss(ctx, &tpc.dl, &tpr.dl, &trc.dl, &trr.dl, NULL, NULL, &mix, &loss, &tgc.dl, &tgr.dl, NULL, NULL));
  }
  d.loss_type = UR_DPO_DISCOPOP + 1;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "loss_type",
        ur_dpo_loss(ctx, &tpc.dl, &tpr.dl, &trc.dl, &trr.dl, NULL, NULL, &d, &loss, &tgc.dl, &tgr.dl, NULL, NULL));
  d = ur_dpo_config_default();
  d.beta = -1.0f;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "beta",
        ur_dpo_loss(ctx, &tpc.dl, &tpr.dl, &trc.dl, &trr.dl, NULL, NULL, &d, &loss, &tgc.dl, &tgr.dl, NULL, NULL));
  Tensor two;
  tensor(&two, pr, F32, 1, D(2));
  FAILS(UR_ERROR_SHAPE, "policy_rejected",
        ur_dpo_loss(ctx, &tpc.dl, &two.dl, &trc.dl, &trr.dl, NULL, NULL, NULL, &loss, &tgc.dl, &tgr.dl, NULL, NULL));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "reference",
        ur_dpo_loss(ctx, &tpc.dl, &tpr.dl, NULL, NULL, NULL, NULL, NULL, &loss, &tgc.dl, &tgr.dl, NULL, NULL));
}

static void test_reward_losses(void) {
  float chosen[P] = {1.5f, -0.25f, 0.75f}, rejected[P] = {0.5f, 0.25f, -1.0f}, margin[P] = {0.5f, 0.0f, 1.0f};
  float gc[P], gr[P], loss;
  ur_bradley_terry_metrics bm = {.struct_size = sizeof bm};
  Tensor tc, tr, tm, tgc, tgr;
  tensor(&tc, chosen, F32, 1, D(P));
  tensor(&tr, rejected, F32, 1, D(P));
  tensor(&tm, margin, F32, 1, D(P));
  tensor(&tgc, gc, F32, 1, D(P));
  tensor(&tgr, gr, F32, 1, D(P));
  ur_bradley_terry_config bcfg = ur_bradley_terry_config_default();
  bcfg.center_rewards_coefficient = 0.01f;
  OK(ur_bradley_terry_loss(ctx, &tc.dl, &tr.dl, &tm.dl, &bcfg, &loss, &tgc.dl, &tgr.dl, &bm, NULL));
  dump("bt.chosen", &tc);
  dump("bt.rejected", &tr);
  dump("bt.margin", &tm);
  dump_scalar("bt.loss", loss);
  dump("bt.gc", &tgc);
  dump("bt.gr", &tgr);
  dump_scalar("bt.accuracy", bm.accuracy);
  CHECK(close_to(bm.accuracy, 2.0f / 3.0f, 1e-6f), "accuracy %g", bm.accuracy);
  /* Metrics structs are extensible: a newer caller's longer struct keeps its unknown fields, a struct shorter than
     any released one is refused before any output is written. */
  {
    struct {
      ur_bradley_terry_metrics m;
      float newer_field;
    } longer = {.m = {.struct_size = sizeof longer}, .newer_field = 42.0f};
    OK(ur_bradley_terry_loss(ctx, &tc.dl, &tr.dl, &tm.dl, &bcfg, &loss, &tgc.dl, &tgr.dl, &longer.m, NULL));
    CHECK(longer.m.accuracy == bm.accuracy && longer.newer_field == 42.0f && longer.m.struct_size == sizeof longer,
          "a longer metrics struct: %g, %g", longer.m.accuracy, longer.newer_field);
    ur_bradley_terry_metrics shorter = {.struct_size = offsetof(ur_bradley_terry_metrics, center_term)};
    shorter.center_term = 7.0f;
    float loss_before = -1.0f, gc_before = gc[0] = -3.0f;
    loss = loss_before;
    FAILS(UR_ERROR_INVALID_ARGUMENT, "ur_bradley_terry_metrics.struct_size",
          ur_bradley_terry_loss(ctx, &tc.dl, &tr.dl, &tm.dl, &bcfg, &loss, &tgc.dl, &tgr.dl, &shorter, NULL));
    CHECK(loss == loss_before && gc[0] == gc_before && shorter.center_term == 7.0f, "a refused call wrote its outputs");
    ur_bradley_terry_metrics unset = {0};
    FAILS(UR_ERROR_INVALID_ARGUMENT, "sizeof(ur_bradley_terry_metrics)",
          ur_bradley_terry_loss(ctx, &tc.dl, &tr.dl, &tm.dl, &bcfg, &loss, &tgc.dl, &tgr.dl, &unset, NULL));
    /* Host outputs over a CPU input or over each other are refused like output tensors. */
    FAILS(UR_ERROR_INVALID_ARGUMENT, "`loss_out` overlaps `rewards_chosen`",
          ur_bradley_terry_loss(ctx, &tc.dl, &tr.dl, &tm.dl, &bcfg, &chosen[1], &tgc.dl, &tgr.dl, NULL, NULL));
    CHECK(chosen[1] == -0.25f, "loss written over an input");
    FAILS(UR_ERROR_INVALID_ARGUMENT, "`loss_out` overlaps `metrics_out`",
          ur_bradley_terry_loss(ctx, &tc.dl, &tr.dl, &tm.dl, &bcfg, &bm.accuracy, &tgc.dl, &tgr.dl, &bm, NULL));
  }
  FAILS(UR_ERROR_NULL_POINTER, "rewards_rejected",
        ur_bradley_terry_loss(ctx, &tc.dl, NULL, NULL, NULL, &loss, &tgc.dl, &tgr.dl, NULL, NULL));
  Tensor ints;
  int32_t int_rewards[P] = {1, 2, 3};
  tensor(&ints, int_rewards, I32, 1, D(P));
  FAILS(UR_ERROR_DTYPE, "rewards_chosen",
        ur_bradley_terry_loss(ctx, &ints.dl, &tr.dl, NULL, NULL, &loss, &tgc.dl, &tgr.dl, NULL, NULL));

  enum { G = 2, K = 3 };
  float rewards[G * K] = {0.5f, 1.0f, -0.5f, 2.0f, 0.0f, 0.25f}, grad[G * K], accuracy;
  int64_t order[G * K] = {1, 0, 2, 0, 2, 1};
  Tensor trw, to, tgrad;
  tensor(&trw, rewards, F32, 2, D(G), D(K));
  tensor(&to, order, I64, 2, D(G), D(K));
  tensor(&tgrad, grad, F32, 2, D(G), D(K));
  ur_kwise_config kcfg = ur_kwise_config_default();
  kcfg.method = UR_KWISE_PLACKETT_LUCE;
  OK(ur_kwise_loss(ctx, &trw.dl, &to.dl, &kcfg, &loss, &tgrad.dl, &accuracy, NULL));
  dump("kw.rewards", &trw);
  dump("kw.order", &to);
  dump_scalar("kw.loss", loss);
  dump("kw.grad", &tgrad);
  dump_scalar("kw.accuracy", accuracy);
  CHECK(accuracy == 1.0f, "accuracy %g", accuracy);
  int64_t not_perm[G * K] = {0, 0, 2, 0, 1, 2};
  Tensor tnp;
  tensor(&tnp, not_perm, I64, 2, D(G), D(K));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "permutation", ur_kwise_loss(ctx, &trw.dl, &tnp.dl, NULL, &loss, &tgrad.dl, NULL, NULL));
  kcfg.method = -1;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "method", ur_kwise_loss(ctx, &trw.dl, NULL, &kcfg, &loss, &tgrad.dl, NULL, NULL));

  enum { B = 2, C = 2, W = 3 };
  float x[6][B * C * W], gw[B * C * W], gl[B * C * W];
  for (int s = 0; s < 6; s++) fill(x[s], B * C * W, 10 + s);
  Tensor tx[6], tgw, tgl;
  const char* names[6] = {"dd.mw", "dd.ml", "dd.rw", "dd.rl", "dd.tw", "dd.tl"};
  for (int s = 0; s < 6; s++) {
    tensor(&tx[s], x[s], F32, 3, D(B), D(C), D(W));
    dump(names[s], &tx[s]);
  }
  tensor(&tgw, gw, F32, 3, D(B), D(C), D(W));
  tensor(&tgl, gl, F32, 3, D(B), D(C), D(W));
  ur_diffusion_dpo_config dcfg = ur_diffusion_dpo_config_default();
  dcfg.beta = 5.0f;
  ur_diffusion_dpo_metrics dm = {.struct_size = sizeof dm};
  OK(ur_diffusion_dpo_loss(ctx, &tx[0].dl, &tx[1].dl, &tx[2].dl, &tx[3].dl, &tx[4].dl, &tx[5].dl, &dcfg, &loss,
                           &tgw.dl, &tgl.dl, &dm, NULL));
  dump_scalar("dd.loss", loss);
  dump("dd.gw", &tgw);
  dump("dd.gl", &tgl);
  dump_scalar("dd.model_mse_winner", dm.model_mse_winner);
  Tensor flat;
  tensor(&flat, x[1], F32, 2, D(B), D(C * W));
  FAILS(UR_ERROR_SHAPE, "model_loser",
        ur_diffusion_dpo_loss(ctx, &tx[0].dl, &flat.dl, &tx[2].dl, &tx[3].dl, &tx[4].dl, &tx[5].dl, &dcfg, &loss,
                              &tgw.dl, &tgl.dl, NULL, NULL));
}

static void test_heads(void) {
  enum { C = 2 };
  float hidden[N * T * H], weight[C * H], bias[C], rewards[N * C];
  int64_t ends[N] = {2, 0};
  fill(hidden, N * T * H, 5);
  fill(weight, C * H, 6);
  fill(bias, C, 7);
  Tensor th, te, tw, tb, tr;
  tensor(&th, hidden, F32, 3, D(N), D(T), D(H));
  tensor(&te, ends, I64, 1, D(N));
  tensor(&tw, weight, F32, 2, D(C), D(H));
  tensor(&tb, bias, F32, 1, D(C));
  tensor(&tr, rewards, F32, 2, D(N), D(C));
  OK(ur_scalar_head_forward(ctx, &th.dl, &te.dl, &tw.dl, &tb.dl, &tr.dl, NULL));
  dump("sh.hidden", &th);
  dump("sh.ends", &te);
  dump("sh.weight", &tw);
  dump("sh.bias", &tb);
  dump("sh.rewards", &tr);
  float grad_rewards[N * C] = {1.0f, -0.5f, 0.25f, 2.0f}, gh[N * T * H], gw[C * H], gb[C];
  Tensor tgr, tgh, tgw, tgb;
  tensor(&tgr, grad_rewards, F32, 2, D(N), D(C));
  tensor(&tgh, gh, F32, 3, D(N), D(T), D(H));
  tensor(&tgw, gw, F32, 2, D(C), D(H));
  tensor(&tgb, gb, F32, 1, D(C));
  OK(ur_scalar_head_backward(ctx, &th.dl, &te.dl, &tw.dl, &tb.dl, &tgr.dl, &tgh.dl, &tgw.dl, &tgb.dl, NULL));
  dump("sh.grad_rewards", &tgr);
  dump("sh.gh", &tgh);
  dump("sh.gw", &tgw);
  dump("sh.gb", &tgb);
  int64_t far_ends[N] = {2, 3};
  Tensor tfe;
  tensor(&tfe, far_ends, I64, 1, D(N));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "ends[1]", ur_scalar_head_forward(ctx, &th.dl, &tfe.dl, &tw.dl, &tb.dl, &tr.dl, NULL));
  FAILS(UR_ERROR_NULL_POINTER, "grad_bias_out",
        ur_scalar_head_backward(ctx, &th.dl, &te.dl, &tw.dl, &tb.dl, &tgr.dl, &tgh.dl, &tgw.dl, NULL, NULL));

  enum { B = 2, VV = 6, K = 3 };
  float logits[B * VV], probs[B * K], log_probs[B * K], expected[B], values[K] = {1.0f, 2.0f, 3.0f};
  int64_t offsets[K + 1] = {0, 2, 3, 4}, ids[4] = {0, 1, 3, 5};
  fill(logits, B * VV, 8);
  Tensor tl, to, ti, tp, tlp, tex;
  tensor(&tl, logits, F32, 2, D(B), D(VV));
  tensor(&to, offsets, I64, 1, D(K + 1));
  tensor(&ti, ids, I64, 1, D(4));
  tensor(&tp, probs, F32, 2, D(B), D(K));
  tensor(&tlp, log_probs, F32, 2, D(B), D(K));
  tensor(&tex, expected, F32, 1, D(B));
  OK(ur_verdict_head_forward(ctx, &tl.dl, &to.dl, &ti.dl, values, K, &tp.dl, &tlp.dl, &tex.dl, NULL));
  dump("vh.logits", &tl);
  dump("vh.probs", &tp);
  dump("vh.log_probs", &tlp);
  dump("vh.expected", &tex);
  for (int b = 0; b < B; b++) {
    float sum = probs[b * K] + probs[b * K + 1] + probs[b * K + 2];
    CHECK(close_to(sum, 1.0f, 1e-6f), "probabilities sum to %g", sum);
  }
  float g_lp[B * K] = {1.0f, 0.0f, -1.0f, 0.5f, 0.5f, 0.0f}, g_es[B] = {1.0f, -2.0f}, grad[B * VV];
  Tensor tglp, tges, tgrad;
  tensor(&tglp, g_lp, F32, 2, D(B), D(K));
  tensor(&tges, g_es, F32, 1, D(B));
  tensor(&tgrad, grad, F32, 2, D(B), D(VV));
  memset(grad, 0x7f, sizeof grad); /* garbage: every element must be written */
  OK(ur_verdict_head_backward(ctx, &tl.dl, &to.dl, &ti.dl, values, K, &tglp.dl, &tges.dl, &tgrad.dl, NULL));
  dump("vh.g_lp", &tglp);
  dump("vh.g_es", &tges);
  dump("vh.grad", &tgrad);
  CHECK(grad[2] == 0.0f && grad[VV + 4] == 0.0f, "unlisted ids have no gradient");
  FAILS(UR_ERROR_INVALID_ARGUMENT, "class_values",
        ur_verdict_head_forward(ctx, &tl.dl, &to.dl, &ti.dl, NULL, 0, &tp.dl, &tlp.dl, &tex.dl, NULL));
  /* A count other than K is refused before the values are read (one float would be read past as three). */
  FAILS(UR_ERROR_INVALID_ARGUMENT, "num_class_values",
        ur_verdict_head_forward(ctx, &tl.dl, &to.dl, &ti.dl, values, 1, &tp.dl, &tlp.dl, &tex.dl, NULL));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "num_class_values",
        ur_verdict_head_backward(ctx, &tl.dl, &to.dl, &ti.dl, values, K + 1, &tglp.dl, &tges.dl, &tgrad.dl, NULL));
  int64_t overlapping[4] = {0, 1, 1, 5};
  Tensor tov;
  tensor(&tov, overlapping, I64, 1, D(4));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "disjoint",
        ur_verdict_head_forward(ctx, &tl.dl, &to.dl, &tov.dl, NULL, 0, &tp.dl, NULL, NULL, NULL));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "grads",
        ur_verdict_head_backward(ctx, &tl.dl, &to.dl, &ti.dl, NULL, 0, NULL, NULL, &tgrad.dl, NULL));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "overlaps",
        ur_verdict_head_backward(ctx, &tl.dl, &to.dl, &ti.dl, NULL, 0, &tglp.dl, NULL, &tl.dl, NULL));
}

static void test_compare(void) {
  enum { G = 2, K = 3 };
  float scores[G * K] = {0.5f, 2.0f, -1.0f, 1.0f, 1.0f, 0.0f};
  float pref[G * K * K], wins[G * K], strengths[G * K];
  int32_t copeland[G * K], ranks[G * K], iters[G], conv[G], best[G], worst[G];
  Tensor ts, tpref, twins, tcop, tranks, tstr, tit, tconv, tbest, tworst;
  tensor(&ts, scores, F32, 2, D(G), D(K));
  tensor(&tpref, pref, F32, 3, D(G), D(K), D(K));
  tensor(&twins, wins, F32, 2, D(G), D(K));
  tensor(&tcop, copeland, I32, 2, D(G), D(K));
  tensor(&tranks, ranks, I32, 2, D(G), D(K));
  tensor(&tstr, strengths, F32, 2, D(G), D(K));
  tensor(&tit, iters, I32, 1, D(G));
  tensor(&tconv, conv, I32, 1, D(G));
  tensor(&tbest, best, I32, 1, D(G));
  tensor(&tworst, worst, I32, 1, D(G));
  OK(ur_compare(ctx, &ts.dl, NULL, &tpref.dl, &twins.dl, &tcop.dl, &tranks.dl, &tstr.dl, &tit.dl, &tconv.dl,
                &tbest.dl, &tworst.dl, NULL, NULL));
  dump("cmp.scores", &ts);
  dump("cmp.pref", &tpref);
  dump("cmp.wins", &twins);
  dump("cmp.copeland", &tcop);
  dump("cmp.ranks", &tranks);
  dump("cmp.strengths", &tstr);
  dump("cmp.best", &tbest);
  dump("cmp.worst", &tworst);
  CHECK(best[0] == 1 && worst[0] == 2, "best %d worst %d", best[0], worst[0]);

  float log_odds[K * K] = {0.0f, 1.0f, -2.0f, -0.5f, 0.0f, 1.5f, 2.5f, -1.0f, 0.0f}, consistency[1], pref1[K * K];
  Tensor tlo, tcons, tp1;
  tensor(&tlo, log_odds, F32, 3, D(1), D(K), D(K));
  tensor(&tcons, consistency, F32, 1, D(1));
  tensor(&tp1, pref1, F32, 3, D(1), D(K), D(K));
  ur_compare_config cfg = ur_compare_config_default();
  cfg.verdict_kind = UR_VERDICTS_LOG_ODDS;
  OK(ur_compare(ctx, &tlo.dl, &cfg, &tp1.dl, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, &tcons.dl, NULL));
  dump("cmpl.log_odds", &tlo);
  dump("cmpl.pref", &tp1);
  dump("cmpl.consistency", &tcons);
  FAILS(UR_ERROR_INVALID_ARGUMENT, "consistency_out",
        ur_compare(ctx, &ts.dl, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, &tcons.dl, NULL));
  FAILS(UR_ERROR_SHAPE, "log_odds", ur_compare(ctx, &ts.dl, &cfg, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL));
  cfg = ur_compare_config_default();
  cfg.ridge = 0.0f;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "ridge", ur_compare(ctx, &ts.dl, &cfg, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL));
  FAILS(UR_ERROR_DTYPE, "ranks_out",
        ur_compare(ctx, &ts.dl, NULL, NULL, NULL, NULL, &twins.dl, NULL, NULL, NULL, NULL, NULL, NULL, NULL));

  enum { K4 = 4 };
  float verdicts[G * K4] = {1.0f, 0.0f, 3.0f, 2.0f, 0.0f, 1.0f, 1.0f, 1.0f};
  float pointwise[G * K4] = {7.0f, 5.0f, 9.0f, 4.0f, 3.0f, 8.0f, 6.0f, 2.0f};
  int32_t chosen[G], rejected[G], kept[G];
  float chosen_score[G], rejected_score[G];
  Tensor tv, tpw, tch, trj, tcs, trs, tk;
  tensor(&tv, verdicts, F32, 2, D(G), D(K4));
  tensor(&tpw, pointwise, F32, 2, D(G), D(K4));
  tensor(&tch, chosen, I32, 1, D(G));
  tensor(&trj, rejected, I32, 1, D(G));
  tensor(&tcs, chosen_score, F32, 1, D(G));
  tensor(&trs, rejected_score, F32, 1, D(G));
  tensor(&tk, kept, I32, 1, D(G));
  OK(ur_select_pairs(ctx, &tv.dl, &tpw.dl, NULL, &tch.dl, &trj.dl, &tcs.dl, &trs.dl, &tk.dl, NULL));
  dump("sel.verdicts", &tv);
  dump("sel.pointwise", &tpw);
  dump("sel.chosen", &tch);
  dump("sel.rejected", &trj);
  dump("sel.chosen_score", &tcs);
  dump("sel.kept", &tk);
  CHECK(chosen[0] == 2 && rejected[0] == 3 && kept[0] == 1, "group 0: %d %d %d", chosen[0], rejected[0], kept[0]);
  ur_select_config scfg = ur_select_config_default();
  scfg.ties = 3;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "ties", ur_select_pairs(ctx, &tv.dl, &tpw.dl, &scfg, &tch.dl, NULL, NULL, NULL, NULL, NULL));
  Tensor tpw_i32;
  tensor(&tpw_i32, chosen, I32, 2, D(G), D(K4));
  FAILS(UR_ERROR_DTYPE, "pointwise", ur_select_pairs(ctx, &tv.dl, &tpw_i32.dl, NULL, NULL, NULL, NULL, NULL, NULL, NULL));
}

/* "1,2,3" into ids[]; returns the count. */
static size_t parse_ids(const char* text, int32_t* ids, size_t capacity) {
  size_t n = 0;
  for (const char* p = text; *p && n < capacity;) {
    char* end;
    ids[n++] = (int32_t)strtol(p, &end, 10);
    p = *end == ',' ? end + 1 : end;
  }
  return n;
}

enum { MN = 2, MT = 5, MV = 128, MH = 32, MAX_TOKENS = 64 };

/* The Qwen2 fixture `dir` (tests/fixtures/qwen2/gqa_untied): load, info, parameters, forward (logits dumped for
 * tests/c_abi.rs to recompute), backward, every gradient by name (dumped), greedy generation from `prompt` equal to
 * `expected` (the float64 reference's tokens), and the failing paths. */
static void test_model(const char* dir, const char* prompt_text, const char* expected_text) {
  const DLDataType f32 = F32;
  const DLDevice cpu = {kDLCPU, 0};
  ur_model* model = NULL;
  FAILS(UR_ERROR_NULL_POINTER, "ctx", ur_model_load(NULL, dir, f32, cpu, &model));
  FAILS(UR_ERROR_NULL_POINTER, "dir", ur_model_load(ctx, NULL, f32, cpu, &model));
  FAILS(UR_ERROR_NULL_POINTER, "out", ur_model_load(ctx, dir, f32, cpu, NULL));
  FAILS(UR_ERROR_CHECKPOINT, "/no/such/model/config.json", ur_model_load(ctx, "/no/such/model", f32, cpu, &model));
  FAILS(UR_ERROR_DTYPE, "dtype", ur_model_load(ctx, dir, I32, cpu, &model));
  const DLDevice vulkan = {7, 0};
  FAILS(UR_ERROR_UNSUPPORTED, "device", ur_model_load(ctx, dir, f32, vulkan, &model));
  CHECK(model == NULL, "a failed load wrote *out");
  ur_model_free(NULL);
  OK(ur_model_load(ctx, dir, f32, cpu, &model));

  ur_model_info info;
  memset(&info, 0, sizeof info);
  FAILS(UR_ERROR_INVALID_ARGUMENT, "struct_size", ur_model_get_info(model, &info));
  info.struct_size = sizeof info;
  FAILS(UR_ERROR_NULL_POINTER, "model", ur_model_get_info(NULL, &info));
  FAILS(UR_ERROR_NULL_POINTER, "out", ur_model_get_info(model, NULL));
  OK(ur_model_get_info(model, &info));
  CHECK(info.vocab_size == MV && info.hidden_size == MH && info.intermediate_size == 64 && info.num_layers == 2 &&
            info.num_attention_heads == 4 && info.num_key_value_heads == 2 && info.max_position_embeddings == 64 &&
            info.tie_word_embeddings == 0,
        "info: vocab %llu hidden %llu layers %llu", (unsigned long long)info.vocab_size,
        (unsigned long long)info.hidden_size, (unsigned long long)info.num_layers);
  CHECK(info.dtype.code == kDLFloat && info.dtype.bits == 32 && info.device.device_type == kDLCPU, "dtype/device");
  CHECK(info.architecture == UR_ARCHITECTURE_QWEN2 && info.image_token_id == -1 && info.video_token_id == -1,
        "architecture %d", info.architecture);
  /* A caller built before the architecture fields passes the shorter struct: they are left as they were. */
  ur_model_info older;
  memset(&older, 0x5a, sizeof older);
  older.struct_size = (uint32_t)offsetof(ur_model_info, architecture);
  OK(ur_model_get_info(model, &older));
  CHECK(older.vocab_size == MV && older.architecture == 0x5a5a5a5a && older.image_token_id == 0x5a5a5a5a5a5a5a5a,
        "an older caller's struct was written past its size");

  /* Load options: the defaults are strict; a strict load ignores nothing; lenient and check_finite load this
     clean checkpoint too; a bad struct_size is refused. */
  ur_load_options options = ur_load_options_default();
  CHECK(options.struct_size == sizeof options && options.lenient == 0 && options.check_finite == 0, "load defaults");
  size_t ignored = 99;
  FAILS(UR_ERROR_NULL_POINTER, "out", ur_model_ignored_count(model, NULL));
  OK(ur_model_ignored_count(model, &ignored));
  CHECK(ignored == 0, "a strict load ignored %zu tensors", ignored);
  const char* ignored_name = NULL;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "0 ignored tensors", ur_model_ignored_name(model, 0, &ignored_name));
  options.lenient = 1;
  options.check_finite = 1;
  ur_model* checked = NULL;
  OK(ur_model_load_ex(ctx, dir, f32, cpu, &options, &checked));
  OK(ur_model_ignored_count(checked, &ignored));
  CHECK(ignored == 0, "a lenient load of a clean checkpoint ignored %zu tensors", ignored);
  ur_model_free(checked);
  options.struct_size = 4;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "ur_load_options", ur_model_load_ex(ctx, dir, f32, cpu, &options, &checked));

  /* Parameters: names, shapes, and their sizes add up to num_parameters. */
  size_t count = 0;
  FAILS(UR_ERROR_NULL_POINTER, "out", ur_model_parameter_count(model, NULL));
  OK(ur_model_parameter_count(model, &count));
  CHECK(count == 1 + 2 * 12 + 2, "%zu parameters", count);
  const char* name = NULL;
  OK(ur_model_parameter_name(model, 0, &name));
  CHECK(strcmp(name, "model.embed_tokens.weight") == 0, "first parameter %s", name);
  OK(ur_model_parameter_name(model, count - 1, &name));
  CHECK(strcmp(name, "lm_head.weight") == 0, "last parameter %s", name);
  FAILS(UR_ERROR_INVALID_ARGUMENT, "index", ur_model_parameter_name(model, count, &name));
  FAILS(UR_ERROR_NULL_POINTER, "name", ur_model_parameter_name(model, 0, NULL));
  int32_t rank = 0;
  int64_t dims[4];
  FAILS(UR_ERROR_INVALID_ARGUMENT, "capacity", ur_model_parameter_shape(model, 0, &rank, dims, 1));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "index", ur_model_parameter_shape(model, count, &rank, dims, 4));
  FAILS(UR_ERROR_NULL_POINTER, "rank", ur_model_parameter_shape(model, 0, NULL, dims, 4));
  uint64_t total = 0;
  for (size_t i = 0; i < count; i++) {
    OK(ur_model_parameter_shape(model, i, &rank, dims, 4));
    uint64_t numel = 1;
    for (int k = 0; k < rank; k++) numel *= (uint64_t)dims[k];
    total += numel;
  }
  CHECK(total == info.num_parameters, "parameters add up to %llu, info says %llu", (unsigned long long)total,
        (unsigned long long)info.num_parameters);

  /* No backward and no gradient before a forward. */
  static float logits[MN * MT * MV], grad_logits[MN * MT * MV], grad[MV * MH];
  Tensor tgl, tgrad;
  tensor(&tgl, grad_logits, F32, 3, D(MN), D(MT), D(MV));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "ur_model_forward", ur_model_backward(ctx, model, &tgl.dl, NULL));
  tensor(&tgrad, grad, F32, 2, D(MV), D(MH));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "no gradients",
        ur_model_gradient(ctx, model, "model.embed_tokens.weight", &tgrad.dl, NULL));

  /* Forward: two rows, the second right-padded. */
  int64_t ids[MN * MT] = {5, 17, 99, 3, 64, 120, 0, 42, 1, 1};
  int32_t mask[MN * MT] = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
  Tensor tids, tmask, tlog;
  tensor(&tids, ids, I64, 2, D(MN), D(MT));
  tensor(&tmask, mask, I32, 2, D(MN), D(MT));
  tensor(&tlog, logits, F32, 3, D(MN), D(MT), D(MV));
  FAILS(UR_ERROR_NULL_POINTER, "ids", ur_model_forward(ctx, model, NULL, &tmask.dl, &tlog.dl, NULL));
  FAILS(UR_ERROR_NULL_POINTER, "model", ur_model_forward(ctx, NULL, &tids.dl, &tmask.dl, &tlog.dl, NULL));
  Tensor small, bf16_out;
  tensor(&small, logits, F32, 3, D(MN), D(MT), D(MV - 1));
  FAILS(UR_ERROR_SHAPE, "logits_out", ur_model_forward(ctx, model, &tids.dl, &tmask.dl, &small.dl, NULL));
  tensor(&bf16_out, logits, BF16, 3, D(MN), D(MT), D(MV));
  FAILS(UR_ERROR_DTYPE, "logits_out", ur_model_forward(ctx, model, &tids.dl, &tmask.dl, &bf16_out.dl, NULL));
  /* Messages name the C parameters (`mask`, not the Rust model's former `attention_mask`). */
  Tensor short_mask;
  tensor(&short_mask, mask, I32, 2, D(MN), D(MT - 1));
  FAILS(UR_ERROR_SHAPE, "`mask`", ur_model_forward(ctx, model, &tids.dl, &short_mask.dl, &tlog.dl, NULL));
  int64_t bad_ids[MN * MT] = {5, 17, 99, 3, 64, 120, 0, 42, 1, MV};
  Tensor tbad;
  tensor(&tbad, bad_ids, I64, 2, D(MN), D(MT));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "128", ur_model_forward(ctx, model, &tbad.dl, &tmask.dl, &tlog.dl, NULL));
  /* Without a mask every token is real: the first row (all real) gives the same logits as with the mask. */
  OK(ur_model_forward(ctx, model, &tids.dl, NULL, &tlog.dl, NULL));
  float row0[MT * MV];
  memcpy(row0, logits, sizeof row0);
  OK(ur_model_forward(ctx, model, &tids.dl, &tmask.dl, &tlog.dl, NULL));
  CHECK(memcmp(row0, logits, sizeof row0) == 0, "row 0's logits depend on the mask of row 1");
  dump("model.ids", &tids);
  dump("model.mask", &tmask);
  dump("model.logits", &tlog);

  /* Backward from an arbitrary logits gradient; the pass is consumed. */
  for (int i = 0; i < MN * MT * MV; i++) grad_logits[i] = (float)((i * 7) % 11 - 5) * 0.01f;
  Tensor tgl_small;
  tensor(&tgl_small, grad_logits, F32, 3, D(MN), D(MT - 1), D(MV));
  FAILS(UR_ERROR_SHAPE, "grad_logits", ur_model_backward(ctx, model, &tgl_small.dl, NULL));
  OK(ur_model_backward(ctx, model, &tgl.dl, NULL));
  dump("model.grad_logits", &tgl);
  FAILS(UR_ERROR_INVALID_ARGUMENT, "ur_model_forward", ur_model_backward(ctx, model, &tgl.dl, NULL));

  /* Every gradient by name, and the input embeddings' one. */
  for (size_t i = 0; i < count; i++) {
    OK(ur_model_parameter_name(model, i, &name));
    OK(ur_model_parameter_shape(model, i, &rank, dims, 4));
    Tensor tg;
    tensor(&tg, grad, F32, 0);
    tg.dl.ndim = rank;
    for (int k = 0; k < rank; k++) tg.shape[k] = dims[k];
    OK(ur_model_gradient(ctx, model, name, &tg.dl, NULL));
    char key[128];
    snprintf(key, sizeof key, "grad.%s", name);
    dump(key, &tg);
  }
  static float grad_embeds[MN * MT * MH];
  Tensor tge;
  tensor(&tge, grad_embeds, F32, 3, D(MN), D(MT), D(MH));
  OK(ur_model_gradient(ctx, model, "inputs_embeds", &tge.dl, NULL));
  dump("grad.inputs_embeds", &tge);
  FAILS(UR_ERROR_INVALID_ARGUMENT, "model.no_such.weight",
        ur_model_gradient(ctx, model, "model.no_such.weight", &tgrad.dl, NULL));
  FAILS(UR_ERROR_NULL_POINTER, "name", ur_model_gradient(ctx, model, NULL, &tgrad.dl, NULL));
  Tensor tsmall_grad;
  tensor(&tsmall_grad, grad, F32, 2, D(MV - 1), D(MH));
  FAILS(UR_ERROR_SHAPE, "out", ur_model_gradient(ctx, model, "model.embed_tokens.weight", &tsmall_grad.dl, NULL));

  /* Greedy generation equals the float64 reference's tokens; a stop token ends it early. */
  int32_t prompt[MAX_TOKENS], expected[MAX_TOKENS], out[MAX_TOKENS];
  size_t prompt_len = parse_ids(prompt_text, prompt, MAX_TOKENS);
  size_t expected_len = parse_ids(expected_text, expected, MAX_TOKENS);
  CHECK(prompt_len > 0 && expected_len > 4, "prompt %zu tokens, expected %zu", prompt_len, expected_len);
  ur_generation_config gen = ur_generation_config_default();
  CHECK(gen.struct_size == sizeof gen && gen.max_new_tokens == 64 && gen.temperature == 0.0f && gen.top_p == 1.0f &&
            gen.num_stop_tokens == 0,
        "generation defaults");
  gen.max_new_tokens = (uint32_t)expected_len;
  size_t out_len = 0;
  OK(ur_model_generate(ctx, model, prompt, prompt_len, &gen, out, MAX_TOKENS, &out_len));
  CHECK(out_len == expected_len, "generated %zu tokens, expected %zu", out_len, expected_len);
  for (size_t i = 0; i < expected_len; i++) CHECK(out[i] == expected[i], "token %zu: %d vs %d", i, out[i], expected[i]);
  ur_generation_result result;
  memset(&result, 0, sizeof result);
  result.struct_size = sizeof result;
  OK(ur_model_generate_ex(ctx, model, prompt, prompt_len, NULL, 0, &gen, out, MAX_TOKENS, &result));
  CHECK(result.num_tokens == expected_len && result.finish_reason == UR_FINISH_MAX_NEW_TOKENS, "%llu tokens, reason %d",
        (unsigned long long)result.num_tokens, result.finish_reason);
  gen.stop_tokens = &expected[3];
  gen.num_stop_tokens = 1;
  OK(ur_model_generate(ctx, model, prompt, prompt_len, &gen, out, MAX_TOKENS, &out_len));
  size_t first = 0;
  while (expected[first] != expected[3]) first++;
  CHECK(out_len == first + 1 && out[first] == expected[3], "stopped after %zu tokens", out_len);
  OK(ur_model_generate_ex(ctx, model, prompt, prompt_len, NULL, 0, &gen, out, MAX_TOKENS, &result));
  CHECK(result.num_tokens == first + 1 && result.finish_reason == UR_FINISH_STOP, "reason %d", result.finish_reason);
  /* The context (64 positions) ends a long generation: reason context_length. */
  ur_generation_config longest = ur_generation_config_default();
  longest.max_new_tokens = MAX_TOKENS;
  OK(ur_model_generate_ex(ctx, model, prompt, prompt_len, NULL, 0, &longest, out, MAX_TOKENS, &result));
  CHECK(result.num_tokens == 64 - prompt_len && result.finish_reason == UR_FINISH_CONTEXT_LENGTH,
        "%llu tokens, reason %d", (unsigned long long)result.num_tokens, result.finish_reason);
  FAILS(UR_ERROR_NULL_POINTER, "result",
        ur_model_generate_ex(ctx, model, prompt, prompt_len, NULL, 0, &gen, out, MAX_TOKENS, NULL));
  result.struct_size = 2;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "struct_size",
        ur_model_generate_ex(ctx, model, prompt, prompt_len, NULL, 0, &gen, out, MAX_TOKENS, &result));
  /* A Qwen2 model takes no media. */
  ur_media image = ur_media_default();
  image.path = "image.png";
  result.struct_size = sizeof result;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "num_media",
        ur_model_generate_ex(ctx, model, prompt, prompt_len, &image, 1, &gen, out, MAX_TOKENS, &result));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "num_media",
        ur_model_forward_ex(ctx, model, &tids.dl, &tmask.dl, &image, 1, &tlog.dl, NULL));
  /* Sampling is reproducible for a seed. */
  ur_generation_config sample = ur_generation_config_default();
  sample.max_new_tokens = 8;
  sample.temperature = 1.0f;
  sample.top_p = 0.9f;
  sample.seed = 7;
  int32_t again[8];
  size_t again_len = 0;
  OK(ur_model_generate(ctx, model, prompt, prompt_len, &sample, out, MAX_TOKENS, &out_len));
  OK(ur_model_generate(ctx, model, prompt, prompt_len, &sample, again, 8, &again_len));
  CHECK(out_len == again_len && memcmp(out, again, out_len * sizeof *out) == 0, "sampling with one seed differs");
  /* Failing paths. */
  FAILS(UR_ERROR_INVALID_ARGUMENT, "out_capacity",
        ur_model_generate(ctx, model, prompt, prompt_len, &gen, out, expected_len - 1, &out_len));
  FAILS(UR_ERROR_NULL_POINTER, "prompt",
        ur_model_generate(ctx, model, NULL, prompt_len, &gen, out, MAX_TOKENS, &out_len));
  FAILS(UR_ERROR_NULL_POINTER, "out_len",
        ur_model_generate(ctx, model, prompt, prompt_len, &gen, out, MAX_TOKENS, NULL));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "prompt_len",
        ur_model_generate(ctx, model, prompt, 0, &gen, out, MAX_TOKENS, &out_len));
  int32_t bad_prompt[2] = {3, -1}, huge_prompt[2] = {3, MV};
  FAILS(UR_ERROR_INVALID_ARGUMENT, "-1", ur_model_generate(ctx, model, bad_prompt, 2, &gen, out, MAX_TOKENS, &out_len));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "vocabulary",
        ur_model_generate(ctx, model, huge_prompt, 2, &gen, out, MAX_TOKENS, &out_len));
  gen.temperature = -1.0f;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "temperature",
        ur_model_generate(ctx, model, prompt, prompt_len, &gen, out, MAX_TOKENS, &out_len));
  gen = ur_generation_config_default();
  gen.num_stop_tokens = 2;
  FAILS(UR_ERROR_NULL_POINTER, "stop_tokens",
        ur_model_generate(ctx, model, prompt, prompt_len, &gen, out, MAX_TOKENS, &out_len));
  gen.struct_size = 4;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "struct_size",
        ur_model_generate(ctx, model, prompt, prompt_len, &gen, out, MAX_TOKENS, &out_len));
  ur_model_free(model);
}

/* Image preprocessing under the 16x16-tile fixture config: a 5x3 image, its pixels and pixel values dumped for
   tests/c_abi.rs to recompute with the Rust API. */
static void test_image_processor(const char* config_path) {
  ur_image_processor* processor = NULL;
  OK(ur_image_processor_create(ctx, config_path, &processor));
  enum { W = 5, H = 3 };
  uint8_t pixels[H * W * 3];
  int32_t pixels_i32[H * W * 3];
  for (int i = 0; i < H * W * 3; i++) pixels_i32[i] = pixels[i] = (uint8_t)((i * 37 + 11) % 256);
  uint64_t shape[4];
  OK(ur_image_processor_output_shape(processor, H, W, UR_IMAGE_LAYOUT_ANYRES, shape));
  CHECK(shape[0] == 2 && shape[1] == 3 && shape[2] == 16 && shape[3] == 16, "shape %llu %llu %llu %llu",
        (unsigned long long)shape[0], (unsigned long long)shape[1], (unsigned long long)shape[2],
        (unsigned long long)shape[3]);
  size_t count = (size_t)(shape[0] * shape[1] * shape[2] * shape[3]);
  float* out = malloc(count * sizeof *out);
  CHECK(out != NULL, "malloc");
  OK(ur_image_processor_run(processor, pixels, H, W, UR_IMAGE_LAYOUT_ANYRES, out, count));
  Tensor tp, to;
  dump("img.pixels", tensor(&tp, pixels_i32, I32, 3, D(H), D(W), D(3)));
  dump("img.pixel_values", tensor(&to, out, F32, 4, D(shape[0]), D(shape[1]), D(shape[2]), D(shape[3])));
  OK(ur_image_processor_output_shape(processor, H, W, UR_IMAGE_LAYOUT_SQUARE, shape));
  CHECK(shape[0] == 1, "square layout: %llu patches", (unsigned long long)shape[0]);

  FAILS(UR_ERROR_SHAPE, "out", ur_image_processor_run(processor, pixels, H, W, UR_IMAGE_LAYOUT_ANYRES, out, count - 1));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "layout", ur_image_processor_run(processor, pixels, H, W, 7, out, count));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "zero size", ur_image_processor_output_shape(processor, 0, W, 0, shape));
  FAILS(UR_ERROR_NULL_POINTER, "pixels", ur_image_processor_run(processor, NULL, H, W, 0, out, count));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`out` overlaps `pixels`",
        ur_image_processor_run(processor, (const uint8_t*)out, H, W, UR_IMAGE_LAYOUT_ANYRES, out, count));
  FAILS(UR_ERROR_NULL_POINTER, "processor", ur_image_processor_output_shape(NULL, H, W, 0, shape));
  free(out);
  ur_image_processor_free(processor);
  ur_image_processor_free(NULL);

  FAILS(UR_ERROR_CHECKPOINT, "missing.json", ur_image_processor_create(ctx, "missing.json", &processor));
  OK(ur_image_processor_create(ctx, NULL, &processor)); /* transformers' defaults: 384x384 tiles */
  OK(ur_image_processor_output_shape(processor, 300, 500, UR_IMAGE_LAYOUT_ANYRES, shape));
  CHECK(shape[0] == 3 && shape[2] == 384, "default shape %llu %llu", (unsigned long long)shape[0],
        (unsigned long long)shape[2]);
  ur_image_processor_free(processor);
}

enum { LT = 96, LV = 96, LS = 12, LP = 8 }; /* the LLaVA fixture: room for the ids, vocabulary, tile side */

/* A LLaVA-OneVision batch through the C ABI, on the fixture `root` (tests/fixtures/llava): row 0 holds an image
 * given as pixel values (a synthetic 7x13 image preprocessed with ur_image_processor_run) and a video given as a
 * folder of frames; row 1 an image given as a file, then text and padding. Logits, every gradient by name and a
 * greedy generation are dumped for tests/c_abi.rs to recompute with the Rust model; bad media fail clearly. */
static void test_llava(const char* root) {
  char dir[512], image_path[512], video_path[512], config_path[512];
  snprintf(dir, sizeof dir, "%s/hf", root);
  snprintf(image_path, sizeof image_path, "%s/images/anyres_0.png", root);
  snprintf(video_path, sizeof video_path, "%s/video", root);
  snprintf(config_path, sizeof config_path, "%s/hf/preprocessor_config.json", root);
  const DLDevice cpu = {kDLCPU, 0};
  ur_model* model = NULL;
  OK(ur_model_load(ctx, dir, F32, cpu, &model));
  ur_model_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  OK(ur_model_get_info(model, &info));
  CHECK(info.architecture == UR_ARCHITECTURE_LLAVA_ONEVISION && info.image_token_id == 90 &&
            info.video_token_id == 91 && info.vocab_size == LV,
        "architecture %d, image token %lld", info.architecture, (long long)info.image_token_id);
  const int64_t image_id = info.image_token_id, video_id = info.video_token_id;

  /* Pixel values of a synthetic 7x13 image, made by the checkpoint's own preprocessing. */
  enum { IH = 7, IW = 13 };
  ur_image_processor* processor = NULL;
  OK(ur_image_processor_create(ctx, config_path, &processor));
  uint8_t rgb[IH * IW * 3];
  for (int i = 0; i < IH * IW * 3; i++) rgb[i] = (uint8_t)((i * 53 + 7) % 256);
  uint64_t shape[4];
  OK(ur_image_processor_output_shape(processor, IH, IW, UR_IMAGE_LAYOUT_ANYRES, shape));
  CHECK(shape[0] <= LP && shape[2] == LS, "tiles %llu of side %llu", (unsigned long long)shape[0],
        (unsigned long long)shape[2]);
  static float pixels[LP * 3 * LS * LS];
  OK(ur_image_processor_run(processor, rgb, IH, IW, UR_IMAGE_LAYOUT_ANYRES, pixels, shape[0] * 3 * LS * LS));
  ur_image_processor_free(processor);
  Tensor tpix;
  tensor(&tpix, pixels, F32, 4, D(shape[0]), D(3), D(LS), D(LS));

  ur_media media[3] = {ur_media_default(), ur_media_default(), ur_media_default()};
  media[0].pixel_values = &tpix.dl;
  media[0].height = IH;
  media[0].width = IW;
  media[1].kind = UR_MEDIA_VIDEO;
  media[1].path = video_path;
  media[1].num_frames = 4;
  media[2].path = image_path;
  uint64_t counts[3];
  FAILS(UR_ERROR_NULL_POINTER, "counts", ur_model_placeholder_counts(model, media, 3, NULL));
  OK(ur_model_placeholder_counts(model, media, 3, counts));
  /* The placeholders of the images (in order: media 0, then media 2) and of the video. */
  const uint64_t row0 = 2 + counts[0] + 1 + counts[1] + 1, row1 = counts[2] + 3;
  const int64_t t = (int64_t)(row0 > row1 ? row0 : row1);
  CHECK(t <= LT, "%lld tokens", (long long)t);
  static int64_t ids[2 * LT];
  static int32_t mask[2 * LT];
  int64_t* p = ids;
  *p++ = 5;
  *p++ = 6;
  for (uint64_t i = 0; i < counts[0]; i++) *p++ = image_id;
  *p++ = 7;
  for (uint64_t i = 0; i < counts[1]; i++) *p++ = video_id;
  *p++ = 8;
  for (int64_t i = (int64_t)row0; i < t; i++) *p++ = 0;
  for (uint64_t i = 0; i < counts[2]; i++) *p++ = image_id;
  *p++ = 9;
  *p++ = 10;
  *p++ = 11;
  for (int64_t i = (int64_t)row1; i < t; i++) *p++ = 0;
  for (int64_t i = 0; i < 2 * t; i++) mask[i] = (i < t ? i < (int64_t)row0 : i - t < (int64_t)row1) ? 1 : 0;
  Tensor tids, tmask, tlog, tgl;
  tensor(&tids, ids, I64, 2, D(2), D(t));
  tensor(&tmask, mask, I32, 2, D(2), D(t));
  static float logits[2 * LT * LV], grad_logits[2 * LT * LV];
  tensor(&tlog, logits, F32, 3, D(2), D(t), D(LV));
  /* The logits are the library's media order: images before videos within each kind's own order. */
  ur_media order[3] = {media[0], media[2], media[1]};
  OK(ur_model_forward_ex(ctx, model, &tids.dl, &tmask.dl, order, 3, &tlog.dl, NULL));
  dump("llava.ids", &tids);
  dump("llava.mask", &tmask);
  dump("llava.pixel_values", &tpix);
  dump("llava.logits", &tlog);
  /* The same media listed with the video first: each kind keeps its own order, so the logits are the same. */
  static float logits2[2 * LT * LV];
  Tensor tlog2;
  tensor(&tlog2, logits2, F32, 3, D(2), D(t), D(LV));
  OK(ur_model_forward_ex(ctx, model, &tids.dl, &tmask.dl, media, 3, &tlog2.dl, NULL));
  CHECK(memcmp(logits, logits2, sizeof(float) * (size_t)(2 * t * LV)) == 0, "media order across kinds matters");

  /* A caller built against a newer header (a field more, left zero: the array's stride is its struct_size) gets
     the same logits; one built with a field fewer than the first release is refused. */
  struct {
    ur_media m;
    uint64_t newer_field;
  } longer[3];
  memset(longer, 0, sizeof longer);
  for (int i = 0; i < 3; i++) {
    longer[i].m = order[i];
    longer[i].m.struct_size = sizeof longer[0];
  }
  OK(ur_model_forward_ex(ctx, model, &tids.dl, &tmask.dl, &longer[0].m, 3, &tlog2.dl, NULL));
  CHECK(memcmp(logits, logits2, sizeof(float) * (size_t)(2 * t * LV)) == 0, "a longer ur_media changed the logits");
  longer[1].newer_field = 1;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "does not know",
        ur_model_forward_ex(ctx, model, &tids.dl, &tmask.dl, &longer[0].m, 3, &tlog2.dl, NULL));
  ur_media shorter[3] = {order[0], order[1], order[2]};
  for (int i = 0; i < 3; i++) shorter[i].struct_size = (uint32_t)offsetof(ur_media, num_frames);
  FAILS(UR_ERROR_INVALID_ARGUMENT, "ur_media.struct_size",
        ur_model_forward_ex(ctx, model, &tids.dl, &tmask.dl, shorter, 3, &tlog2.dl, NULL));

  for (int64_t i = 0; i < 2 * t * LV; i++) grad_logits[i] = (float)((i * 5) % 13 - 6) * 0.01f;
  tensor(&tgl, grad_logits, F32, 3, D(2), D(t), D(LV));
  OK(ur_model_backward(ctx, model, &tgl.dl, NULL));
  dump("llava.grad_logits", &tgl);
  size_t count = 0;
  OK(ur_model_parameter_count(model, &count));
  CHECK(count > 30, "%zu parameters", count);
  static float grad[LV * 48];
  for (size_t i = 0; i < count; i++) {
    const char* name = NULL;
    int32_t rank = 0;
    int64_t dims[4];
    OK(ur_model_parameter_name(model, i, &name));
    OK(ur_model_parameter_shape(model, i, &rank, dims, 4));
    Tensor tg;
    tensor(&tg, grad, F32, 0);
    tg.dl.ndim = rank;
    for (int k = 0; k < rank; k++) tg.shape[k] = dims[k];
    CHECK(numel(&tg.dl) <= (int64_t)(sizeof grad / sizeof *grad), "%s is larger than the buffer", name);
    OK(ur_model_gradient(ctx, model, name, &tg.dl, NULL));
    char key[192];
    snprintf(key, sizeof key, "llava.grad.%s", name);
    dump(key, &tg);
  }

  /* Greedy generation after row 0 with its image and video, and why it ended. */
  int32_t prompt[LT], out[8];
  for (uint64_t i = 0; i < row0; i++) prompt[i] = (int32_t)ids[i];
  ur_generation_config gen = ur_generation_config_default();
  gen.max_new_tokens = 8;
  ur_generation_result result;
  memset(&result, 0, sizeof result);
  result.struct_size = sizeof result;
  ur_media row0_media[2] = {media[0], media[1]};
  OK(ur_model_generate_ex(ctx, model, prompt, row0, row0_media, 2, &gen, out, 8, &result));
  CHECK(result.num_tokens == 8 && result.finish_reason == UR_FINISH_MAX_NEW_TOKENS, "reason %d",
        result.finish_reason);
  int32_t generated[8];
  memcpy(generated, out, sizeof generated);
  Tensor tprompt, tout;
  dump("llava.prompt", tensor(&tprompt, prompt, I32, 1, D(row0)));
  dump("llava.tokens", tensor(&tout, generated, I32, 1, D(8)));

  /* Bad media, each refused before logits_out is written. */
  memset(logits2, 0, sizeof logits2);
  ur_media bad[3] = {media[0], media[2], media[1]};
  Tensor wrong;
  tensor(&wrong, pixels, F32, 4, D(1), D(3), D(LS - 1), D(LS));
  bad[0].pixel_values = &wrong.dl;
  FAILS(UR_ERROR_SHAPE, "media item 0",
        ur_model_forward_ex(ctx, model, &tids.dl, &tmask.dl, bad, 3, &tlog2.dl, NULL));
  bad[0] = media[0];
  bad[1].path = "/no/such/image.png";
  FAILS(UR_ERROR_INVALID_ARGUMENT, "media[1]: invalid argument: image /no/such/image.png: cannot open",
        ur_model_forward_ex(ctx, model, &tids.dl, &tmask.dl, bad, 3, &tlog2.dl, NULL));
  bad[1] = media[2];
  bad[0].height = 0;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "media[0]: `height` is 0",
        ur_model_forward_ex(ctx, model, &tids.dl, &tmask.dl, bad, 3, &tlog2.dl, NULL));
  bad[0] = media[0];
  bad[0].path = image_path;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "both",
        ur_model_forward_ex(ctx, model, &tids.dl, &tmask.dl, bad, 3, &tlog2.dl, NULL));
  bad[0] = ur_media_default();
  FAILS(UR_ERROR_INVALID_ARGUMENT, "neither",
        ur_model_forward_ex(ctx, model, &tids.dl, &tmask.dl, bad, 3, &tlog2.dl, NULL));
  bad[0] = media[0];
  bad[0].kind = 5;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "UR_MEDIA_VIDEO",
        ur_model_forward_ex(ctx, model, &tids.dl, &tmask.dl, bad, 3, &tlog2.dl, NULL));
  bad[0] = media[0];
  bad[1].struct_size = 8;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "media[1].struct_size",
        ur_model_forward_ex(ctx, model, &tids.dl, &tmask.dl, bad, 3, &tlog2.dl, NULL));
  bad[1] = media[2];
  FAILS(UR_ERROR_NULL_POINTER, "media",
        ur_model_forward_ex(ctx, model, &tids.dl, &tmask.dl, NULL, 3, &tlog2.dl, NULL));
  /* The video left out (its placeholders unfilled), and the logits overlapping the pixels. */
  FAILS(UR_ERROR_INVALID_ARGUMENT, "video placeholder tokens (id 91)",
        ur_model_forward_ex(ctx, model, &tids.dl, &tmask.dl, bad, 2, &tlog2.dl, NULL));
  Tensor over;
  tensor(&over, pixels, F32, 3, D(2), D(t), D(LV));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "overlap",
        ur_model_forward_ex(ctx, model, &tids.dl, &tmask.dl, bad, 3, &over.dl, NULL));
  for (size_t i = 0; i < sizeof logits2 / sizeof *logits2; i++) CHECK(logits2[i] == 0.0f, "a failing call wrote logits");
  /* A prompt id that is neither a token nor a placeholder. */
  prompt[0] = -3;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "-3",
        ur_model_generate_ex(ctx, model, prompt, row0, row0_media, 2, &gen, out, 8, &result));
  ur_model_free(model);
}

/* AdamW over two f32 parameters: two steps (the second with a halved gradient) against a double-precision loop of
   torch.optim.AdamW's formulas; the clipping report of an optimizer made with max_grad_norm; a count mismatch and a
   NULL optimizer refused with nothing written. */
static void test_adamw(void) {
  enum { A = 6, B = 3, N = A + B };
  float w[N], g[N];
  double ref[N], m[N] = {0}, v[N] = {0};
  fill(w, N, 31);
  fill(g, N, 37);
  for (int i = 0; i < N; i++) ref[i] = w[i];
  Tensor params[2], grads[2];
  tensor(&params[0], w, F32, 2, D(2), D(3));
  tensor(&params[1], w + A, F32, 1, D(B));
  tensor(&grads[0], g, F32, 2, D(2), D(3));
  tensor(&grads[1], g + A, F32, 1, D(B));
  DLTensor p_dl[2] = {params[0].dl, params[1].dl}, g_dl[2] = {grads[0].dl, grads[1].dl};
  const char* names[2] = {"weight", "bias"};
  ur_adamw_config cfg = ur_adamw_config_default();
  CHECK(cfg.struct_size == sizeof cfg && cfg.lr == 1e-3 && cfg.beta2 == 0.999, "defaults");
  cfg.lr = 0.1;
  cfg.weight_decay = 0.01;
  ur_adamw* opt = NULL;
  OK(ur_adamw_create(ctx, p_dl, names, 2, &cfg, &opt));
  ur_adamw_step_report report;
  for (int step = 1; step <= 2; step++) {
    if (step == 2)
      for (int i = 0; i < N; i++) g[i] *= 0.5f;
    for (int i = 0; i < N; i++) {
      ref[i] *= 1 - cfg.lr * cfg.weight_decay;
      m[i] = cfg.beta1 * m[i] + (1 - cfg.beta1) * g[i];
      v[i] = cfg.beta2 * v[i] + (1 - cfg.beta2) * (double)g[i] * g[i];
      double mhat = m[i] / (1 - pow(cfg.beta1, step)), vhat = v[i] / (1 - pow(cfg.beta2, step));
      ref[i] -= cfg.lr * mhat / (sqrt(vhat) + cfg.eps);
    }
    report.struct_size = sizeof report;
    OK(ur_adamw_step(ctx, opt, p_dl, g_dl, 2, &report, NULL));
    CHECK(report.step == (uint64_t)step && report.lr == 0.1 && report.clip_coef == 1.0 && isnan(report.grad_norm),
          "report: step %llu, lr %g, clip_coef %g, grad_norm %g", (unsigned long long)report.step, report.lr,
          report.clip_coef, report.grad_norm);
    for (int i = 0; i < N; i++)
      CHECK(close_to(w[i], (float)ref[i], 1e-6f), "step %d: w[%d] %g, expected %g", step, i, w[i], ref[i]);
  }
  float before[N];
  memcpy(before, w, sizeof w);
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`count` is 1", ur_adamw_step(ctx, opt, p_dl, g_dl, 1, &report, NULL));
  FAILS(UR_ERROR_NULL_POINTER, "`opt`", ur_adamw_step(ctx, NULL, p_dl, g_dl, 2, &report, NULL));
  CHECK(memcmp(before, w, sizeof w) == 0, "a refused step wrote the parameters");

  /* The state into a second optimizer over a copy of the parameters: the next step is the same, bit for bit. */
  uint64_t moments = 0, masters = 7, steps = 0;
  OK(ur_adamw_state_numel(ctx, opt, &moments, &masters, &steps));
  CHECK(moments == N && masters == 0 && steps == 2, "state sizes %llu %llu %llu", (unsigned long long)moments,
        (unsigned long long)masters, (unsigned long long)steps);
  float exp_avg[N], exp_avg_sq[N], w2[N];
  Tensor m_t, v_t, p2[2];
  tensor(&m_t, exp_avg, F32, 1, D(N));
  tensor(&v_t, exp_avg_sq, F32, 1, D(N));
  uint64_t got_step = 0;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`exp_avg_out` overlaps",
        ur_adamw_get_state(ctx, opt, &m_t.dl, &m_t.dl, NULL, &got_step, NULL));
  OK(ur_adamw_get_state(ctx, opt, &m_t.dl, &v_t.dl, NULL, &got_step, NULL));
  CHECK(got_step == 2 && exp_avg_sq[0] > 0, "state: step %llu, exp_avg_sq[0] %g", (unsigned long long)got_step,
        exp_avg_sq[0]);
  memcpy(w2, w, sizeof w);
  tensor(&p2[0], w2, F32, 2, D(2), D(3));
  tensor(&p2[1], w2 + A, F32, 1, D(B));
  DLTensor p2_dl[2] = {p2[0].dl, p2[1].dl};
  ur_adamw* resumed = NULL;
  OK(ur_adamw_create(ctx, p2_dl, names, 2, &cfg, &resumed));
  Tensor short_t;
  tensor(&short_t, exp_avg, F32, 1, D(N - 1));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`exp_avg`", ur_adamw_set_state(ctx, resumed, &short_t.dl, &v_t.dl, NULL, 2, NULL));
  OK(ur_adamw_set_state(ctx, resumed, &m_t.dl, &v_t.dl, NULL, 2, NULL));
  OK(ur_adamw_step(ctx, opt, p_dl, g_dl, 2, &report, NULL));
  DLTensor g2_dl[2] = {grads[0].dl, grads[1].dl};
  OK(ur_adamw_step(ctx, resumed, p2_dl, g2_dl, 2, &report, NULL));
  CHECK(report.step == 3 && memcmp(w, w2, sizeof w) == 0, "a resumed optimizer steps as the original");
  ur_adamw_free(resumed);
  ur_adamw_free(opt);

  double norm = 0;
  for (int i = 0; i < N; i++) norm += (double)g[i] * g[i];
  norm = sqrt(norm);
  cfg.max_grad_norm = 1.0;
  OK(ur_adamw_create(ctx, p_dl, NULL, 2, &cfg, &opt));
  report.struct_size = sizeof report;
  OK(ur_adamw_step(ctx, opt, p_dl, g_dl, 2, &report, NULL));
  CHECK(fabs(report.grad_norm - norm) <= 1e-6 * norm, "grad_norm %g, expected %g", report.grad_norm, norm);
  double coef = norm > 1.0 ? 1.0 / (norm + 1e-6) : 1.0;
  CHECK(fabs(report.clip_coef - coef) <= 1e-9, "clip_coef %g, expected %g", report.clip_coef, coef);
  ur_adamw_free(opt);
  ur_adamw_free(NULL);
}

/* The SFT trainer on the judge checkpoint `dir` (a LLaVA-OneVision one, trained here on text): two steps whose
 * metrics tests/c_abi.rs recomputes with the Rust API, a checkpoint written under `out`, and the failing paths. */
static void test_sft(const char* dir, const char* out) {
  const char* records[2] = {
      "{\"conversations\": [{\"from\": \"human\", \"value\": \"Is the square red?\"}, "
      "{\"from\": \"gpt\", \"value\": \"Yes, it is red.\"}]}",
      "{\"id\": 7, \"conversations\": [{\"from\": \"human\", \"value\": \"Better?\"}, "
      "{\"from\": \"gpt\", \"value\": \"No.\"}]}"};
  ur_trainer_config cfg = ur_trainer_config_default();
  CHECK(cfg.struct_size == sizeof cfg && cfg.lr == 1e-5 && cfg.max_grad_norm == 1.0 && cfg.total_steps == 0,
        "defaults");
  ur_sft_trainer* trainer = NULL;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`total_steps`", ur_sft_trainer_create(ctx, dir, &cfg, &trainer));
  cfg.total_steps = 2;
  cfg.lr = 1e-3;
  FAILS(UR_ERROR_NULL_POINTER, "`model_dir`", ur_sft_trainer_create(ctx, NULL, &cfg, &trainer));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "does not exist", ur_sft_trainer_create(ctx, "/no/such/model", &cfg, &trainer));
  CHECK(trainer == NULL, "a failed create wrote *out");
  OK(ur_sft_trainer_create(ctx, dir, &cfg, &trainer));
  ur_sft_step_metrics m[2];
  /* Refused before any work (and before the schedule's end is reached): the two steps below still equal Rust's. */
  m[0].struct_size = sizeof m[0];
  const char* bad[1] = {"{\"conversations\": [{\"from\": \"human\", \"value\": \"Hi?\"}]}"};
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`micro_batches[0][0]`: no assistant",
        ur_sft_trainer_step(ctx, trainer, bad, 1, 0, &m[0]));
  for (int step = 0; step < 2; step++) {
    m[step].struct_size = sizeof m[step];
    OK(ur_sft_trainer_step(ctx, trainer, records, 2, step == 0 ? 0 : 1, &m[step]));
    CHECK(m[step].step == (uint64_t)step + 1 && m[step].tokens > 0 && m[step].loss > 0 && !isnan(m[step].grad_norm),
          "step %d: step %llu, tokens %llu, loss %g, grad_norm %g", step, (unsigned long long)m[step].step,
          (unsigned long long)m[step].tokens, m[step].loss, m[step].grad_norm);
  }
  /* One warm-up step (ceil(2 * 0.03)) from 0, then the cosine's start. */
  CHECK(m[0].lr == 0.0 && m[1].lr == 1e-3, "lr %g then %g", m[0].lr, m[1].lr);
  fprintf(dump_file, "sft.loss f32 1 2 %.17g %.17g\n", m[0].loss, m[1].loss);
  fprintf(dump_file, "sft.grad_norm f32 1 2 %.17g %.17g\n", m[0].grad_norm, m[1].grad_norm);
  fprintf(dump_file, "sft.tokens f32 1 2 %llu %llu\n", (unsigned long long)m[0].tokens,
          (unsigned long long)m[1].tokens);
  OK(ur_sft_trainer_save(ctx, trainer, out));
  char path[4096 + 64]; /* `out` is at most 4095 characters (main's buffer) */
  snprintf(path, sizeof path, "%s/checkpoint-2/model.safetensors", out);
  FILE* saved = fopen(path, "rb");
  CHECK(saved != NULL, "%s was not written", path);
  fclose(saved);

  FAILS(UR_ERROR_INVALID_ARGUMENT, "`total_steps`", ur_sft_trainer_step(ctx, trainer, records, 2, 0, &m[0]));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`count` is 0", ur_sft_trainer_step(ctx, trainer, records, 0, 0, &m[0]));
  /* Resumed from its checkpoint at step 2 of 2: no step left (tests/train_sft_records.rs checks the bitwise resume). */
  char checkpoint[4096 + 64];
  snprintf(checkpoint, sizeof checkpoint, "%s/checkpoint-2", out);
  ur_sft_trainer* resumed = NULL;
  cfg.resume_from = "/no/such/checkpoint";
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`resume_from`", ur_sft_trainer_create(ctx, dir, &cfg, &resumed));
  cfg.resume_from = checkpoint;
  OK(ur_sft_trainer_create(ctx, dir, &cfg, &resumed));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`total_steps`", ur_sft_trainer_step(ctx, resumed, records, 2, 0, &m[0]));
  ur_sft_trainer_free(resumed);
  FAILS(UR_ERROR_NULL_POINTER, "`records`", ur_sft_trainer_step(ctx, trainer, NULL, 2, 0, &m[0]));
  FAILS(UR_ERROR_NULL_POINTER, "`trainer`", ur_sft_trainer_step(ctx, NULL, records, 2, 0, &m[0]));
  FAILS(UR_ERROR_NULL_POINTER, "`out_dir`", ur_sft_trainer_save(ctx, trainer, NULL));
  ur_sft_trainer_free(trainer);
  ur_sft_trainer_free(NULL);

  /* Per-task losses: the same records with a task each, one step (tests/c_abi.rs recomputes them with Rust). */
  const char* tasked[2] = {
      "{\"task\": \"qa\", \"conversations\": [{\"from\": \"human\", \"value\": \"Is the square red?\"}, "
      "{\"from\": \"gpt\", \"value\": \"Yes, it is red.\"}]}",
      "{\"task\": \"chat\", \"conversations\": [{\"from\": \"human\", \"value\": \"Better?\"}, "
      "{\"from\": \"gpt\", \"value\": \"No.\"}]}"};
  const char* tasks[2] = {"chat", "qa"};
  const char* twice[2] = {"qa", "qa"};
  cfg.resume_from = NULL;
  cfg.total_steps = 1;
  OK(ur_sft_trainer_create(ctx, dir, &cfg, &trainer));
  double task_loss[2] = {-1.0, -1.0};
  FAILS(UR_ERROR_INVALID_ARGUMENT, "no step yet", ur_sft_trainer_task_losses(ctx, trainer, task_loss, 1));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "named twice", ur_sft_trainer_set_tasks(ctx, trainer, twice, 2));
  FAILS(UR_ERROR_NULL_POINTER, "`tasks`", ur_sft_trainer_set_tasks(ctx, trainer, NULL, 2));
  OK(ur_sft_trainer_set_tasks(ctx, trainer, tasks, 2));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`micro_batches[0][0]` has no `task` field",
        ur_sft_trainer_step(ctx, trainer, records, 2, 0, NULL));
  OK(ur_sft_trainer_step(ctx, trainer, tasked, 2, 0, NULL));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "the trainer has 2 tasks", ur_sft_trainer_task_losses(ctx, trainer, task_loss, 1));
  FAILS(UR_ERROR_NULL_POINTER, "`losses`", ur_sft_trainer_task_losses(ctx, trainer, NULL, 2));
  CHECK(task_loss[0] == -1.0 && task_loss[1] == -1.0, "a refused call wrote the losses");
  OK(ur_sft_trainer_task_losses(ctx, trainer, task_loss, 2));
  CHECK(task_loss[0] > 0 && task_loss[1] > 0 && task_loss[0] != task_loss[1], "task losses %g, %g", task_loss[0],
        task_loss[1]);
  fprintf(dump_file, "sft.task_loss f32 1 2 %.17g %.17g\n", task_loss[0], task_loss[1]);
  ur_sft_trainer_free(trainer);
  /* The trainer's activation arenas are large enough for the host cache to keep: hand them back for valgrind. */
  ur_host_cache_release();
  CHECK(ur_host_cache_bytes() == 0, "host cache released after the trainer");
}

/* The DPO trainer on the judge checkpoint `dir` (its own frozen copy as the reference): two steps whose metrics
 * tests/c_abi.rs recomputes with the Rust API, a checkpoint written under `out`, and the failing paths. */
static void test_dpo_trainer(const char* dir, const char* out) {
  const char* records[2] = {
      "{\"prompt\": \"Is the square red?\", \"chosen\": \"Yes, it is red.\", \"rejected\": \"No.\"}",
      "{\"prompt\": \"Better?\", \"chosen\": \"The first.\", \"rejected\": \"Neither of them, really.\"}"};
  ur_trainer_config cfg = ur_trainer_config_default();
  cfg.total_steps = 2;
  cfg.lr = 1e-3;
  ur_dpo_config loss = ur_dpo_config_default();
  loss.beta = 0.5f;
  ur_dpo_trainer* trainer = NULL;
  FAILS(UR_ERROR_NULL_POINTER, "`policy_dir`", ur_dpo_trainer_create(ctx, NULL, NULL, &cfg, &loss, &trainer));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "does not exist",
        ur_dpo_trainer_create(ctx, dir, "/no/such/reference", &cfg, &loss, &trainer));
  float weights[2] = {1, 1};
  Tensor pair_weights;
  loss.pair_weights = &tensor(&pair_weights, weights, F32, 1, D(2))->dl;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`loss->pair_weights` must be NULL",
        ur_dpo_trainer_create(ctx, dir, NULL, &cfg, &loss, &trainer));
  loss.pair_weights = NULL;
  CHECK(trainer == NULL, "a failed create wrote *out");
  OK(ur_dpo_trainer_create(ctx, dir, NULL, &cfg, &loss, &trainer));
  ur_dpo_step_metrics m[2];
  /* Refused before any work: the two steps below still start from the reference and equal Rust's. */
  m[0].struct_size = sizeof m[0];
  const char* bad[1] = {"{\"prompt\": \"Hi?\", \"chosen\": \"Yes.\"}"};
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`micro_batches[0][0]`", ur_dpo_trainer_step(ctx, trainer, bad, 1, 0, &m[0]));
  for (int step = 0; step < 2; step++) {
    m[step].struct_size = sizeof m[step];
    OK(ur_dpo_trainer_step(ctx, trainer, records, 2, step == 0 ? 0 : 1, &m[step]));
    CHECK(m[step].step == (uint64_t)step + 1 && m[step].pairs == 2 && m[step].tokens > 0 && m[step].loss > 0,
          "step %d: step %llu, pairs %llu, loss %g", step, (unsigned long long)m[step].step,
          (unsigned long long)m[step].pairs, m[step].loss);
  }
  /* Before any update the policy is its reference: every reward is 0 and the loss log 2. */
  CHECK(m[0].rewards_chosen == 0 && m[0].rewards_margins == 0 && fabs(m[0].loss - log(2.0)) < 1e-6,
        "first step: rewards %g, margin %g, loss %g", m[0].rewards_chosen, m[0].rewards_margins, m[0].loss);
  fprintf(dump_file, "dpo_trainer.loss f32 1 2 %.17g %.17g\n", m[0].loss, m[1].loss);
  fprintf(dump_file, "dpo_trainer.grad_norm f32 1 2 %.17g %.17g\n", m[0].grad_norm, m[1].grad_norm);
  fprintf(dump_file, "dpo_trainer.rewards_margins f32 1 2 %.9g %.9g\n", m[0].rewards_margins, m[1].rewards_margins);
  OK(ur_dpo_trainer_save(ctx, trainer, out));
  char path[4096 + 64]; /* `out` is at most 4095 characters (main's buffer) */
  snprintf(path, sizeof path, "%s/checkpoint-2/trainer_state/optimizer.safetensors", out);
  FILE* saved = fopen(path, "rb");
  CHECK(saved != NULL, "%s was not written", path);
  fclose(saved);

  FAILS(UR_ERROR_INVALID_ARGUMENT, "`total_steps`", ur_dpo_trainer_step(ctx, trainer, records, 2, 0, &m[0]));
  FAILS(UR_ERROR_NULL_POINTER, "`trainer`", ur_dpo_trainer_step(ctx, NULL, records, 2, 0, &m[0]));
  FAILS(UR_ERROR_NULL_POINTER, "`out_dir`", ur_dpo_trainer_save(ctx, trainer, NULL));
  ur_dpo_trainer_free(trainer);
  ur_dpo_trainer_free(NULL);
  /* The trainer's activation arenas are large enough for the host cache to keep: hand them back for valgrind. */
  ur_host_cache_release();
  CHECK(ur_host_cache_bytes() == 0, "host cache released after the trainer");
}

/* The reward-model trainer on the judge checkpoint `dir` (a LLaVA model given a fresh score head): two
 * Bradley–Terry steps whose metrics tests/c_abi.rs recomputes with the Rust API, a checkpoint written under `out`,
 * and the failing paths. */
static void test_reward_trainer(const char* dir, const char* out) {
  const char* records[2] = {
      "{\"prompt\": \"Is the square red?\", \"chosen\": \"Yes, it is red.\", \"rejected\": \"No.\", \"margin\": 0.5}",
      "{\"prompt\": \"Better?\", \"chosen\": \"The first.\", \"rejected\": \"Neither of them, really.\"}"};
  ur_trainer_config cfg = ur_trainer_config_default();
  cfg.total_steps = 2;
  cfg.lr = 1e-3;
  ur_reward_loss_config loss = ur_reward_loss_config_default();
  CHECK(loss.loss == UR_REWARD_LOSS_BRADLEY_TERRY && loss.center_rewards_coefficient == 0, "reward loss defaults");
  ur_reward_trainer* trainer = NULL;
  loss.loss = 7;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`loss` is 7", ur_reward_trainer_create(ctx, dir, &cfg, &loss, &trainer));
  loss.loss = UR_REWARD_LOSS_KWISE;
  loss.center_rewards_coefficient = 0.01;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "Bradley", ur_reward_trainer_create(ctx, dir, &cfg, &loss, &trainer));
  loss.loss = UR_REWARD_LOSS_BRADLEY_TERRY; /* with the centring term, 0.01 */
  FAILS(UR_ERROR_NULL_POINTER, "`model_dir`", ur_reward_trainer_create(ctx, NULL, &cfg, &loss, &trainer));
  CHECK(trainer == NULL, "a failed create wrote *out");
  OK(ur_reward_trainer_create(ctx, dir, &cfg, &loss, &trainer));
  ur_reward_step_metrics m[2];
  m[0].struct_size = sizeof m[0];
  const char* bad[1] = {"{\"prompt\": \"Hi?\", \"responses\": [\"Yes.\", \"No.\"]}"};
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`micro_batches[0][0]`", ur_reward_trainer_step(ctx, trainer, bad, 1, 0, &m[0]));
  for (int step = 0; step < 2; step++) {
    m[step].struct_size = sizeof m[step];
    OK(ur_reward_trainer_step(ctx, trainer, records, 2, step == 0 ? 0 : 1, &m[step]));
    CHECK(m[step].step == (uint64_t)step + 1 && m[step].groups == 2 && m[step].tokens > 0 && m[step].loss > 0,
          "step %d: step %llu, groups %llu, loss %g", step, (unsigned long long)m[step].step,
          (unsigned long long)m[step].groups, m[step].loss);
  }
  fprintf(dump_file, "reward_trainer.loss f32 1 2 %.17g %.17g\n", m[0].loss, m[1].loss);
  fprintf(dump_file, "reward_trainer.grad_norm f32 1 2 %.17g %.17g\n", m[0].grad_norm, m[1].grad_norm);
  fprintf(dump_file, "reward_trainer.margin f32 1 2 %.17g %.17g\n", m[0].margin, m[1].margin);
  OK(ur_reward_trainer_save(ctx, trainer, out));
  char path[4096 + 64]; /* `out` is at most 4095 characters (main's buffer) */
  snprintf(path, sizeof path, "%s/checkpoint-2/trainer_state/optimizer.safetensors", out);
  FILE* saved = fopen(path, "rb");
  CHECK(saved != NULL, "%s was not written", path);
  fclose(saved);

  FAILS(UR_ERROR_INVALID_ARGUMENT, "`total_steps`", ur_reward_trainer_step(ctx, trainer, records, 2, 0, &m[0]));
  FAILS(UR_ERROR_NULL_POINTER, "`trainer`", ur_reward_trainer_step(ctx, NULL, records, 2, 0, &m[0]));
  FAILS(UR_ERROR_NULL_POINTER, "`out_dir`", ur_reward_trainer_save(ctx, trainer, NULL));
  ur_reward_trainer_free(trainer);
  ur_reward_trainer_free(NULL);
  ur_host_cache_release();
  CHECK(ur_host_cache_bytes() == 0, "host cache released after the trainer");
}

/* The judge on the tiny LLaVA judge checkpoint `dir` (tests/c_abi.rs assembles it): a pair of image files against a
   caption, a response scored against a question about an image, the two in one batch, a reasoned judgment, and a
   judgment with a user's template (written to `template_path`). tests/c_abi.rs recomputes each with the Rust Judge.
   Bad input is refused by name with nothing written. */
static void dump_judgment(const char* key, const float* probs, const ur_judge_result* r) {
  char name[64];
  float copy[101];
  Tensor t;
  CHECK(r->num_probs <= 101, "%llu probabilities", (unsigned long long)r->num_probs);
  memcpy(copy, probs, sizeof(float) * (size_t)r->num_probs);
  snprintf(name, sizeof name, "%s.probs", key);
  dump(name, tensor(&t, copy, F32, 1, D(r->num_probs)));
  const float fields[5] = {(float)r->verdict, r->score, r->argmax_score, (float)r->position_consistent,
                           (float)r->prompt_tokens};
  const char* names[5] = {"verdict", "score", "argmax_score", "position_consistent", "prompt_tokens"};
  for (int i = 0; i < 5; i++) {
    snprintf(name, sizeof name, "%s.%s", key, names[i]);
    dump_scalar(name, fields[i]);
  }
  CHECK(r->seconds > 0.0, "%s took no time", key);
}

/* The reasoned judgment's answer and parse (the text as its bytes and NUL, for tests/c_abi.rs to compare). */
static void dump_reasoning(const char* key, const ur_judge_reasoning* r) {
  char name[64];
  int32_t bytes[512];
  Tensor t;
  CHECK(r->text_len < 512 && r->text[r->text_len] == '\0', "%llu bytes", (unsigned long long)r->text_len);
  for (uint64_t i = 0; i <= r->text_len; i++) bytes[i] = (unsigned char)r->text[i];
  snprintf(name, sizeof name, "%s.text", key);
  dump(name, tensor(&t, bytes, I32, 1, D(r->text_len + 1)));
  const float fields[5] = {(float)r->parse_status, (float)r->parsed_verdict, (float)r->parsed_score,
                           (float)r->generated_tokens, (float)r->reasoning_tokens};
  const char* names[5] = {"parse_status", "parsed_verdict", "parsed_score", "generated_tokens", "reasoning_tokens"};
  for (int i = 0; i < 5; i++) {
    snprintf(name, sizeof name, "%s.%s", key, names[i]);
    dump_scalar(name, fields[i]);
  }
  CHECK((r->parse_status == UR_PARSE_OK) == (r->parse_error[0] == '\0'), "parse error \"%s\"", r->parse_error);
}

/* A user's template: image generation scored 1 to 10 after a one-line instruction. */
static const char* const TEMPLATE_JSON =
    "{\"task\": \"image_generation\", \"mode\": \"pointwise\", \"media\": {\"kind\": \"image\", \"count\": 1}, "
    "\"instruction\": \"<image>\\nCaption: {caption}\\nRate it.\", "
    "\"answer\": {\"score\": {\"prefix\": \"Final Score:\", \"min\": 1, \"max\": 10}}}";

static void test_judge(const char* dir, const char* llava_root, const char* template_path) {
  char image0[512], image1[512], scene[512];
  snprintf(image0, sizeof image0, "%s/images/two_images_0.png", llava_root);
  snprintf(image1, sizeof image1, "%s/images/two_images_1.png", llava_root);
  snprintf(scene, sizeof scene, "%s/images/anyres_0.png", llava_root);
  const DLDevice cpu = {kDLCPU, 0};
  ur_judge* judge = NULL;
  FAILS(UR_ERROR_CHECKPOINT, "/no/such/judge", ur_judge_load(ctx, "/no/such/judge", F32, cpu, &judge));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`dtype`", ur_judge_load(ctx, dir, I32, cpu, &judge));
  CHECK(judge == NULL, "a failed load wrote the handle");
  OK(ur_judge_load(ctx, dir, F32, cpu, &judge));
  size_t n = 0;
  OK(ur_judge_num_probs(judge, UR_TASK_IMAGE_UNDERSTANDING, UR_JUDGE_POINTWISE, &n));
  CHECK(n == 101, "%zu probabilities on the 0..100 scale", n);
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`mode` is 4", ur_judge_num_probs(judge, 0, 4, &n));

  const char* caption_name[1] = {"caption"};
  const char* caption_value[1] = {"a red square"};
  ur_judge_context gen = ur_judge_context_default();
  gen.field_names = caption_name;
  gen.field_values = caption_value;
  gen.num_fields = 1;
  const ur_judge_item a = {UR_JUDGE_IMAGE, 0, image0}, b = {UR_JUDGE_IMAGE, 0, image1};
  float pair[3];
  ur_judge_result pr;
  memset(&pr, 0, sizeof pr);
  pr.struct_size = sizeof pr;
  OK(ur_judge_pairwise(ctx, judge, UR_TASK_IMAGE_GENERATION, &gen, &a, &b, pair, 3, &pr));
  dump_judgment("judge.pair", pair, &pr);

  const char* question_name[1] = {"question"};
  const char* question_value[1] = {"What color is the square?"};
  const ur_judge_item media[1] = {{UR_JUDGE_IMAGE, 0, scene}};
  ur_judge_context und = ur_judge_context_default();
  und.field_names = question_name;
  und.field_values = question_value;
  und.num_fields = 1;
  und.media = media;
  und.num_media = 1;
  const ur_judge_item response = {UR_JUDGE_TEXT, 0, "It is red."};
  float scale[101];
  ur_judge_result sr;
  memset(&sr, 0, sizeof sr);
  sr.struct_size = sizeof sr;
  OK(ur_judge_pointwise(ctx, judge, UR_TASK_IMAGE_UNDERSTANDING, &und, &response, scale, 101, &sr));
  dump_judgment("judge.point", scale, &sr);

  /* An image in memory: checked field by field before a byte is read (tests/c/judge.cpp judges pixels against
     their files under valgrind). */
  ur_judge_pixels pixels = ur_judge_pixels_default();
  CHECK(pixels.struct_size == sizeof pixels && pixels.num_frames == 1, "ur_judge_pixels defaults");
  static const uint8_t rgb[2 * 3 * 3] = {0};
  pixels.data = rgb;
  pixels.width = 3;
  const ur_judge_item in_memory = {UR_JUDGE_IMAGE_PIXELS, 0, &pixels};
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`b.value->height` is 0",
        ur_judge_pairwise(ctx, judge, UR_TASK_IMAGE_GENERATION, &gen, &a, &in_memory, pair, 3, &pr));

  /* Both again in one batch: the same numbers. */
  ur_judge_request requests[2] = {ur_judge_request_default(), ur_judge_request_default()};
  const ur_judge_item pair_items[2] = {a, b};
  requests[0].context = &gen;
  requests[0].candidates = pair_items;
  requests[0].num_candidates = 2;
  requests[1].task = UR_TASK_IMAGE_UNDERSTANDING;
  requests[1].mode = UR_JUDGE_POINTWISE;
  requests[1].context = &und;
  requests[1].candidates = &response;
  requests[1].num_candidates = 1;
  static float batch[2 * 101];
  ur_judge_result results[2];
  memset(results, 0, sizeof results);
  results[0].struct_size = results[1].struct_size = sizeof results[0];
  ur_judge_batch_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  OK(ur_judge_many(ctx, judge, requests, 2, batch, 101, results, &info));
  CHECK(memcmp(batch, pair, sizeof pair) == 0 && memcmp(batch + 101, scale, sizeof scale) == 0,
        "a batch changed the probabilities");
  CHECK(info.prefill_tokens > 0, "no prefill reported");

  /* A reasoned judgment: 4 tokens generated greedily, parsed, and the score's probabilities given the reasoning. */
  const ur_judge_item scene_item = {UR_JUDGE_IMAGE, 0, scene};
  ur_judge_request point = ur_judge_request_default();
  point.mode = UR_JUDGE_POINTWISE;
  point.context = &gen;
  point.candidates = &scene_item;
  point.num_candidates = 1;
  ur_generation_config cfg = ur_generation_config_default();
  cfg.max_new_tokens = 4;
  float reasoned[5];
  ur_judge_result rr;
  memset(&rr, 0, sizeof rr);
  rr.struct_size = sizeof rr;
  ur_judge_reasoning why;
  memset(&why, 0, sizeof why);
  why.struct_size = sizeof why;
  OK(ur_judge_reasoned(ctx, judge, &point, &cfg, reasoned, 5, &rr, &why));
  dump_judgment("judge.reasoned", reasoned, &rr);
  dump_reasoning("judge.reasoned", &why);
  cfg.top_p = 0.0f;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`cfg->top_p`", ur_judge_reasoned(ctx, judge, &point, &cfg, reasoned, 5, &rr, &why));
  cfg.top_p = 1.0f;
  FAILS(UR_ERROR_NULL_POINTER, "`reasoning`", ur_judge_reasoned(ctx, judge, &point, &cfg, reasoned, 5, &rr, NULL));

  /* A user's template, as text and as a file: the same judgment, on its 1..10 scale. */
  ur_judge_template mine = ur_judge_template_default();
  mine.mode = UR_JUDGE_POINTWISE;
  mine.json = TEMPLATE_JSON;
  OK(ur_judge_set_template(judge, &mine));
  OK(ur_judge_num_probs(judge, UR_TASK_IMAGE_GENERATION, UR_JUDGE_POINTWISE, &n));
  CHECK(n == 10, "%zu probabilities on the template's 1..10 scale", n);
  float templated[10], from_file[10];
  ur_judge_result tr;
  memset(&tr, 0, sizeof tr);
  tr.struct_size = sizeof tr;
  OK(ur_judge_pointwise(ctx, judge, UR_TASK_IMAGE_GENERATION, &gen, &scene_item, templated, 10, &tr));
  dump_judgment("judge.templated", templated, &tr);
  FILE* file = fopen(template_path, "w");
  CHECK(file != NULL && fputs(TEMPLATE_JSON, file) >= 0 && fclose(file) == 0, "cannot write %s", template_path);
  mine.json = NULL;
  mine.path = template_path;
  OK(ur_judge_set_template(judge, &mine));
  OK(ur_judge_pointwise(ctx, judge, UR_TASK_IMAGE_GENERATION, &gen, &scene_item, from_file, 10, &tr));
  CHECK(memcmp(templated, from_file, sizeof templated) == 0, "the file judged otherwise than its text");
  mine.json = TEMPLATE_JSON;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "both set", ur_judge_set_template(judge, &mine));
  mine.json = NULL;
  mine.task = UR_TASK_VIDEO_GENERATION;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "say video_generation.pointwise", ur_judge_set_template(judge, &mine));
  mine.task = 7;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`user_template->task` is 7", ur_judge_set_template(judge, &mine));
  mine.task = UR_TASK_IMAGE_GENERATION;
  mine.path = "/no/such/template.json";
  FAILS(UR_ERROR_INVALID_ARGUMENT, "/no/such/template.json", ur_judge_set_template(judge, &mine));
  FAILS(UR_ERROR_NULL_POINTER, "`user_template`", ur_judge_set_template(judge, NULL));

  /* Bad input: nothing written. */
  float untouched[3] = {-1.0f, -1.0f, -1.0f};
  ur_judge_result none;
  memset(&none, 0, sizeof none);
  none.struct_size = sizeof none;
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`task` is 9", ur_judge_pairwise(ctx, judge, 9, &gen, &a, &b, untouched, 3, &none));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "caption", ur_judge_pairwise(ctx, judge, 0, NULL, &a, &b, untouched, 3, &none));
  const ur_judge_item missing = {UR_JUDGE_IMAGE, 0, "/no/such/image.png"};
  FAILS(UR_ERROR_INVALID_ARGUMENT, "/no/such/image.png",
        ur_judge_pairwise(ctx, judge, 0, &gen, &a, &missing, untouched, 3, &none));
  FAILS(UR_ERROR_INVALID_ARGUMENT, "`probs_capacity` is 2",
        ur_judge_pairwise(ctx, judge, 0, &gen, &a, &b, untouched, 2, &none));
  FAILS(UR_ERROR_NULL_POINTER, "`b`", ur_judge_pairwise(ctx, judge, 0, &gen, &a, NULL, untouched, 3, &none));
  FAILS(UR_ERROR_NULL_POINTER, "`result`", ur_judge_pointwise(ctx, judge, 0, &gen, &a, untouched, 3, NULL));
  FAILS(UR_ERROR_NULL_POINTER, "`requests`", ur_judge_many(ctx, judge, NULL, 2, batch, 101, results, NULL));
  CHECK(untouched[0] == -1.0f && untouched[1] == -1.0f && untouched[2] == -1.0f && none.num_probs == 0,
        "a failing call wrote its outputs");
  ur_judge_free(judge);
  ur_judge_free(NULL);
  /* The judge's KV caches are large enough for the host cache to keep: hand them back so valgrind sees no leak. */
  ur_host_cache_release();
  CHECK(ur_host_cache_bytes() == 0, "host cache released after the judge");
}

int main(int argc, char** argv) {
  if (argc != 8) {
    fprintf(stderr,
            "usage: %s DUMP_FILE QWEN2_DIR PROMPT_IDS EXPECTED_IDS PREPROCESSOR_CONFIG LLAVA_FIXTURES JUDGE_DIR (ids "
            "comma-separated)\n",
            argv[0]);
    return 2;
  }
  dump_file = fopen(argv[1], "w");
  CHECK(dump_file != NULL, "cannot open %s", argv[1]);
  test_version_and_status();
  test_context();
  test_logprobs();
  test_fused_linear();
  test_dpo();
  test_reward_losses();
  test_heads();
  test_compare();
  test_adamw();
  test_model(argv[2], argv[3], argv[4]);
  test_image_processor(argv[5]);
  test_llava(argv[6]);
  char template_path[4096];
  snprintf(template_path, sizeof template_path, "%s.template.json", argv[1]);
  test_judge(argv[7], argv[6], template_path);
  char sft_out[4096];
  snprintf(sft_out, sizeof sft_out, "%s.sft", argv[1]);
  test_sft(argv[7], sft_out);
  char dpo_out[4096];
  snprintf(dpo_out, sizeof dpo_out, "%s.dpo", argv[1]);
  test_dpo_trainer(argv[7], dpo_out);
  char reward_out[4096];
  snprintf(reward_out, sizeof reward_out, "%s.reward", argv[1]);
  test_reward_trainer(argv[7], reward_out);
  ur_context_free(ctx);
  fclose(dump_file);
  printf("test_abi: %d checks passed\n", checks);
  return 0;
}
