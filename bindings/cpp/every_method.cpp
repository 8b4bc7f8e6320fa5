// Every unireward::Context and unireward::Model method once on small CPU inputs, checked against a reference or
// against another op, so that a wrapper passing arguments in the wrong order fails here (example.cpp shows the
// common ones). Exits non-zero if a result is wrong.
#include "unireward.hpp"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

using unireward::TensorRef;

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  failures += ok ? 0 : 1;
}

bool near(float a, float b, float tol = 1e-4f) { return std::fabs(a - b) <= tol * (1.0f + std::fabs(b)); }

float log_sigmoid(float x) { return -std::log1p(std::exp(-x)); }

std::vector<float> ramp(size_t n, float scale, float shift) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * static_cast<float>((i * 7) % 11) + shift;
  return v;
}

}  // namespace

int main() {
  const unireward::Context ctx;
  const int64_t N = 2, T = 3, H = 4, V = 5;

  // Fused linear log-probs equal the log-probs of the materialised logits hidden · weightᵀ + bias.
  const std::vector<float> hidden = ramp(N * T * H, 0.1f, -0.4f), weight = ramp(V * H, 0.07f, -0.3f);
  const std::vector<float> bias = ramp(V, 0.05f, 0.0f);
  const std::vector<int64_t> labels{1, 4, -100, 0, 2, 3};
  std::vector<float> logits(N * T * V);
  for (int64_t r = 0; r < N * T; ++r)
    for (int64_t v = 0; v < V; ++v) {
      float x = bias[v];
      for (int64_t h = 0; h < H; ++h) x += hidden[r * H + h] * weight[v * H + h];
      logits[r * V + v] = x;
    }
  std::vector<float> logps(N), counts(N), lse(N * T), fused_logps(N), fused_lse(N * T);
  const TensorRef labels_ref(labels.data(), {N, T});
  ctx.logprobs_forward(TensorRef(logits.data(), {N, T, V}), labels_ref, nullptr, nullptr, TensorRef(logps.data(), {N}),
                       TensorRef(counts.data(), {N}), nullptr, nullptr, TensorRef(lse.data(), {N, T}));
  const TensorRef hidden_ref(hidden.data(), {N, T, H}), weight_ref(weight.data(), {V, H}), bias_ref(bias.data(), {V});
  ctx.fused_linear_logprobs_forward(hidden_ref, weight_ref, bias_ref, labels_ref, nullptr, nullptr,
                                    TensorRef(fused_logps.data(), {N}), nullptr, nullptr, nullptr,
                                    TensorRef(fused_lse.data(), {N, T}));
  expect(near(fused_logps[0], logps[0]) && near(fused_logps[1], logps[1]), "fused_linear_logprobs_forward");

  // Its bias gradient is the logits gradient summed over tokens.
  const std::vector<float> ones(N, 1.0f);
  std::vector<float> grad_logits(N * T * V), grad_hidden(N * T * H), grad_weight(V * H), grad_bias(V);
  ctx.logprobs_backward(TensorRef(logits.data(), {N, T, V}), labels_ref, nullptr, TensorRef(lse.data(), {N, T}),
                        TensorRef(counts.data(), {N}), TensorRef(ones.data(), {N}), nullptr,
                        TensorRef(grad_logits.data(), {N, T, V}));
  ctx.fused_linear_logprobs_backward(hidden_ref, weight_ref, bias_ref, labels_ref, nullptr,
                                     TensorRef(fused_lse.data(), {N, T}), TensorRef(ones.data(), {N}), nullptr,
                                     TensorRef(grad_hidden.data(), {N, T, H}), TensorRef(grad_weight.data(), {V, H}),
                                     TensorRef(grad_bias.data(), {V}));
  bool bias_ok = true;
  for (int64_t v = 0; v < V; ++v) {
    float sum = 0.0f;
    for (int64_t r = 0; r < N * T; ++r) sum += grad_logits[r * V + v];
    bias_ok = bias_ok && near(grad_bias[v], sum);
  }
  expect(bias_ok, "fused_linear_logprobs_backward");

  // Scalar head: rewards [N, C] = weight · hidden[n, ends[n]] + bias; the bias gradient sums grad_rewards over N.
  const int64_t C = 2;
  const std::vector<int64_t> ends{2, 1};
  const std::vector<float> head_w = ramp(C * H, 0.2f, -0.5f), head_b{0.25f, -0.25f};
  std::vector<float> rewards(N * C);
  ctx.scalar_head_forward(hidden_ref, TensorRef(ends.data(), {N}), TensorRef(head_w.data(), {C, H}),
                          TensorRef(head_b.data(), {C}), TensorRef(rewards.data(), {N, C}));
  float r10 = head_b[0];
  for (int64_t h = 0; h < H; ++h) r10 += head_w[h] * hidden[(1 * T + ends[1]) * H + h];
  expect(near(rewards[1 * C + 0], r10), "scalar_head_forward");
  const std::vector<float> grad_rewards{1.0f, 2.0f, 3.0f, 4.0f};
  std::vector<float> head_grad_hidden(N * T * H), head_grad_w(C * H), head_grad_b(C);
  ctx.scalar_head_backward(hidden_ref, TensorRef(ends.data(), {N}), TensorRef(head_w.data(), {C, H}),
                           TensorRef(head_b.data(), {C}), TensorRef(grad_rewards.data(), {N, C}),
                           TensorRef(head_grad_hidden.data(), {N, T, H}), TensorRef(head_grad_w.data(), {C, H}),
                           TensorRef(head_grad_b.data(), {C}));
  expect(near(head_grad_b[0], 4.0f) && near(head_grad_b[1], 6.0f) && head_grad_hidden[0] == 0.0f,
         "scalar_head_backward");

  // K-wise with K = 2 is Bradley-Terry.
  const std::vector<float> ranked{1.0f, 0.0f, 0.5f, 1.5f};  // [G = 2, K = 2], best first
  std::vector<float> kwise_grad(4);
  const unireward::KwiseLoss kwise =
      ctx.kwise_loss(TensorRef(ranked.data(), {2, 2}), nullptr, nullptr, TensorRef(kwise_grad.data(), {2, 2}));
  expect(near(kwise.loss, -(log_sigmoid(1.0f) + log_sigmoid(-1.0f)) / 2.0f) && kwise.accuracy == 0.5f,
         "kwise_loss");

  // Diffusion-DPO: mean_b -log sigmoid(-beta/2 ((mse_w - mse_l) - (ref_mse_w - ref_mse_l))).
  const int64_t B = 2, D = 3;
  const std::vector<float> mw = ramp(B * D, 0.1f, 0.0f), ml = ramp(B * D, -0.1f, 0.2f);
  const std::vector<float> rw = ramp(B * D, 0.05f, 0.1f), rl = ramp(B * D, 0.02f, -0.1f);
  const std::vector<float> tw(B * D, 0.3f), tl(B * D, -0.2f);
  std::vector<float> grad_w(B * D), grad_l(B * D);
  ur_diffusion_dpo_config dcfg = ur_diffusion_dpo_config_default();
  dcfg.beta = 10.0f;
  const unireward::DiffusionDpoLoss diffusion = ctx.diffusion_dpo_loss(
      TensorRef(mw.data(), {B, D}), TensorRef(ml.data(), {B, D}), TensorRef(rw.data(), {B, D}),
      TensorRef(rl.data(), {B, D}), TensorRef(tw.data(), {B, D}), TensorRef(tl.data(), {B, D}), &dcfg,
      TensorRef(grad_w.data(), {B, D}), TensorRef(grad_l.data(), {B, D}));
  float diffusion_expected = 0.0f;
  for (int64_t b = 0; b < B; ++b) {
    auto mse = [&](const std::vector<float>& x, const std::vector<float>& t) {
      float s = 0.0f;
      for (int64_t d = 0; d < D; ++d) s += (x[b * D + d] - t[b * D + d]) * (x[b * D + d] - t[b * D + d]);
      return s / static_cast<float>(D);
    };
    const float diff = (mse(mw, tw) - mse(ml, tl)) - (mse(rw, tw) - mse(rl, tl));
    diffusion_expected -= log_sigmoid(-0.5f * dcfg.beta * diff) / static_cast<float>(B);
  }
  expect(near(diffusion.loss, diffusion_expected), "diffusion_dpo_loss");

  // Verdict head backward: zero outside the listed ids, and each row sums to 0 for grad_log_probs.
  const std::vector<float> answer{0.5f, 2.0f, 1.0f, 1.0f};  // [B = 1, V = 4]; id 0 is in no class
  const std::vector<int64_t> offsets{0, 1, 3}, ids{1, 2, 3};
  const std::vector<float> g{1.0f, -0.5f};
  std::vector<float> verdict_grad(4);
  ctx.verdict_head_backward(TensorRef(answer.data(), {1, 4}), TensorRef(offsets.data(), {3}),
                            TensorRef(ids.data(), {3}), nullptr, 0, TensorRef(g.data(), {1, 2}), nullptr,
                            TensorRef(verdict_grad.data(), {1, 4}));
  expect(verdict_grad[0] == 0.0f && near(verdict_grad[1] + verdict_grad[2] + verdict_grad[3], 0.0f),
         "verdict_head_backward");

  // unireward::Model on the Qwen2 fixture: greedy tokens equal transformers' (tests/fixtures/qwen2/gqa_untied's
  // reference), the first is the argmax of the forward's last logits, and the LM head's gradient from a one-hot
  // logits gradient is zero outside that token's row.
  unireward::Model model(ctx, UNIREWARD_QWEN2_FIXTURE);
  const ur_model_info info = model.info();
  const int64_t MV = static_cast<int64_t>(info.vocab_size), MH = static_cast<int64_t>(info.hidden_size);
  const std::vector<int32_t> prompt{54, 72, 78, 77, 54}, expected{83, 21, 22, 86, 22, 86, 95, 51, 113, 95, 22, 86};
  ur_generation_config gen = ur_generation_config_default();
  gen.max_new_tokens = static_cast<uint32_t>(expected.size());
  expect(model.generate(prompt, &gen) == expected, "Model::generate");
  const int64_t MT = static_cast<int64_t>(prompt.size());
  std::vector<float> model_logits(MT * MV), one_hot(MT * MV, 0.0f), grad_head(MV * MH);
  model.forward(TensorRef(prompt.data(), {1, MT}), nullptr, TensorRef(model_logits.data(), {1, MT, MV}));
  int64_t best = 0;
  for (int64_t v = 0; v < MV; ++v) {
    if (model_logits[(MT - 1) * MV + v] > model_logits[(MT - 1) * MV + best]) best = v;
  }
  expect(best == expected[0], "Model::forward");
  one_hot[(MT - 1) * MV + best] = 1.0f;
  model.backward(TensorRef(one_hot.data(), {1, MT, MV}));
  model.gradient("lm_head.weight", TensorRef(grad_head.data(), {MV, MH}));
  bool only_row = true, row_set = false;
  for (int64_t i = 0; i < MV * MH; ++i) {
    if (i / MH == best) {
      row_set = row_set || grad_head[i] != 0.0f;
    } else {
      only_row = only_row && grad_head[i] == 0.0f;
    }
  }
  const std::vector<std::string> names = model.parameter_names();
  expect(only_row && row_set && names.back() == "lm_head.weight" && model.parameter_shape(names.size() - 1)[0] == MV,
         "Model::backward, gradient, parameter_names, parameter_shape");
  try {
    model.gradient("no.such.weight", TensorRef(grad_head.data(), {MV, MH}));
    expect(false, "Model::gradient throws for an unknown name");
  } catch (const unireward::Error& e) {
    expect(e.status() == UR_ERROR_INVALID_ARGUMENT, "Model::gradient throws for an unknown name");
  }

  // Load options, the ignored-tensor report and the finish reason.
  ur_load_options options = ur_load_options_default();
  options.lenient = 1;
  options.check_finite = 1;
  const unireward::Model checked(ctx, UNIREWARD_QWEN2_FIXTURE, unireward::dtype::float32, unireward::cpu(), &options);
  expect(checked.ignored_tensors().empty(), "Model(options), ignored_tensors");
  const unireward::Generation full = checked.generate_ex(prompt, {}, &gen);
  gen.stop_tokens = &expected[2];
  gen.num_stop_tokens = 1;
  const unireward::Generation stopped = checked.generate_ex(prompt, {}, &gen);
  expect(full.tokens == expected && full.finish_reason == UR_FINISH_MAX_NEW_TOKENS && stopped.tokens.size() == 3 &&
             stopped.finish_reason == UR_FINISH_STOP,
         "Model::generate_ex");

  // LLaVA-OneVision on its fixture: an image file expanded to its placeholders, greedy tokens equal transformers'
  // (tests/fixtures/llava/reference.safetensors' generate.*), the forward's last logits agreeing, the newline's
  // gradient set; a missing file throws.
  unireward::Model llava(ctx, UNIREWARD_LLAVA_FIXTURE "/hf");
  const ur_model_info llava_info = llava.info();
  const std::string image_path = UNIREWARD_LLAVA_FIXTURE "/images/anyres_0.png";
  const std::vector<unireward::Media> media{unireward::Media::image_file(image_path.c_str())};
  const std::vector<uint64_t> placeholders = llava.placeholder_counts(media);
  std::vector<int32_t> llava_prompt{85, 56, 61};
  llava_prompt.insert(llava_prompt.end(), placeholders.at(0), static_cast<int32_t>(llava_info.image_token_id));
  llava_prompt.insert(llava_prompt.end(), {80, 52, 70, 75, 27});
  const std::vector<int32_t> llava_expected{39, 65, 65, 65, 65, 65};
  ur_generation_config six = ur_generation_config_default();
  six.max_new_tokens = 6;
  const unireward::Generation llava_answer = llava.generate_ex(llava_prompt, media, &six);
  expect(llava_info.architecture == UR_ARCHITECTURE_LLAVA_ONEVISION && placeholders.at(0) == 49 &&
             llava_answer.tokens == llava_expected && llava_answer.finish_reason == UR_FINISH_MAX_NEW_TOKENS,
         "Model (LLaVA): info, placeholder_counts, generate_ex with an image file");
  const int64_t LT = static_cast<int64_t>(llava_prompt.size()), LV = static_cast<int64_t>(llava_info.vocab_size);
  std::vector<float> llava_logits(LT * LV), llava_grad(LT * LV, 0.0f), newline(llava_info.hidden_size);
  llava.forward(TensorRef(llava_prompt.data(), {1, LT}), nullptr, media, TensorRef(llava_logits.data(), {1, LT, LV}));
  int64_t top = 0;
  for (int64_t v = 0; v < LV; ++v) {
    if (llava_logits[(LT - 1) * LV + v] > llava_logits[(LT - 1) * LV + top]) top = v;
  }
  llava_grad[(LT - 1) * LV + top] = 1.0f;
  llava.backward(TensorRef(llava_grad.data(), {1, LT, LV}));
  llava.gradient("image_newline", TensorRef(newline.data(), {static_cast<int64_t>(newline.size())}));
  bool newline_set = false;
  for (const float g : newline) newline_set = newline_set || g != 0.0f;
  expect(top == llava_expected[0] && newline_set, "Model::forward with media, backward, gradient (LLaVA)");
  try {
    llava.placeholder_counts({unireward::Media::image_file("/no/such/image.png")});
    expect(false, "a missing image file throws");
  } catch (const unireward::Error& e) {
    const bool named = std::string(e.what()).find("/no/such/image.png") != std::string::npos;
    expect(e.status() == UR_ERROR_INVALID_ARGUMENT && named, "a missing image file throws, naming it");
  }

  std::printf("%s\n", failures == 0 ? "all passed" : "FAILED");
  return failures == 0 ? 0 : 1;
}
