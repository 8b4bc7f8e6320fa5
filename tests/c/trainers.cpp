// unireward::AdamW, SftTrainer, DpoTrainer and RewardTrainer (include/unireward.hpp) on the tiny judge checkpoint
// argv[1]: AdamW against a float64 loop here; two SFT, two DPO and two reward-model steps printed as "key step loss
// grad_norm lr extra" (%.17g) for
// tests/c_abi.rs to compare bit for bit with the Rust trainers, their checkpoints written under argv[2]; bad input
// throws the status and message. Exits non-zero on a failed check.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "expect_error.hpp"
#include "unireward.hpp"

namespace {

void require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "FAIL %s\n", what);
  std::exit(1);
}

// Two AdamW steps over two parameters against torch.optim.AdamW's update written out in double.
void adamw_checks(const unireward::Context& ctx) {
  using unireward::TensorRef;
  std::vector<float> w{0.5f, -1.0f, 0.25f, 2.0f, -0.75f, 1.5f}, b{0.1f, -0.2f, 0.3f};
  std::vector<float> gw{0.3f, -0.1f, 0.2f, -0.4f, 0.05f, 0.6f}, gb{-0.2f, 0.7f, 0.1f};
  std::vector<double> ref(w.begin(), w.end());
  ref.insert(ref.end(), b.begin(), b.end());
  std::vector<double> m(ref.size()), v(ref.size());
  const std::vector<TensorRef> params{TensorRef(w.data(), {2, 3}), TensorRef(b.data(), {3})};
  const std::vector<TensorRef> grads{TensorRef(gw.data(), {2, 3}), TensorRef(gb.data(), {3})};
  ur_adamw_config cfg = ur_adamw_config_default();
  cfg.lr = 0.1;
  cfg.weight_decay = 0.01;
  unireward::AdamW moved(ctx, params, {"weight", "bias"}, cfg);
  unireward::AdamW opt = std::move(moved);
  require(moved.get() == nullptr && opt.get() != nullptr, "AdamW moves its handle");
  for (int step = 1; step <= 2; ++step) {
    std::vector<float> g(gw);
    g.insert(g.end(), gb.begin(), gb.end());
    for (size_t i = 0; i < ref.size(); ++i) {
      ref[i] *= 1 - cfg.lr * cfg.weight_decay;
      m[i] = cfg.beta1 * m[i] + (1 - cfg.beta1) * g[i];
      v[i] = cfg.beta2 * v[i] + (1 - cfg.beta2) * static_cast<double>(g[i]) * g[i];
      const double mhat = m[i] / (1 - std::pow(cfg.beta1, step)), vhat = v[i] / (1 - std::pow(cfg.beta2, step));
      ref[i] -= cfg.lr * mhat / (std::sqrt(vhat) + cfg.eps);
    }
    const ur_adamw_step_report r = opt.step(params, grads);
    require(r.step == static_cast<uint64_t>(step) && r.lr == cfg.lr && r.clip_coef == 1.0 && std::isnan(r.grad_norm),
            "AdamW report");
    for (size_t i = 0; i < ref.size(); ++i) {
      const double got = i < w.size() ? w[i] : b[i - w.size()];
      require(std::fabs(got - ref[i]) <= 1e-6 * (1 + std::fabs(ref[i])), "AdamW parameters against float64");
    }
  }
  const std::vector<float> before(w);
  expect_error([&] { opt.step(params, {grads[0]}); }, UR_ERROR_INVALID_ARGUMENT, "1 gradients");
  expect_error([&] { unireward::AdamW(ctx, params, {"only one"}); }, UR_ERROR_INVALID_ARGUMENT, "1 names");
  require(w == before, "a refused AdamW step wrote the parameters");

  // Resume: a fresh optimizer over copies of the parameters, given the state, steps as the original does (bitwise);
  // a state of other sizes is refused with nothing changed.
  const unireward::AdamW::State saved = opt.state();
  require(saved.step == 2 && saved.exp_avg.size() == 9 && saved.exp_avg_sq.size() == 9 && saved.master.empty(),
          "AdamW state sizes");
  std::vector<float> w2(w), b2(b);
  const std::vector<TensorRef> params2{TensorRef(w2.data(), {2, 3}), TensorRef(b2.data(), {3})};
  unireward::AdamW resumed(ctx, params2, {"weight", "bias"}, cfg);
  unireward::AdamW::State truncated = saved;
  truncated.exp_avg.pop_back();
  expect_error([&] { resumed.load_state(truncated); }, UR_ERROR_INVALID_ARGUMENT, "exp_avg");
  require(resumed.state_numel().step == 0, "a refused load_state changed the optimizer");
  resumed.load_state(saved);
  const ur_adamw_step_report r3 = opt.step(params, grads), r3b = resumed.step(params2, grads);
  require(r3.step == 3 && r3b.step == 3 && r3.lr == r3b.lr, "resumed AdamW report");
  require(w == w2 && b == b2, "a resumed AdamW steps bitwise as the original");
  std::printf("adamw ok\n");
}

