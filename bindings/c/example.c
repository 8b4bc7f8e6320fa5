/* The README's C example: sequence log-probabilities, then the DPO loss and its gradient, on the CPU.
 *   cc -I include bindings/c/example.c -L target/release -lunireward -o example */
#include <stdio.h>

#include "unireward.h"

#define CHECK(call)                                                                          \
  do {                                                                                       \
    ur_status s = (call);                                                                    \
    if (s != UR_OK) {                                                                        \
      fprintf(stderr, "%s failed: %s: %s\n", #call, ur_status_name(s), ur_last_error_message()); \
      return 1;                                                                              \
    }                                                                                        \
  } while (0)

/* A row-major CPU float32/int64 DLTensor over `data`. */
static DLTensor cpu(void* data, DLDataType dtype, int ndim, int64_t* shape) {
  DLTensor t = {data, {kDLCPU, 0}, ndim, dtype, shape, NULL, 0};
  return t;
}

int main(void) {
  if (ur_abi_version() != UR_ABI_VERSION) {
    fprintf(stderr, "libunireward has ABI %u, this program was built for %d\n", ur_abi_version(), UR_ABI_VERSION);
    return 1;
  }
  const DLDataType f32 = {kDLFloat, 32, 1}, i64 = {kDLInt, 64, 1};
  ur_context* ctx = NULL;
  CHECK(ur_context_create(&ctx));

  /* Two sequences (chosen, rejected) of 3 tokens over a vocabulary of 4; the first token is prompt (-100). */
  float logits[2 * 3 * 4] = {0.1f, 0.2f, 0.3f, 0.4f, 1.0f, 0.0f, -1.0f, 0.5f, 0.3f, 2.0f, -0.5f, 0.0f,
                             0.4f, 0.3f, 0.2f, 0.1f, 0.0f, 1.5f, 0.5f, -1.0f, 1.0f, 1.0f, 0.0f, -2.0f};
  int64_t labels[2 * 3] = {-100, 0, 1, -100, 3, 3};
  float logps[2];
  int64_t logits_shape[3] = {2, 3, 4}, labels_shape[2] = {2, 3}, pair_shape[1] = {1}, seq_shape[1] = {2};
  DLTensor t_logits = cpu(logits, f32, 3, logits_shape), t_labels = cpu(labels, i64, 2, labels_shape);
  DLTensor t_logps = cpu(logps, f32, 1, seq_shape);
  CHECK(ur_logprobs_forward(ctx, &t_logits, &t_labels, NULL, NULL, &t_logps, NULL, NULL, NULL, NULL, NULL));

  /* One preference pair: logps[0] is chosen, logps[1] rejected; reference log-probs precomputed. */
  float ref_chosen = -3.0f, ref_rejected = -4.0f, grad_chosen, grad_rejected, loss;
  DLTensor pc = cpu(&logps[0], f32, 1, pair_shape), pr = cpu(&logps[1], f32, 1, pair_shape);
  DLTensor rc = cpu(&ref_chosen, f32, 1, pair_shape), rr = cpu(&ref_rejected, f32, 1, pair_shape);
  DLTensor gc = cpu(&grad_chosen, f32, 1, pair_shape), gr = cpu(&grad_rejected, f32, 1, pair_shape);
  ur_dpo_config cfg = ur_dpo_config_default(); /* TRL's defaults: sigmoid loss, beta = 0.1 */
  ur_dpo_metrics metrics = {.struct_size = sizeof metrics};
  CHECK(ur_dpo_loss(ctx, &pc, &pr, &rc, &rr, NULL, NULL, &cfg, &loss, &gc, &gr, &metrics, NULL));
  printf("logps %.4f %.4f  loss %.4f  d/dchosen %.4f  margin %.4f\n", logps[0], logps[1], loss, grad_chosen,
         metrics.rewards_margins);

  /* Errors come back as a status and a message, never a crash. */
  if (ur_dpo_loss(ctx, &pc, &pr, NULL, NULL, NULL, NULL, &cfg, &loss, &gc, &gr, NULL, NULL) != UR_OK)
    printf("expected error: %s\n", ur_last_error_message());

  ur_context_free(ctx);
  return 0;
}
