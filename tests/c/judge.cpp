// unireward::Judge (include/unireward.hpp) on the tiny judge checkpoint argv[1] with the LLaVA fixture images under
// argv[2]: prints each judgment as one line "key verdict score argmax_score position_consistent prompt_tokens probs..."
// (a reasoned one also "key.parse parse_status parsed_verdict parsed_score generated_tokens reasoning_tokens" and
// "key.text" with the answer's bytes and a 0), for tests/c_abi.rs to compare with the Rust Judge, and checks that
// bad input throws the status and message. It writes a user's template to DIR/mine.template.json.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "expect_error.hpp"
#include "unireward.hpp"

namespace {

void print(const char* key, const unireward::Judgment& j) {
  std::printf("%s %d %.9g %.9g %d %llu", key, j.verdict, j.score, j.argmax_score, j.position_consistent,
              static_cast<unsigned long long>(j.prompt_tokens));
  for (float p : j.probs) std::printf(" %.9g", p);
  std::printf("\n");
}

void print(const char* key, const unireward::Reasoned& r) {
  print(key, r.judgment);
  std::printf("%s.parse %d %d %.17g %llu %llu\n", key, r.parse_status, r.parsed_verdict, r.parsed_score,
              static_cast<unsigned long long>(r.generated_tokens), static_cast<unsigned long long>(r.reasoning_tokens));
  std::printf("%s.text", key);
  for (unsigned char c : r.text) std::printf(" %d", c);
  std::printf(" 0\n");
}

// A user's template: image generation scored 1 to 10 after a one-line instruction.
const char* const kTemplate =
    R"({"task": "image_generation", "mode": "pointwise", "media": {"kind": "image", "count": 1},)"
    R"( "instruction": "<image>\nCaption: {caption}\nRate it.",)"
    R"( "answer": {"score": {"prefix": "Final Score:", "min": 1, "max": 10}}})";

int judge_checks(const char* dir, const char* llava) {
  const std::string images = std::string(llava) + "/images/";
  using unireward::JudgeItem;
  unireward::Context ctx;
  unireward::Judge judge(ctx, dir);
  const auto caption = unireward::JudgeContext::caption("a red square");
  const auto a = JudgeItem::image(images + "two_images_0.png"), b = JudgeItem::image(images + "two_images_1.png");
  print("pair", judge.pairwise(UR_TASK_IMAGE_GENERATION, caption, a, b));
  const auto question =
      unireward::JudgeContext::question("What color is the square?", {JudgeItem::image(images + "anyres_0.png")});
  print("point", judge.pointwise(UR_TASK_IMAGE_UNDERSTANDING, question, JudgeItem::text("It is red.")));
  ur_judge_batch_info info{};
  const std::vector<unireward::Judgment> batch =
      judge.many({{UR_TASK_IMAGE_GENERATION, UR_JUDGE_PAIRWISE, caption, {a, b}},
                  {UR_TASK_IMAGE_UNDERSTANDING, UR_JUDGE_POINTWISE, question, {JudgeItem::text("It is red.")}}},
                 &info);
  print("many.0", batch.at(0));
  print("many.1", batch.at(1));
  if (info.prefill_tokens == 0 || judge.num_probs(UR_TASK_VIDEO_GENERATION, UR_JUDGE_POINTWISE) != 10) return 1;

  // Pixels in memory: three 10 x 14 frames, byte i of frame k = (13 i + 71 k) mod 256 (tests/c_abi.rs makes the same).
  std::vector<uint8_t> frames(3 * 10 * 14 * 3);
  for (size_t k = 0; k < 3; ++k)
    for (size_t i = 0; i < 10 * 14 * 3; ++i) frames[k * 10 * 14 * 3 + i] = static_cast<uint8_t>((13 * i + 71 * k) % 256);
  print("image_pixels",
        judge.pointwise(UR_TASK_IMAGE_GENERATION, caption, JudgeItem::image_pixels(frames.data(), 10, 14)));
  print("video_pixels",
        judge.pointwise(UR_TASK_VIDEO_GENERATION, caption, JudgeItem::video_pixels(frames.data(), 3, 10, 14)));

  // Reasoned: greedy, then sampled; then a user's template, as text and as a file.
  const unireward::JudgeRequest scored{UR_TASK_IMAGE_GENERATION, UR_JUDGE_POINTWISE, caption,
                                       {JudgeItem::image(images + "anyres_0.png")}};
  ur_generation_config cfg = ur_generation_config_default();
  cfg.max_new_tokens = 4;
  print("reasoned", judge.reasoned(scored, &cfg));
  cfg.temperature = 1.5f;
  cfg.top_p = 0.9f;
  cfg.seed = 3;
  print("reasoned_sampled", judge.reasoned(scored, &cfg));
  cfg.temperature = -1.0f;
  expect_error([&] { judge.reasoned(scored, &cfg); }, UR_ERROR_INVALID_ARGUMENT, "`cfg->temperature`");
  judge.set_template_json(UR_TASK_IMAGE_GENERATION, UR_JUDGE_POINTWISE, kTemplate);
  print("templated", judge.pointwise(UR_TASK_IMAGE_GENERATION, caption, scored.candidates.at(0)));
  const std::string file = std::string(dir) + "/mine.template.json";
  std::ofstream(file) << kTemplate;
  judge.set_template_file(UR_TASK_IMAGE_GENERATION, UR_JUDGE_POINTWISE, file);
  print("templated_file", judge.pointwise(UR_TASK_IMAGE_GENERATION, caption, scored.candidates.at(0)));
  expect_error([&] { judge.set_template_file(UR_TASK_IMAGE_GENERATION, UR_JUDGE_PAIRWISE, file); },
               UR_ERROR_INVALID_ARGUMENT, "say image_generation.pairwise, the template is image_generation.pointwise");
  expect_error([&] { judge.set_template_file(UR_TASK_IMAGE_GENERATION, UR_JUDGE_POINTWISE, "/no/such.json"); },
               UR_ERROR_INVALID_ARGUMENT, "/no/such.json");
  expect_error([&] { judge.set_template_json(UR_TASK_IMAGE_GENERATION, 5, kTemplate); }, UR_ERROR_INVALID_ARGUMENT,
               "`user_template->mode` is 5");

  expect_error([&] { judge.pairwise(9, caption, a, b); }, UR_ERROR_INVALID_ARGUMENT, "`task` is 9");
  expect_error([&] { judge.pairwise(UR_TASK_IMAGE_GENERATION, {}, a, b); }, UR_ERROR_INVALID_ARGUMENT, "caption");
  expect_error([&] { judge.pointwise(UR_TASK_IMAGE_GENERATION, caption, JudgeItem::image("/no/such.png")); },
               UR_ERROR_INVALID_ARGUMENT, "/no/such.png");
  expect_error([&] { judge.many({}); }, UR_ERROR_INVALID_ARGUMENT, "`num_requests` is 0");
  expect_error([&] { judge.pointwise(UR_TASK_IMAGE_GENERATION, caption, JudgeItem::image_pixels(frames.data(), 0, 14)); },
               UR_ERROR_INVALID_ARGUMENT, "candidates[0].value->height` is 0");
  expect_error([&] { unireward::Judge(ctx, "/no/such/judge"); }, UR_ERROR_CHECKPOINT, "/no/such/judge");
  unireward::Judge moved = std::move(judge);
  if (judge.get() != nullptr || moved.get() == nullptr) return 1;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s JUDGE_DIR LLAVA_FIXTURES\n", argv[0]);
    return 2;
  }
  const int status = judge_checks(argv[1], argv[2]);
  // The judge's large buffers (KV caches, then its weights when freed) stay in the library's host cache for reuse:
  // hand them back, once the judge is gone, so that valgrind sees no leak.
  unireward::release_host_cache();
  return status;
}