template <typename Metrics>
void print_step(const char* key, const Metrics& m, double extra) {
  std::printf("%s %llu %.17g %.17g %.17g %.17g\n", key, static_cast<unsigned long long>(m.step), m.loss, m.grad_norm,
              m.lr, extra);
}

void trainer_checks(const unireward::Context& ctx, const std::string& dir, const std::string& out) {
  unireward::TrainerConfig cfg;
  cfg.config.total_steps = 2;
  cfg.config.lr = 1e-3;
  expect_error([&] { unireward::SftTrainer(ctx, "/no/such/model", cfg); }, UR_ERROR_INVALID_ARGUMENT,
               "does not exist");
  const std::vector<std::string> conversations{
      R"({"conversations": [{"from": "human", "value": "Is the square red?"}, {"from": "gpt", "value": "Yes, it is red."}]})",
      R"({"id": 7, "conversations": [{"from": "human", "value": "Better?"}, {"from": "gpt", "value": "No."}]})"};
  unireward::SftTrainer sft(ctx, dir, cfg);
  expect_error([&] { sft.step({R"({"conversations": [{"from": "human", "value": "Hi?"}]})"}); },
               UR_ERROR_INVALID_ARGUMENT, "`micro_batches[0][0]`: no assistant");
  print_step("sft.0", sft.step(conversations), 0);
  const ur_sft_step_metrics second = sft.step(conversations, 1);
  print_step("sft.1", second, static_cast<double>(second.tokens));
  expect_error([&] { sft.step(conversations); }, UR_ERROR_INVALID_ARGUMENT, "`total_steps`");
  expect_error([&] { sft.step({}); }, UR_ERROR_INVALID_ARGUMENT, "no records");
  sft.save(out + "/sft");
  // Resumed at its step 2 of 2: nothing left to step.
  unireward::TrainerConfig resumed = cfg;
  resumed.resume_from = out + "/sft/checkpoint-2";
  unireward::SftTrainer again(ctx, dir, resumed);
  expect_error([&] { again.step(conversations); }, UR_ERROR_INVALID_ARGUMENT, "`total_steps`");
  // Per-task losses: the records with a task each, one step.
  unireward::TrainerConfig one = cfg;
  one.config.total_steps = 1;
  unireward::SftTrainer tasked(ctx, dir, one);
  expect_error([&] { tasked.set_tasks({"qa", "qa"}); }, UR_ERROR_INVALID_ARGUMENT, "named twice");
  tasked.set_tasks({"chat", "qa"});
  tasked.step({R"({"task": "qa", )" + conversations[0].substr(1), R"({"task": "chat", )" + conversations[1].substr(1)});
  const std::vector<double> task_losses = tasked.task_losses();
  std::printf("sft.tasks %.17g %.17g\n", task_losses[0], task_losses[1]);

  const std::vector<std::string> pairs{
      R"({"prompt": "Is the square red?", "chosen": "Yes, it is red.", "rejected": "No."})",
      R"({"prompt": "Better?", "chosen": "The first.", "rejected": "Neither of them, really."})"};
  ur_dpo_config loss = ur_dpo_config_default();
  loss.beta = 0.5f;
  unireward::DpoTrainer dpo(ctx, dir, cfg, loss);
  // Refused before any work: the steps below still equal Rust's.
  expect_error([&] { dpo.step({pairs[0], R"({"prompt": "Hi?"})"}, 1); }, UR_ERROR_INVALID_ARGUMENT,
               "`micro_batches[1][0]`");
  print_step("dpo.0", dpo.step(pairs), 0);
  const ur_dpo_step_metrics m = dpo.step(pairs, 1);
  print_step("dpo.1", m, m.rewards_margins);
  dpo.save(out + "/dpo");

  ur_reward_loss_config reward_loss = ur_reward_loss_config_default();
  reward_loss.center_rewards_coefficient = 0.01;
  unireward::RewardTrainer reward(ctx, dir, cfg, reward_loss);
  expect_error([&] { reward.step({pairs[0], R"({"prompt": "Hi?", "responses": ["a", "b"]})"}, 1); },
               UR_ERROR_INVALID_ARGUMENT, "`micro_batches[1][0]`");
  print_step("reward.0", reward.step(pairs), 0);
  const ur_reward_step_metrics r = reward.step(pairs, 1);
  print_step("reward.1", r, r.margin);
  reward.save(out + "/reward");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s JUDGE_DIR OUT_DIR\n", argv[0]);
    return 2;
  }
  const unireward::Context ctx;
  adamw_checks(ctx);
  trainer_checks(ctx, argv[1], argv[2]);
  // The trainers' activation arenas are large enough for the host cache to keep: hand them back for valgrind.
  unireward::release_host_cache();
  return 0;
}
