#include <rust/cxx.h>
#include <unireward_cxx.h>

#include <cstdio>
#include <vector>

int main() {
  namespace ur = unireward::rs;
  std::vector<float> chosen{-3.0f, -2.5f}, rejected{-4.0f, -2.0f};
  std::vector<float> ref_chosen{-3.5f, -2.5f}, ref_rejected{-3.5f, -2.5f};
  ur::DpoOptions options = ur::dpo_options_default();  // TRL's sigmoid loss, beta 0.1
  try {
    ur::DpoResult out = ur::dpo_loss({chosen.data(), 2}, {rejected.data(), 2}, {ref_chosen.data(), 2},
                                     {ref_rejected.data(), 2}, {}, {}, options);
    std::printf("loss %.6f, accuracy %.2f, d loss / d chosen[0] %.6f\n", out.loss,
                out.metrics.rewards_accuracies, out.grad_policy_chosen[0]);
  } catch (const rust::Error& e) {  // the library's error message
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
