// The C ABI from C++ through the header-only RAII wrapper unireward.hpp: link `unireward::unireward`
// (libunireward.so). CPU tensors over std::vector memory: sequence log-probs and their gradient (also in place),
// a DPO loss, a Bradley-Terry loss, a verdict head, a comparison and the pair selection; errors as exceptions.
// Exits non-zero if a result is wrong.
#include "unireward.hpp"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

using unireward::TensorRef;

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  failures += ok ? 0 : 1;
}

bool near(float a, float b, float tol = 1e-5f) { return std::fabs(a - b) <= tol * (1.0f + std::fabs(b)); }

}  // namespace

int main() {
  std::printf("unireward %s, ABI %u\n", unireward::version().c_str(), unireward::abi_version());
  unireward::Context ctx;

  // Log-probs of N = 2 sequences of T = 3 tokens over V = 4; the last label of sequence 1 is ignored.
  const int64_t N = 2, T = 3, V = 4;
  std::vector<float> logits(N * T * V);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = 0.25f * static_cast<float>(i % 7) - 0.5f;
  const std::vector<int64_t> labels{0, 1, 2, 3, 2, -100};
  std::vector<float> logps(N), counts(N), lse(N * T);
  ctx.logprobs_forward(TensorRef(logits.data(), {N, T, V}), TensorRef(labels.data(), {N, T}), nullptr, nullptr,
                       TensorRef(logps.data(), {N}), TensorRef(counts.data(), {N}), nullptr, nullptr,
                       TensorRef(lse.data(), {N, T}));
  float expected[2] = {0.0f, 0.0f};
  for (int64_t row = 0; row < N * T; ++row) {
    if (labels[row] == -100) continue;
    float sum = 0.0f;
    for (int64_t j = 0; j < V; ++j) sum += std::exp(logits[row * V + j]);
    expected[row / T] += logits[row * V + labels[row]] - std::log(sum);
  }
  expect(near(logps[0], expected[0]) && near(logps[1], expected[1]), "sequence log-probs");
  expect(counts[0] == 3.0f && counts[1] == 2.0f, "token counts");

  // The gradient of the summed log-probs, into a new buffer, then in place over a copy of the logits.
  const std::vector<float> ones(N, 1.0f);
  std::vector<float> grad(logits.size());
  ctx.logprobs_backward(TensorRef(logits.data(), {N, T, V}), TensorRef(labels.data(), {N, T}), nullptr,
                        TensorRef(lse.data(), {N, T}), TensorRef(counts.data(), {N}), TensorRef(ones.data(), {N}),
                        nullptr, TensorRef(grad.data(), {N, T, V}));
  std::vector<float> in_place = logits;
  const TensorRef in_place_ref(in_place.data(), {N, T, V});
  ctx.logprobs_backward(in_place_ref, TensorRef(labels.data(), {N, T}), nullptr, TensorRef(lse.data(), {N, T}),
                        TensorRef(counts.data(), {N}), TensorRef(ones.data(), {N}), nullptr, in_place_ref);
  float row_sum = 0.0f;
  for (int64_t j = 0; j < V; ++j) row_sum += grad[j];
  expect(near(row_sum, 0.0f) && in_place == grad, "log-prob gradient (and in place)");

  // DPO (TRL's sigmoid loss, beta 0.1) with a reference model.
  const std::vector<float> chosen{logps[0], -3.0f}, rejected{logps[1], -2.0f};
  const std::vector<float> ref_chosen{-4.0f, -3.5f}, ref_rejected{-4.5f, -1.0f};
  std::vector<float> grad_chosen(2), grad_rejected(2);
  const ur_dpo_config dpo = ur_dpo_config_default();
  const unireward::DpoLoss loss = ctx.dpo_loss(
      TensorRef(chosen.data(), {2}), TensorRef(rejected.data(), {2}), TensorRef(ref_chosen.data(), {2}),
      TensorRef(ref_rejected.data(), {2}), nullptr, nullptr, &dpo, TensorRef(grad_chosen.data(), {2}),
      TensorRef(grad_rejected.data(), {2}));
  float mean = 0.0f;
  for (int p = 0; p < 2; ++p) {
    const float z = dpo.beta * ((chosen[p] - ref_chosen[p]) - (rejected[p] - ref_rejected[p]));
    mean += std::log1p(std::exp(-z)) / 2.0f;
  }
  expect(near(loss.loss, mean) && std::isnan(loss.metrics.nll_loss), "DPO loss and metrics");
  expect(near(grad_chosen[0], -grad_rejected[0]), "DPO gradient");

  // Bradley-Terry on scalar rewards.
  const std::vector<float> r_chosen{1.0f, 0.5f}, r_rejected{0.0f, 1.5f};
  const unireward::BradleyTerryLoss bt =
      ctx.bradley_terry_loss(TensorRef(r_chosen.data(), {2}), TensorRef(r_rejected.data(), {2}), nullptr, nullptr,
                             TensorRef(grad_chosen.data(), {2}), TensorRef(grad_rejected.data(), {2}));
  const float bt_expected = (std::log1p(std::exp(-1.0f)) + std::log1p(std::exp(1.0f))) / 2.0f;
  expect(near(bt.loss, bt_expected) && bt.metrics.accuracy == 0.5f, "Bradley-Terry loss");

  // A verdict head: classes "yes" = {1} and "no" = {2, 3}, scored 1 and 0.
  const std::vector<float> answer{0.0f, 2.0f, 1.0f, 1.0f};  // [B = 1, V = 4]
  const std::vector<int64_t> offsets{0, 1, 3}, ids{1, 2, 3};
  const float values[2] = {1.0f, 0.0f};
  std::vector<float> probs(2), score(1);
  ctx.verdict_head_forward(TensorRef(answer.data(), {1, 4}), TensorRef(offsets.data(), {3}),
                           TensorRef(ids.data(), {3}), values, 2, TensorRef(probs.data(), {1, 2}), nullptr,
                           TensorRef(score.data(), {1}));
  const float p_yes = std::exp(2.0f) / (std::exp(2.0f) + 2.0f * std::exp(1.0f));
  expect(near(probs[0], p_yes) && near(score[0], p_yes), "verdict head");

  // Compare one group of three candidates by score, and select a pair among all pairs.
  const std::vector<float> scores{0.5f, 2.0f, -1.0f};
  std::vector<int32_t> ranks(3), best(1), worst(1), chosen_ix(1), rejected_ix(1), kept(1);
  const TensorRef scores_ref(scores.data(), {1, 3});
  ctx.compare(scores_ref, nullptr, nullptr, nullptr, nullptr, TensorRef(ranks.data(), {1, 3}), nullptr, nullptr,
              nullptr, TensorRef(best.data(), {1}), TensorRef(worst.data(), {1}));
  expect(best[0] == 1 && worst[0] == 2 && ranks[1] == 1, "compare");
  ur_select_config select = ur_select_config_default();
  select.pairing = UR_PAIRING_ALL_PAIRS;
  ctx.select_pairs(scores_ref, scores_ref, &select, TensorRef(chosen_ix.data(), {1}),
                   TensorRef(rejected_ix.data(), {1}), nullptr, nullptr, TensorRef(kept.data(), {1}));
  expect(kept[0] == 1 && chosen_ix[0] == 1 && rejected_ix[0] == 2, "select pairs");

  // Failures throw unireward::Error with the status code and the library's message.
  try {
    ctx.logprobs_forward(TensorRef(logits.data(), {N, T, V}), TensorRef(labels.data(), {N, T + 1}), nullptr,
                         nullptr, TensorRef(logps.data(), {N}));
    expect(false, "a shape mismatch throws");
  } catch (const unireward::Error& e) {
    std::printf("     (%s)\n", e.what());
    expect(e.status() == UR_ERROR_SHAPE, "a shape mismatch throws unireward::Error(UR_ERROR_SHAPE)");
  }
  try {
    ctx.logprobs_forward(nullptr, TensorRef(labels.data(), {N, T}), nullptr, nullptr, TensorRef(logps.data(), {N}));
    expect(false, "a null tensor throws");
  } catch (const unireward::Error& e) {
    expect(e.status() == UR_ERROR_NULL_POINTER, "a null tensor throws unireward::Error(UR_ERROR_NULL_POINTER)");
  }

  // A context moves; the moved-from one holds nothing and frees nothing.
  unireward::Context moved = std::move(ctx);
  expect(moved.get() != nullptr && ctx.get() == nullptr, "Context moves");  // NOLINT(bugprone-use-after-move)

  std::printf("%s\n", failures == 0 ? "all passed" : "FAILED");
  return failures == 0 ? 0 : 1;
}
