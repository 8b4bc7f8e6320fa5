#include <unireward.hpp>

#include <cstdio>
#include <vector>

int main() {
  using unireward::TensorRef;
  unireward::Context ctx;
  // Log-probs of two chosen and two rejected completions, under the policy and the reference model.
  std::vector<float> chosen{-3.0f, -2.5f}, rejected{-4.0f, -2.0f};
  std::vector<float> ref_chosen{-3.5f, -2.5f}, ref_rejected{-3.5f, -2.5f};
  std::vector<float> grad_chosen(2), grad_rejected(2);
  ur_dpo_config cfg = ur_dpo_config_default();  // TRL's sigmoid loss, beta 0.1
  try {
    unireward::DpoLoss out = ctx.dpo_loss(
        TensorRef(chosen.data(), {2}), TensorRef(rejected.data(), {2}), TensorRef(ref_chosen.data(), {2}),
        TensorRef(ref_rejected.data(), {2}), nullptr, nullptr, &cfg, TensorRef(grad_chosen.data(), {2}),
        TensorRef(grad_rejected.data(), {2}));
    std::printf("loss %.6f, accuracy %.2f, d loss / d chosen[0] %.6f\n", out.loss, out.metrics.rewards_accuracies,
                grad_chosen[0]);
  } catch (const unireward::Error& e) {  // e.status(): the ur_status code; e.what(): its name and message
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
