// The cxx bridge from C++: link `unireward::cxx` (the static library), include "rust/cxx.h" and "unireward_cxx.h".
// CPU work on host arrays: sequence log-probs and their gradient, a DPO loss, a verdict head, a comparison and the
// pair selection. A Rust error arrives as a rust::Error exception. Exits non-zero if a result is wrong.
#include "rust/cxx.h"  // rust::Error, rust::Vec, ... (the generated header inlines only what it declares)
#include "unireward_cxx.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace ur = unireward::rs;

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  failures += ok ? 0 : 1;
}

bool near(float a, float b, float tol = 1e-5f) { return std::fabs(a - b) <= tol * (1.0f + std::fabs(b)); }

template <typename T>
rust::Slice<const T> slice(const std::vector<T>& v) {
  return {v.data(), v.size()};
}

}  // namespace

int main() {
  std::printf("unireward %s (cxx bridge)\n", std::string(ur::version()).c_str());

  // Log-probs of two sequences of three tokens over a vocabulary of four; the last label of sequence 1 is ignored.
  const ur::LogitsShape shape{2, 3, 4};
  std::vector<float> logits(2 * 3 * 4);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = 0.25f * static_cast<float>(i % 7) - 0.5f;
  const std::vector<int64_t> labels{0, 1, 2, 3, 2, -100};
  const ur::LogProbsOptions options = ur::logprobs_options_default();
  const ur::SequenceLogps out = ur::sequence_logprobs(slice(logits), slice(labels), {}, shape, options);
  // The reference: log softmax(row)[label], summed over counted tokens.
  float expected[2] = {0.0f, 0.0f};
  for (size_t row = 0; row < 6; ++row) {
    if (labels[row] == -100) continue;
    const float* x = &logits[row * 4];
    float lse = 0.0f;
    for (int j = 0; j < 4; ++j) lse += std::exp(x[j]);
    expected[row / 3] += x[labels[row]] - std::log(lse);
  }
  expect(near(out.logps[0], expected[0]) && near(out.logps[1], expected[1]), "sequence log-probs");
  expect(out.token_counts[0] == 3.0f && out.token_counts[1] == 2.0f, "token counts");

  // d(sum of log-probs)/d logits sums to 0 over each row (softmax minus one-hot).
  const std::vector<float> ones{1.0f, 1.0f};
  const rust::Vec<float> grad =
      ur::sequence_logprobs_backward(slice(logits), slice(labels), {}, shape, out, slice(ones), options);
  float row_sum = 0.0f;
  for (int j = 0; j < 4; ++j) row_sum += grad[j];
  expect(grad.size() == logits.size() && near(row_sum, 0.0f), "log-prob gradient");

  // DPO (sigmoid, beta 0.1) on those log-probs as the policy's, against a reference.
  const std::vector<float> chosen{out.logps[0], -3.0f}, rejected{out.logps[1], -2.0f};
  const std::vector<float> ref_chosen{-4.0f, -3.5f}, ref_rejected{-4.5f, -1.0f};
  ur::DpoOptions dpo = ur::dpo_options_default();
  const ur::DpoResult loss = ur::dpo_loss(slice(chosen), slice(rejected), slice(ref_chosen), slice(ref_rejected),
                                          {}, {}, dpo);
  float mean = 0.0f;
  for (int p = 0; p < 2; ++p) {
    const float z = dpo.beta * ((chosen[p] - ref_chosen[p]) - (rejected[p] - ref_rejected[p]));
    mean += std::log1p(std::exp(-z)) / 2.0f;
  }
  expect(near(loss.loss, mean), "DPO loss");
  expect(loss.grad_policy_chosen.size() == 2 && std::isnan(loss.metrics.nll_loss), "DPO gradient and metrics");

  // A verdict head over the answer-position logits: classes "yes" = {1}, "no" = {2, 3}, scored 1 and 0.
  const rust::Box<ur::VerdictClasses> classes =
      ur::verdict_classes(slice(std::vector<int64_t>{0, 1, 3}), slice(std::vector<int64_t>{1, 2, 3}),
                          slice(std::vector<float>{1.0f, 0.0f}));
  const std::vector<float> answer{0.0f, 2.0f, 1.0f, 1.0f};  // [B = 1, V = 4]
  const ur::Verdict verdict = ur::verdict_head(slice(answer), 1, 4, *classes);
  const float p_yes = std::exp(2.0f) / (std::exp(2.0f) + 2.0f * std::exp(1.0f));
  expect(classes->num_classes() == 2 && near(verdict.probs[0], p_yes) && near(verdict.expected_score[0], p_yes),
         "verdict head");

  // Compare three candidates by score, then select the pair with pointwise scores.
  const std::vector<float> scores{0.5f, 2.0f, -1.0f};
  const ur::Comparison cmp = ur::compare(ur::VerdictKind::Scores, slice(scores), 1, 3, ur::compare_options_default());
  expect(cmp.best[0] == 1 && cmp.worst[0] == 2 && cmp.ranks[1] == 1, "compare");
  ur::SelectionOptions selection_options = ur::selection_options_default();
  selection_options.pairing = ur::Pairing::AllPairs;
  const ur::Selection pick =
      ur::select_pairs(ur::VerdictKind::Scores, slice(scores), slice(scores), 1, 3, selection_options);
  expect(pick.kept[0] == 1 && pick.chosen[0] == 1 && pick.rejected[0] == 2, "select pairs");

  // Errors are exceptions carrying the library's message.
  try {
    ur::sequence_logprobs(slice(logits), slice(labels), {}, ur::LogitsShape{2, 3, 5}, options);
    expect(false, "a wrong shape throws");
  } catch (const rust::Error& e) {
    std::printf("     (%s)\n", e.what());
    expect(std::string(e.what()).find("logits") != std::string::npos, "a wrong shape throws rust::Error");
  }

  std::printf("%s\n", failures == 0 ? "all passed" : "FAILED");
  return failures == 0 ? 0 : 1;
}
