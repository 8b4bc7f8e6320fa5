// unireward.hpp: a header-only C++17 wrapper over the C ABI (unireward.h). Link libunireward.so
// (`unireward::unireward` in CMake).
//
//   unireward::Context ctx;                                   // ur_context_create, freed by the destructor
//   const int64_t N = 2, T = 3, V = 4;   // (list-initialised shapes: int64_t, not size_t, to avoid narrowing)
//   std::vector<float> logits(N * T * V);  std::vector<int64_t> labels(N * T);  std::vector<float> logps(N);
//   ctx.logprobs_forward(unireward::TensorRef(logits.data(), {N, T, V}),
//                        unireward::TensorRef(labels.data(), {N, T}), nullptr, nullptr,
//                        unireward::TensorRef(logps.data(), {N}));
//
// - A failing call throws `unireward::Error`, carrying the `ur_status` code and `ur_last_error_message()`.
// - Every C export `ur_X(ctx, args..., stream)` is `Context::X(args..., stream = nullptr)`: the same arguments in
//   the same order (tensors as `const DLTensor*`, which a `TensorRef` converts to; NULL configs mean the defaults;
//   optional tensors may be nullptr). Calls that write host scalars return them (`DpoLoss`, ...) instead.
// - `Model` owns a checkpoint (`ur_model_*`: Qwen2 or LLaVA-OneVision, with images and videos as `Media`):
//   forward, backward, gradients by name, generate (with the finish reason).
// - `Judge` owns a judge checkpoint (`ur_judge_*`): one-pass `pairwise` / `pointwise` judgments and batches
//   (`many`) of the four UnifiedReward tasks, media as file paths or pixels, results as `Judgment`; `reasoned`
//   judgments (the answer generated and parsed, as `Reasoned`); users' templates (`set_template_file` / `_json`).
// - `AdamW` owns the fused optimizer over parameters the caller owns (`ur_adamw_*`); `SftTrainer` and `DpoTrainer`
//   own the trainers stepped on the caller's records (`ur_sft_trainer_*`, `ur_dpo_trainer_*`).
// - `TensorRef` describes memory the caller owns as a DLPack tensor (row-major, no copy): from a typed pointer
//   (float, int32_t, int64_t) or from `void*` plus a dtype (bfloat16 and float16 data), on `cpu()` or `cuda(n)`.
#ifndef UNIREWARD_HPP
#define UNIREWARD_HPP

#include <algorithm>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "unireward.h"

namespace unireward {

/// A failed call: the status code and the library's message for it.
class Error : public std::runtime_error {
 public:
  Error(ur_status status, const std::string& message)
      : std::runtime_error(std::string(ur_status_name(status)) + ": " + message), status_(status) {}

  /// The C ABI's status code (never UR_OK).
  ur_status status() const noexcept { return status_; }

 private:
  ur_status status_;
};

namespace detail {
/// Throws the thread's last error when `status` is not UR_OK.
inline void check(ur_status status) {
  if (status != UR_OK) throw Error(status, ur_last_error_message());
}

/// Frees a C handle with its `ur_*_free` (for `std::unique_ptr`: the owning classes are then move-only for free).
template <auto Free>
struct Deleter {
  template <typename T>
  void operator()(T* handle) const noexcept {
    Free(handle);
  }
};

/// The C strings of `strings` (which must outlive their use).
inline std::vector<const char*> c_strings(const std::vector<std::string>& strings) {
  std::vector<const char*> out;
  out.reserve(strings.size());
  for (const std::string& s : strings) out.push_back(s.c_str());
  return out;
}
}  // namespace detail

/// The library's version string ("0.1.0") and ABI version, as loaded at run time.
inline std::string version() { return ur_version_string(); }
inline uint32_t abi_version() noexcept { return ur_abi_version(); }

/// Bytes of freed host buffers the library keeps for reuse, and handing them back to the system (returns the bytes
/// released): see `ur_host_cache_bytes`.
inline uint64_t host_cache_bytes() noexcept { return ur_host_cache_bytes(); }
inline uint64_t release_host_cache() noexcept { return ur_host_cache_release(); }

/// Throws when the loaded library's ABI is not the one this header was written for (a stale libunireward.so).
inline void check_abi() {
  if (ur_abi_version() != UR_ABI_VERSION) {
    throw Error(UR_ERROR_UNSUPPORTED, "libunireward.so has ABI version " + std::to_string(ur_abi_version()) +
                                          ", this header expects " + std::to_string(UR_ABI_VERSION));
  }
}

/// DLPack dtypes the library takes.
namespace dtype {
inline constexpr DLDataType float32{static_cast<uint8_t>(kDLFloat), 32, 1};
inline constexpr DLDataType bfloat16{static_cast<uint8_t>(kDLBfloat), 16, 1};
inline constexpr DLDataType float16{static_cast<uint8_t>(kDLFloat), 16, 1};
inline constexpr DLDataType int32{static_cast<uint8_t>(kDLInt), 32, 1};
inline constexpr DLDataType int64{static_cast<uint8_t>(kDLInt), 64, 1};
}  // namespace dtype

/// The DLPack dtype of a C++ element type.
template <typename T>
constexpr DLDataType dtype_of() {
  using U = std::remove_cv_t<T>;
  static_assert(std::is_same_v<U, float> || std::is_same_v<U, int32_t> || std::is_same_v<U, int64_t>,
                "TensorRef(T*, shape): T is float, int32_t or int64_t; give bfloat16/float16 data as void* + dtype");
  if constexpr (std::is_same_v<U, float>) {
    return dtype::float32;
  } else if constexpr (std::is_same_v<U, int32_t>) {
    return dtype::int32;
  } else {
    return dtype::int64;
  }
}

/// Devices.
inline DLDevice cpu() noexcept { return DLDevice{kDLCPU, 0}; }
inline DLDevice cuda(int32_t ordinal = 0) noexcept { return DLDevice{kDLCUDA, ordinal}; }

/// A DLPack view of row-major memory the caller owns (nothing is copied or freed). It owns its shape array, so
/// it stays valid when copied or moved; the data must outlive the calls that use it. Converts to
/// `const DLTensor*` for the `Context` methods (and the C functions).
class TensorRef {
 public:
  TensorRef(void* data, std::vector<int64_t> shape, DLDataType dtype, DLDevice device = cpu())
      : shape_(std::move(shape)), tensor_{} {
    tensor_.data = data;
    tensor_.device = device;
    tensor_.ndim = static_cast<int32_t>(shape_.size());
    tensor_.dtype = dtype;
    tensor_.shape = shape_.data();
    tensor_.strides = nullptr;  // row-major
    tensor_.byte_offset = 0;
  }

  /// Typed memory: float, int32_t or int64_t (const for inputs: the library only reads inputs).
  template <typename T>
  TensorRef(T* data, std::vector<int64_t> shape, DLDevice device = cpu())
      : TensorRef(const_cast<std::remove_cv_t<T>*>(data), std::move(shape), dtype_of<T>(), device) {}

  TensorRef(const TensorRef& other) : shape_(other.shape_), tensor_(other.tensor_) { tensor_.shape = shape_.data(); }
  TensorRef(TensorRef&& other) noexcept : shape_(std::move(other.shape_)), tensor_(other.tensor_) {
    tensor_.shape = shape_.data();
  }
  TensorRef& operator=(TensorRef other) noexcept {
    shape_.swap(other.shape_);
    tensor_ = other.tensor_;
    tensor_.shape = shape_.data();
    return *this;
  }
  ~TensorRef() = default;

  const DLTensor* get() const noexcept { return &tensor_; }
  operator const DLTensor*() const noexcept { return &tensor_; }  // NOLINT: implicit by design
  const std::vector<int64_t>& shape() const noexcept { return shape_; }

 private:
  std::vector<int64_t> shape_;
  DLTensor tensor_;
};

/// `Context::dpo_loss`'s host results.
struct DpoLoss {
  float loss;
  ur_dpo_metrics metrics;
};

/// `Context::bradley_terry_loss`'s host results.
struct BradleyTerryLoss {
  float loss;
  ur_bradley_terry_metrics metrics;
};

/// `Context::kwise_loss`'s host results.
struct KwiseLoss {
  float loss;
  float accuracy;
};

/// `Context::diffusion_dpo_loss`'s host results.
struct DiffusionDpoLoss {
  float loss;
  ur_diffusion_dpo_metrics metrics;
};

/// Owns a `ur_context` (move-only). The ops only read it, so one context may serve several threads; see
/// unireward.h for each op's shapes, dtypes and CUDA stream behaviour.
class Context {
 public:
  /// Creates a context, after checking the loaded library's ABI.
  Context() {
    check_abi();
    detail::check(ur_context_create(&ctx_));
  }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  Context(Context&& other) noexcept : ctx_(std::exchange(other.ctx_, nullptr)) {}
  Context& operator=(Context&& other) noexcept {
    if (this != &other) {
      ur_context_free(ctx_);
      ctx_ = std::exchange(other.ctx_, nullptr);
    }
    return *this;
  }
  ~Context() { ur_context_free(ctx_); }

  /// The C handle (nullptr after a move), for calling the C functions directly.
  ur_context* get() const noexcept { return ctx_; }

  void logprobs_forward(const DLTensor* logits, const DLTensor* labels, const DLTensor* mask,
                        const ur_logprobs_config* cfg, const DLTensor* logps_out,
                        const DLTensor* token_counts_out = nullptr, const DLTensor* mean_logits_out = nullptr,
                        const DLTensor* entropy_out = nullptr, const DLTensor* lse_out = nullptr,
                        void* stream = nullptr) const {
    detail::check(ur_logprobs_forward(ctx_, logits, labels, mask, cfg, logps_out, token_counts_out,
                                      mean_logits_out, entropy_out, lse_out, stream));
  }

  void logprobs_backward(const DLTensor* logits, const DLTensor* labels, const DLTensor* mask, const DLTensor* lse,
                         const DLTensor* token_counts, const DLTensor* grad_logps, const ur_logprobs_config* cfg,
                         const DLTensor* grad_logits_out, void* stream = nullptr) const {
    detail::check(
        ur_logprobs_backward(ctx_, logits, labels, mask, lse, token_counts, grad_logps, cfg, grad_logits_out, stream));
  }

  void fused_linear_logprobs_forward(const DLTensor* hidden, const DLTensor* weight, const DLTensor* bias,
                                     const DLTensor* labels, const DLTensor* mask, const ur_fused_linear_config* cfg,
                                     const DLTensor* logps_out, const DLTensor* token_counts_out = nullptr,
                                     const DLTensor* mean_logits_out = nullptr, const DLTensor* entropy_out = nullptr,
                                     const DLTensor* lse_out = nullptr, void* stream = nullptr) const {
    detail::check(ur_fused_linear_logprobs_forward(ctx_, hidden, weight, bias, labels, mask, cfg, logps_out,
                                                   token_counts_out, mean_logits_out, entropy_out, lse_out, stream));
  }

  void fused_linear_logprobs_backward(const DLTensor* hidden, const DLTensor* weight, const DLTensor* bias,
                                      const DLTensor* labels, const DLTensor* mask, const DLTensor* lse,
                                      const DLTensor* grad_logps, const ur_fused_linear_config* cfg,
                                      const DLTensor* grad_hidden_out, const DLTensor* grad_weight_out,
                                      const DLTensor* grad_bias_out = nullptr, void* stream = nullptr) const {
    detail::check(ur_fused_linear_logprobs_backward(ctx_, hidden, weight, bias, labels, mask, lse, grad_logps, cfg,
                                                    grad_hidden_out, grad_weight_out, grad_bias_out, stream));
  }

  DpoLoss dpo_loss(const DLTensor* policy_chosen, const DLTensor* policy_rejected, const DLTensor* reference_chosen,
                   const DLTensor* reference_rejected, const DLTensor* chosen_lengths,
                   const DLTensor* rejected_lengths, const ur_dpo_config* cfg, const DLTensor* grad_policy_chosen_out,
                   const DLTensor* grad_policy_rejected_out, void* stream = nullptr) const {
    DpoLoss out{};
    out.metrics.struct_size = sizeof(out.metrics);
    detail::check(ur_dpo_loss(ctx_, policy_chosen, policy_rejected, reference_chosen, reference_rejected,
                              chosen_lengths, rejected_lengths, cfg, &out.loss, grad_policy_chosen_out,
                              grad_policy_rejected_out, &out.metrics, stream));
    return out;
  }

  BradleyTerryLoss bradley_terry_loss(const DLTensor* rewards_chosen, const DLTensor* rewards_rejected,
                                      const DLTensor* margin, const ur_bradley_terry_config* cfg,
                                      const DLTensor* grad_chosen_out, const DLTensor* grad_rejected_out,
                                      void* stream = nullptr) const {
    BradleyTerryLoss out{};
    out.metrics.struct_size = sizeof(out.metrics);
    detail::check(ur_bradley_terry_loss(ctx_, rewards_chosen, rewards_rejected, margin, cfg, &out.loss,
                                        grad_chosen_out, grad_rejected_out, &out.metrics, stream));
    return out;
  }

  KwiseLoss kwise_loss(const DLTensor* rewards, const DLTensor* order, const ur_kwise_config* cfg,
                       const DLTensor* grad_out, void* stream = nullptr) const {
    KwiseLoss out{};
    detail::check(ur_kwise_loss(ctx_, rewards, order, cfg, &out.loss, grad_out, &out.accuracy, stream));
    return out;
  }

  DiffusionDpoLoss diffusion_dpo_loss(const DLTensor* model_winner, const DLTensor* model_loser,
                                      const DLTensor* ref_winner, const DLTensor* ref_loser,
                                      const DLTensor* target_winner, const DLTensor* target_loser,
                                      const ur_diffusion_dpo_config* cfg, const DLTensor* grad_model_winner_out,
                                      const DLTensor* grad_model_loser_out, void* stream = nullptr) const {
    DiffusionDpoLoss out{};
    out.metrics.struct_size = sizeof(out.metrics);
    detail::check(ur_diffusion_dpo_loss(ctx_, model_winner, model_loser, ref_winner, ref_loser, target_winner,
                                        target_loser, cfg, &out.loss, grad_model_winner_out, grad_model_loser_out,
                                        &out.metrics, stream));
    return out;
  }

  void scalar_head_forward(const DLTensor* hidden, const DLTensor* ends, const DLTensor* weight, const DLTensor* bias,
                           const DLTensor* rewards_out, void* stream = nullptr) const {
    detail::check(ur_scalar_head_forward(ctx_, hidden, ends, weight, bias, rewards_out, stream));
  }

  void scalar_head_backward(const DLTensor* hidden, const DLTensor* ends, const DLTensor* weight,
                            const DLTensor* bias, const DLTensor* grad_rewards, const DLTensor* grad_hidden_out,
                            const DLTensor* grad_weight_out, const DLTensor* grad_bias_out = nullptr,
                            void* stream = nullptr) const {
    detail::check(ur_scalar_head_backward(ctx_, hidden, ends, weight, bias, grad_rewards, grad_hidden_out,
                                          grad_weight_out, grad_bias_out, stream));
  }

  /// `class_values`: `num_class_values` = K host floats, or nullptr and 0.
  void verdict_head_forward(const DLTensor* logits, const DLTensor* class_offsets, const DLTensor* token_ids,
                            const float* class_values, size_t num_class_values, const DLTensor* probs_out,
                            const DLTensor* log_probs_out = nullptr, const DLTensor* expected_score_out = nullptr,
                            void* stream = nullptr) const {
    detail::check(ur_verdict_head_forward(ctx_, logits, class_offsets, token_ids, class_values, num_class_values,
                                          probs_out, log_probs_out, expected_score_out, stream));
  }

  void verdict_head_backward(const DLTensor* logits, const DLTensor* class_offsets, const DLTensor* token_ids,
                             const float* class_values, size_t num_class_values, const DLTensor* grad_log_probs,
                             const DLTensor* grad_expected_score, const DLTensor* grad_logits_out,
                             void* stream = nullptr) const {
    detail::check(ur_verdict_head_backward(ctx_, logits, class_offsets, token_ids, class_values, num_class_values,
                                           grad_log_probs, grad_expected_score, grad_logits_out, stream));
  }

  /// Each output may be nullptr (`consistency_out` must be for scores).
  void compare(const DLTensor* verdicts, const ur_compare_config* cfg, const DLTensor* preference_out,
               const DLTensor* wins_out, const DLTensor* copeland_out, const DLTensor* ranks_out,
               const DLTensor* strengths_out, const DLTensor* iterations_out, const DLTensor* converged_out,
               const DLTensor* best_out, const DLTensor* worst_out, const DLTensor* consistency_out = nullptr,
               void* stream = nullptr) const {
    detail::check(ur_compare(ctx_, verdicts, cfg, preference_out, wins_out, copeland_out, ranks_out, strengths_out,
                             iterations_out, converged_out, best_out, worst_out, consistency_out, stream));
  }

  /// Each output may be nullptr.
  void select_pairs(const DLTensor* verdicts, const DLTensor* pointwise, const ur_select_config* cfg,
                    const DLTensor* chosen_out, const DLTensor* rejected_out, const DLTensor* chosen_score_out,
                    const DLTensor* rejected_score_out, const DLTensor* kept_out, void* stream = nullptr) const {
    detail::check(ur_select_pairs(ctx_, verdicts, pointwise, cfg, chosen_out, rejected_out, chosen_score_out,
                                  rejected_score_out, kept_out, stream));
  }

 private:
  ur_context* ctx_ = nullptr;
};


/// One image or video of a `Model` call (`ur_media`): pixel values as a `TensorRef` (with an image's original
/// size), or a file the library decodes with the checkpoint's preprocessor_config.json. The `TensorRef` and the
/// path string must outlive the call.
///
///   auto image = unireward::Media::image(TensorRef(pixels.data(), {5, 3, 384, 384}), 480, 640);
///   auto video = unireward::Media::video_file("clip/");             // a folder of frames, 8 sampled
struct Media {
  ur_media media = ur_media_default();

  static Media image(const TensorRef& pixel_values, uint64_t height, uint64_t width) {
    Media m;
    m.media.pixel_values = pixel_values.get();
    m.media.height = height;
    m.media.width = width;
    return m;
  }
  static Media image_file(const char* path, int32_t layout = UR_IMAGE_LAYOUT_ANYRES) {
    Media m;
    m.media.path = path;
    m.media.layout = layout;
    return m;
  }
  static Media video(const TensorRef& frames) {
    Media m;
    m.media.kind = UR_MEDIA_VIDEO;
    m.media.pixel_values = frames.get();
    return m;
  }
  static Media video_file(const char* path, uint32_t num_frames = 0) {
    Media m;
    m.media.kind = UR_MEDIA_VIDEO;
    m.media.path = path;
    m.media.num_frames = num_frames;
    return m;
  }
};

/// `Model::generate_ex`'s result: the new tokens and why generation ended (`UR_FINISH_*`).
struct Generation {
  std::vector<int32_t> tokens;
  int32_t finish_reason = UR_FINISH_MAX_NEW_TOKENS;
};

namespace detail {
/// The `ur_media` array of `media` (the C structs, contiguous).
inline std::vector<ur_media> media_array(const std::vector<Media>& media) {
  std::vector<ur_media> out;
  out.reserve(media.size());
  for (const Media& m : media) out.push_back(m.media);
  return out;
}
}  // namespace detail

/// A checkpoint loaded by the library (`ur_model_*`): a Qwen2 decoder or LLaVA-OneVision (`info().architecture`),
/// owned and freed by this object (move-only). The context it was loaded with must outlive it. `forward` writes
/// the logits and keeps the pass for one `backward`, after which `gradient` copies any parameter's gradient (the
/// checkpoint's names, or "inputs_embeds") into caller memory. Use a model from one thread at a time.
///
///   unireward::Model model(ctx, "path/to/qwen2");                 // float32 on the CPU
///   model.forward(TensorRef(ids.data(), {N, T}), nullptr, TensorRef(logits.data(), {N, T, V}));
///   model.backward(TensorRef(grad_logits.data(), {N, T, V}));
///   model.gradient("model.norm.weight", TensorRef(grad_norm.data(), {H}));
///   std::vector<int32_t> tokens = model.generate(prompt);          // greedy, 64 tokens at most
class Model {
 public:
  /// Loads `dir` under `options` (nullptr: strict, unchecked; see `ur_load_options`).
  Model(const Context& ctx, const std::string& dir, DLDataType dtype = dtype::float32, DLDevice device = cpu(),
        const ur_load_options* options = nullptr)
      : ctx_(ctx.get()) {
    detail::check(ur_model_load_ex(ctx_, dir.c_str(), dtype, device, options, &model_));
  }
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  Model(Model&& other) noexcept : ctx_(other.ctx_), model_(std::exchange(other.model_, nullptr)) {}
  Model& operator=(Model&& other) noexcept {
    if (this != &other) {
      ur_model_free(model_);
      ctx_ = other.ctx_;
      model_ = std::exchange(other.model_, nullptr);
    }
    return *this;
  }
  ~Model() { ur_model_free(model_); }

  /// The C handle (nullptr after a move), for calling the C functions directly.
  ur_model* get() const noexcept { return model_; }

  /// Sizes, dtype and device.
  ur_model_info info() const {
    ur_model_info out{};
    out.struct_size = sizeof out;
    detail::check(ur_model_get_info(model_, &out));
    return out;
  }

  /// Every parameter's Hugging Face name, in checkpoint order.
  std::vector<std::string> parameter_names() const {
    size_t count = 0;
    detail::check(ur_model_parameter_count(model_, &count));
    std::vector<std::string> names;
    for (size_t i = 0; i < count; ++i) {
      const char* name = nullptr;
      detail::check(ur_model_parameter_name(model_, i, &name));
      names.emplace_back(name);
    }
    return names;
  }

  /// The stored tensors a lenient load ignored, sorted.
  std::vector<std::string> ignored_tensors() const {
    size_t count = 0;
    detail::check(ur_model_ignored_count(model_, &count));
    std::vector<std::string> names;
    for (size_t i = 0; i < count; ++i) {
      const char* name = nullptr;
      detail::check(ur_model_ignored_name(model_, i, &name));
      names.emplace_back(name);
    }
    return names;
  }

  /// The placeholder ids each item of `media` takes in the input ids (LLaVA-OneVision).
  std::vector<uint64_t> placeholder_counts(const std::vector<Media>& media) const {
    std::vector<ur_media> items = detail::media_array(media);
    std::vector<uint64_t> counts(media.size());
    detail::check(ur_model_placeholder_counts(model_, items.data(), items.size(), counts.data()));
    return counts;
  }

  /// The shape of parameter `index` (an index into `parameter_names()`).
  std::vector<int64_t> parameter_shape(size_t index) const {
    int32_t rank = 0;
    std::vector<int64_t> dims(8);
    detail::check(ur_model_parameter_shape(model_, index, &rank, dims.data(), dims.size()));
    dims.resize(static_cast<size_t>(rank));
    return dims;
  }

  /// Logits [N,T,V] of `ids` [N,T] with `mask` [N,T] (nullptr: every token real) into `logits_out`.
  void forward(const DLTensor* ids, const DLTensor* mask, const DLTensor* logits_out, void* stream = nullptr) {
    detail::check(ur_model_forward(ctx_, model_, ids, mask, logits_out, stream));
  }

  /// `forward` with the images and videos of a LLaVA-OneVision batch, matched to the placeholders in order.
  void forward(const DLTensor* ids, const DLTensor* mask, const std::vector<Media>& media, const DLTensor* logits_out,
               void* stream = nullptr) {
    std::vector<ur_media> items = detail::media_array(media);
    detail::check(ur_model_forward_ex(ctx_, model_, ids, mask, items.data(), items.size(), logits_out, stream));
  }

  /// Back-propagates the logits' gradient [N,T,V] of the last `forward` (consumed) to every parameter.
  void backward(const DLTensor* grad_logits, void* stream = nullptr) {
    detail::check(ur_model_backward(ctx_, model_, grad_logits, stream));
  }

  /// Copies the gradient `name` (a parameter name, or "inputs_embeds") of the last `backward` into `out`.
  void gradient(const std::string& name, const DLTensor* out, void* stream = nullptr) const {
    detail::check(ur_model_gradient(ctx_, model_, name.c_str(), out, stream));
  }

  /// The new tokens after `prompt` (`cfg` nullptr: greedy, at most 64 tokens).
  std::vector<int32_t> generate(const std::vector<int32_t>& prompt, const ur_generation_config* cfg = nullptr) const {
    const uint32_t max_new = cfg != nullptr ? cfg->max_new_tokens : ur_generation_config_default().max_new_tokens;
    std::vector<int32_t> out(max_new);
    size_t len = 0;
    detail::check(ur_model_generate(ctx_, model_, prompt.data(), prompt.size(), cfg, out.data(), out.size(), &len));
    out.resize(len);
    return out;
  }

  /// The new tokens after `prompt` (holding the placeholders of `media`) and why generation ended.
  Generation generate_ex(const std::vector<int32_t>& prompt, const std::vector<Media>& media = {},
                         const ur_generation_config* cfg = nullptr) const {
    const uint32_t max_new = cfg != nullptr ? cfg->max_new_tokens : ur_generation_config_default().max_new_tokens;
    std::vector<ur_media> items = detail::media_array(media);
    Generation out;
    out.tokens.resize(max_new);
    ur_generation_result result{};
    result.struct_size = sizeof result;
    detail::check(ur_model_generate_ex(ctx_, model_, prompt.data(), prompt.size(), items.data(), items.size(), cfg,
                                       out.tokens.data(), out.tokens.size(), &result));
    out.tokens.resize(static_cast<size_t>(result.num_tokens));
    out.finish_reason = result.finish_reason;
    return out;
  }

 private:
  ur_context* ctx_ = nullptr;
  ur_model* model_ = nullptr;
};

/// A candidate, or an image or video of a judge context: a response text, a file path, or 8-bit RGB pixels in
/// memory (`UR_JUDGE_*`).
struct JudgeItem {
  int32_t kind = UR_JUDGE_TEXT;
  /// The text or the path.
  std::string value;
  /// The `_PIXELS` kinds: `num_frames x height x width x 3` bytes (rows top to bottom, R G B interleaved), not
  /// copied here: they must outlive the call that judges the item (the library copies them then).
  const uint8_t* pixels = nullptr;
  uint64_t num_frames = 0, height = 0, width = 0;

  static JudgeItem text(std::string value) { return {UR_JUDGE_TEXT, std::move(value)}; }
  static JudgeItem image(std::string path) { return {UR_JUDGE_IMAGE, std::move(path)}; }
  /// A folder of frame images or an animated GIF.
  static JudgeItem video(std::string path) { return {UR_JUDGE_VIDEO, std::move(path)}; }
  /// An image's pixels: `height x width x 3` bytes, judged as the same pixels decoded from a file.
  static JudgeItem image_pixels(const uint8_t* rgb, uint64_t height, uint64_t width) {
    return {UR_JUDGE_IMAGE_PIXELS, {}, rgb, 1, height, width};
  }
  /// A video's frames: `num_frames x height x width x 3` bytes, sampled evenly by the judge as a video file's are.
  static JudgeItem video_pixels(const uint8_t* rgb, uint64_t num_frames, uint64_t height, uint64_t width) {
    return {UR_JUDGE_VIDEO_PIXELS, {}, rgb, num_frames, height, width};
  }
};

/// What candidates are judged against: the template's fields (`caption`, `question`) and, for understanding tasks,
/// the image or video the question is about.
struct JudgeContext {
  std::vector<std::pair<std::string, std::string>> fields;
  std::vector<JudgeItem> media;

  static JudgeContext caption(std::string text) { return {{{"caption", std::move(text)}}, {}}; }
  static JudgeContext question(std::string text, std::vector<JudgeItem> media) {
    return {{{"question", std::move(text)}}, std::move(media)};
  }
};

/// One judgment of `Judge::many`: `UR_TASK_*`, `UR_JUDGE_PAIRWISE` (two candidates) or `_POINTWISE` (one).
struct JudgeRequest {
  int32_t task = UR_TASK_IMAGE_GENERATION;
  int32_t mode = UR_JUDGE_PAIRWISE;
  JudgeContext context;
  std::vector<JudgeItem> candidates;
};

/// A judgment: `probs` (pairwise `[A better, B better, tie]` debiased over both orders; pointwise one per score
/// value, lowest first), and the rest of `ur_judge_result` (verdict, score and argmax score, position consistency,
/// prompt tokens, seconds).
struct Judgment {
  std::vector<float> probs;
  int32_t verdict = UR_VERDICT_NONE;
  float score = 0.0f;
  float argmax_score = 0.0f;
  int32_t position_consistent = -1;
  uint64_t prompt_tokens = 0;
  double seconds = 0.0;
};

/// A reasoned judgment (`Judge::reasoned`): the answer generated and what the parser read in it, and in `judgment`
/// the one-pass probabilities of the final verdict or score given the generated reasoning (pairwise: that one
/// order's, `position_consistent` -1).
struct Reasoned {
  Judgment judgment;
  std::string text;
  /// `UR_PARSE_OK`, `_UNPARSABLE` (no verdict, no score: never a score of 0), `_OUT_OF_SCALE`, `_SCALE_MISMATCH`.
  int32_t parse_status = UR_PARSE_UNPARSABLE;
  /// The verdict stated (`UR_VERDICT_*`; `UR_VERDICT_NONE` unless a pairwise answer parsed).
  int32_t parsed_verdict = UR_VERDICT_NONE;
  /// The score stated (also out of the scale or on another one); NaN when none was read.
  double parsed_score = std::numeric_limits<double>::quiet_NaN();
  /// Why the answer did not parse ("" when it did).
  std::string parse_error;
  uint64_t generated_tokens = 0;
  /// The generated tokens the probabilities are conditioned on.
  uint64_t reasoning_tokens = 0;
};

namespace detail {
/// The `Judgment` of a C result and its probabilities.
inline Judgment judgment(const ur_judge_result& r, const float* probs) {
  return {std::vector<float>(probs, probs + r.num_probs), r.verdict, r.score, r.argmax_score, r.position_consistent,
          r.prompt_tokens, r.seconds};
}

/// The C structs of judge requests, pointing into the requests (which must outlive it) and its own arrays.
class JudgeRequests {
 public:
  explicit JudgeRequests(const std::vector<JudgeRequest>& requests) {
    // Reserved up front: the C structs point into these vectors, which must not reallocate.
    names_.resize(requests.size());
    values_.resize(requests.size());
    media_.resize(requests.size());
    candidates_.resize(requests.size());
    contexts_.resize(requests.size());
    for (size_t i = 0; i < requests.size(); ++i) {
      const JudgeRequest& r = requests[i];
      for (const auto& field : r.context.fields) {
        names_[i].push_back(field.first.c_str());
        values_[i].push_back(field.second.c_str());
      }
      for (const JudgeItem& m : r.context.media) media_[i].push_back(item(m));
      for (const JudgeItem& c : r.candidates) candidates_[i].push_back(item(c));
      ur_judge_context& ctx = contexts_[i];
      ctx = ur_judge_context_default();
      ctx.field_names = names_[i].data();
      ctx.field_values = values_[i].data();
      ctx.num_fields = names_[i].size();
      ctx.media = media_[i].data();
      ctx.num_media = media_[i].size();
      ur_judge_request c = ur_judge_request_default();
      c.task = r.task;
      c.mode = r.mode;
      c.context = &contexts_[i];
      c.candidates = candidates_[i].data();
      c.num_candidates = candidates_[i].size();
      requests_.push_back(c);
    }
  }
  const std::vector<ur_judge_request>& get() const noexcept { return requests_; }

 private:
  /// The C item of `m`: its text or path, or its pixels' description (kept in `pixels_`).
  ur_judge_item item(const JudgeItem& m) {
    if (m.kind != UR_JUDGE_IMAGE_PIXELS && m.kind != UR_JUDGE_VIDEO_PIXELS) return {m.kind, 0, m.value.c_str()};
    ur_judge_pixels p = ur_judge_pixels_default();
    p.data = m.pixels;
    p.num_frames = m.num_frames;
    p.height = m.height;
    p.width = m.width;
    pixels_.push_back(p);  // a deque: the items already made keep pointing to theirs
    return {m.kind, 0, &pixels_.back()};
  }

  std::deque<ur_judge_pixels> pixels_;
  std::vector<std::vector<const char*>> names_, values_;
  std::vector<std::vector<ur_judge_item>> media_, candidates_;
  std::vector<ur_judge_context> contexts_;
  std::vector<ur_judge_request> requests_;
};
}  // namespace detail

/// A judge checkpoint loaded by the library (`ur_judge_*`: LLaVA-OneVision or a text-only Qwen2, with its
/// tokenizer, chat template, image processor and the built-in task templates), owned and freed by this object
/// (move-only). The context it was loaded with must outlive it. Use a judge from one thread at a time.
///
///   unireward::Judge judge(ctx, "path/to/judge");
///   auto caption = unireward::JudgeContext::caption("a red square");
///   unireward::Judgment j = judge.pairwise(UR_TASK_IMAGE_GENERATION, caption, unireward::JudgeItem::image("a.png"),
///                                          unireward::JudgeItem::image("b.png"));
///   // j.verdict == UR_VERDICT_FIRST: a.png is better; j.probs = {P(A), P(B), P(tie)}
class Judge {
 public:
  Judge(const Context& ctx, const std::string& dir, DLDataType dtype = dtype::float32, DLDevice device = cpu())
      : ctx_(ctx.get()) {
    detail::check(ur_judge_load(ctx_, dir.c_str(), dtype, device, &judge_));
  }
  Judge(const Judge&) = delete;
  Judge& operator=(const Judge&) = delete;
  Judge(Judge&& other) noexcept : ctx_(other.ctx_), judge_(std::exchange(other.judge_, nullptr)) {}
  Judge& operator=(Judge&& other) noexcept {
    if (this != &other) {
      ur_judge_free(judge_);
      ctx_ = other.ctx_;
      judge_ = std::exchange(other.judge_, nullptr);
    }
    return *this;
  }
  ~Judge() { ur_judge_free(judge_); }

  /// The C handle (nullptr after a move).
  ur_judge* get() const noexcept { return judge_; }

  /// The probabilities a judgment of `task` in `mode` has.
  size_t num_probs(int32_t task, int32_t mode) const {
    size_t n = 0;
    detail::check(ur_judge_num_probs(judge_, task, mode, &n));
    return n;
  }

  /// Which of `a` and `b` is better for `task`, or a tie, from both orders in one pass.
  Judgment pairwise(int32_t task, const JudgeContext& context, const JudgeItem& a, const JudgeItem& b) const {
    return many({JudgeRequest{task, UR_JUDGE_PAIRWISE, context, {a, b}}}).at(0);
  }

  /// The score of `candidate` on the task's scale, in one pass.
  Judgment pointwise(int32_t task, const JudgeContext& context, const JudgeItem& candidate) const {
    return many({JudgeRequest{task, UR_JUDGE_POINTWISE, context, {candidate}}}).at(0);
  }

  /// One-pass judgments of `requests` in one batch; `info` (nullptr: not wanted) gets what the batch cost.
  std::vector<Judgment> many(const std::vector<JudgeRequest>& requests, ur_judge_batch_info* info = nullptr) const {
    size_t capacity = 0;
    for (const JudgeRequest& r : requests) capacity = std::max(capacity, num_probs(r.task, r.mode));
    detail::JudgeRequests c(requests);
    std::vector<float> probs(requests.size() * capacity);
    ur_judge_result blank{};
    blank.struct_size = sizeof blank;
    std::vector<ur_judge_result> results(requests.size(), blank);
    if (info != nullptr) info->struct_size = sizeof *info;
    detail::check(ur_judge_many(ctx_, judge_, c.get().data(), requests.size(), probs.data(), capacity,
                                results.data(), info));
    std::vector<Judgment> out;
    for (size_t i = 0; i < results.size(); ++i) out.push_back(detail::judgment(results[i], probs.data() + i * capacity));
    return out;
  }

  /// A reasoned judgment of `request` (pairwise or pointwise): the answer generated with `cfg` (nullptr: greedy, 64
  /// tokens at most), parsed per the task's template, and the final verdict's one-pass probabilities given the
  /// reasoning.
  Reasoned reasoned(const JudgeRequest& request, const ur_generation_config* cfg = nullptr) {
    const size_t capacity = num_probs(request.task, request.mode);
    const std::vector<JudgeRequest> one{request};  // outlives `c`, which points into it
    detail::JudgeRequests c(one);
    std::vector<float> probs(capacity);
    ur_judge_result result{};
    result.struct_size = sizeof result;
    ur_judge_reasoning reasoning{};
    reasoning.struct_size = sizeof reasoning;
    detail::check(ur_judge_reasoned(ctx_, judge_, c.get().data(), cfg, probs.data(), capacity, &result, &reasoning));
    return {detail::judgment(result, probs.data()), std::string(reasoning.text, reasoning.text_len),
            reasoning.parse_status, reasoning.parsed_verdict, reasoning.parsed_score, reasoning.parse_error,
            reasoning.generated_tokens, reasoning.reasoning_tokens};
  }

  /// Judges `task` x `mode` with the template file at `path` (the schema of the repository's templates/*.json)
  /// from now on; throws, leaving the judge unchanged, when it cannot be read, is invalid, or is for another task
  /// or mode.
  void set_template_file(int32_t task, int32_t mode, const std::string& path) { set_template(task, mode, &path, nullptr); }

  /// `set_template_file` with the file's JSON text.
  void set_template_json(int32_t task, int32_t mode, const std::string& json) { set_template(task, mode, nullptr, &json); }

 private:
  void set_template(int32_t task, int32_t mode, const std::string* path, const std::string* json) {
    ur_judge_template t = ur_judge_template_default();
    t.task = task;
    t.mode = mode;
    t.path = path != nullptr ? path->c_str() : nullptr;
    t.json = json != nullptr ? json->c_str() : nullptr;
    detail::check(ur_judge_set_template(judge_, &t));
  }

  ur_context* ctx_ = nullptr;
  ur_judge* judge_ = nullptr;
};

/// The fused AdamW over parameters the caller owns (`ur_adamw_*`: fp32 moments, fp32 masters for bf16/f16
/// parameters, optional clipping by global norm and a schedule), owned and freed by this object (move-only). The
/// context must outlive it; one thread at a time.
///
///   std::vector<unireward::TensorRef> params{TensorRef(w.data(), {2, 3}), TensorRef(b.data(), {3})};
///   ur_adamw_config cfg = ur_adamw_config_default();  cfg.lr = 1e-3;  cfg.max_grad_norm = 1.0;
///   unireward::AdamW opt(ctx, params, {"weight", "bias"}, cfg);
///   ur_adamw_step_report r = opt.step(params, grads);  // the parameters are updated in place
class AdamW {
 public:
  /// An optimizer for `params` (their values start the masters), named by `names` (empty: `name_0`, ...).
  AdamW(const Context& ctx, const std::vector<TensorRef>& params, const std::vector<std::string>& names = {},
        const ur_adamw_config& config = ur_adamw_config_default())
      : ctx_(ctx.get()), count_(params.size()) {
    if (!names.empty() && names.size() != params.size()) {
      throw Error(UR_ERROR_INVALID_ARGUMENT, std::to_string(names.size()) + " names for " +
                                                 std::to_string(params.size()) + " parameters");
    }
    const std::vector<DLTensor> tensors = dl_tensors(params);
    const std::vector<const char*> c_names = detail::c_strings(names);
    ur_adamw* opt = nullptr;
    detail::check(ur_adamw_create(ctx_, tensors.data(), names.empty() ? nullptr : c_names.data(), count_, &config,
                                  &opt));
    opt_.reset(opt);
  }

  /// The C handle (nullptr after a move).
  ur_adamw* get() const noexcept { return opt_.get(); }

  /// One step: `grads[i]` updates `params[i]` in place, both in the order the optimizer was created with.
  ur_adamw_step_report step(const std::vector<TensorRef>& params, const std::vector<TensorRef>& grads,
                            void* stream = nullptr) {
    if (params.size() != count_ || grads.size() != count_) {
      throw Error(UR_ERROR_INVALID_ARGUMENT, std::to_string(params.size()) + " parameters and " +
                                                 std::to_string(grads.size()) + " gradients for an optimizer of " +
                                                 std::to_string(count_) + " parameters");
    }
    const std::vector<DLTensor> p = dl_tensors(params), g = dl_tensors(grads);
    ur_adamw_step_report report{};
    report.struct_size = sizeof report;
    detail::check(ur_adamw_step(ctx_, opt_.get(), p.data(), g.data(), count_, &report, stream));
    return report;
  }

  /// The sizes of the state (`ur_adamw_state_numel`): elements of each moment, of the masters, and the steps done.
  struct StateNumel {
    uint64_t moments = 0, masters = 0, step = 0;
  };
  StateNumel state_numel() const {
    StateNumel n;
    detail::check(ur_adamw_state_numel(ctx_, opt_.get(), &n.moments, &n.masters, &n.step));
    return n;
  }

  /// A host copy of a CPU optimizer's state, for a checkpoint of the loop (`ur_adamw_get_state`; a CUDA optimizer's
  /// goes to device memory through the C call).
  struct State {
    uint64_t step = 0;
    std::vector<float> exp_avg, exp_avg_sq, master;
  };
  State state() const {
    const StateNumel n = state_numel();
    State s;
    s.exp_avg.resize(n.moments);
    s.exp_avg_sq.resize(n.moments);
    s.master.resize(n.masters);
    const auto [m, v, w] = state_refs(s);
    detail::check(ur_adamw_get_state(ctx_, opt_.get(), m, v, n.masters ? w.get() : nullptr, &s.step, nullptr));
    return s;
  }

  /// Restores a `state()` of an optimizer over the same parameters (`ur_adamw_set_state`: all checked first).
  void load_state(const State& s) {
    const auto [m, v, w] = state_refs(s);
    detail::check(ur_adamw_set_state(ctx_, opt_.get(), m, v, s.master.empty() ? nullptr : w.get(), s.step, nullptr));
  }

 private:
  /// The DLTensors of `refs`, contiguous as the C calls take them (shapes still owned by `refs`).
  static std::vector<DLTensor> dl_tensors(const std::vector<TensorRef>& refs) {
    std::vector<DLTensor> out;
    out.reserve(refs.size());
    for (const TensorRef& r : refs) out.push_back(*r.get());
    return out;
  }

  /// Host references to a state's three buffers.
  static std::tuple<TensorRef, TensorRef, TensorRef> state_refs(const State& s) {
    const auto ref = [](const std::vector<float>& v) {
      return TensorRef(v.data(), {static_cast<int64_t>(v.size())});
    };
    return {ref(s.exp_avg), ref(s.exp_avg_sq), ref(s.master)};
  }

  ur_context* ctx_ = nullptr;
  size_t count_ = 0;
  std::unique_ptr<ur_adamw, detail::Deleter<ur_adamw_free>> opt_;
};

/// The settings of the trainers stepped on the caller's records (`ur_trainer_config`), with the strings it points
/// to held here. `config.total_steps` must be set.
struct TrainerConfig {
  ur_trainer_config config = ur_trainer_config_default();
  /// The folder the records' media paths are relative to; empty: the current directory.
  std::string media_folder;
  /// Parameters left untrained, as `--freeze` names them (`vision`, `projector`, or a fragment of a name).
  std::vector<std::string> freeze;
  /// A checkpoint the trainer's `save` wrote, to continue from (same settings); empty: a fresh start.
  std::string resume_from;
};

namespace detail {
/// `TrainerConfig` as the C calls take it, pointing into the `TrainerConfig` (which must outlive it).
class TrainerConfigC {
 public:
  explicit TrainerConfigC(const TrainerConfig& cfg) : freeze_(c_strings(cfg.freeze)), c_(cfg.config) {
    c_.media_folder = cfg.media_folder.empty() ? nullptr : cfg.media_folder.c_str();
    c_.freeze = freeze_.empty() ? nullptr : freeze_.data();
    c_.num_freeze = freeze_.size();
    c_.resume_from = cfg.resume_from.empty() ? nullptr : cfg.resume_from.c_str();
  }
  const ur_trainer_config* get() const noexcept { return &c_; }

 private:
  std::vector<const char*> freeze_;
  ur_trainer_config c_;
};

/// One step's `count` record strings and micro-batch size, checked for the C call.
inline std::vector<const char*> record_strings(const std::vector<std::string>& records) {
  if (records.empty()) throw Error(UR_ERROR_INVALID_ARGUMENT, "no records: a step takes at least one");
  return c_strings(records);
}
}  // namespace detail

/// The SFT trainer on the caller's conversation records (`ur_sft_trainer_*`): a checkpoint's model in float32 with
/// its AdamW state and tokenizer, owned and freed by this object (move-only). `step` takes records as the lines of a
/// `unireward train-judge` data file; fed the same batches, it is bitwise that command's run.
///
///   unireward::TrainerConfig cfg;  cfg.config.total_steps = 100;  cfg.config.lr = 1e-5;
///   unireward::SftTrainer trainer(ctx, "path/to/judge", cfg);
///   ur_sft_step_metrics m = trainer.step(records, 4);   // micro-batches of 4 records, gradients accumulated
///   trainer.save("runs/judge");                        // runs/judge/checkpoint-<step>/
class SftTrainer {
 public:
  SftTrainer(const Context& ctx, const std::string& model_dir, const TrainerConfig& config) : ctx_(ctx.get()) {
    const detail::TrainerConfigC c(config);
    ur_sft_trainer* trainer = nullptr;
    detail::check(ur_sft_trainer_create(ctx_, model_dir.c_str(), c.get(), &trainer));
    trainer_.reset(trainer);
  }

  /// The C handle (nullptr after a move).
  ur_sft_trainer* get() const noexcept { return trainer_.get(); }

  /// One optimizer step on `records` cut into micro-batches of `micro_batch_size` (0: one micro-batch of all).
  ur_sft_step_metrics step(const std::vector<std::string>& records, size_t micro_batch_size = 0) {
    const std::vector<const char*> c = detail::record_strings(records);
    ur_sft_step_metrics metrics{};
    metrics.struct_size = sizeof metrics;
    detail::check(ur_sft_trainer_step(ctx_, trainer_.get(), c.data(), c.size(), micro_batch_size, &metrics));
    return metrics;
  }

  /// Names the tasks of later steps' records (each record's `task` field): every step then has each task's mean
  /// loss, `task_losses()` in this order; a record of another task, or of none, is an error naming it.
  void set_tasks(const std::vector<std::string>& tasks) {
    const std::vector<const char*> c = detail::c_strings(tasks);
    detail::check(ur_sft_trainer_set_tasks(ctx_, trainer_.get(), c.data(), c.size()));
    tasks_ = tasks.size();
  }

  /// The last step's mean loss of each task of `set_tasks` (NaN: none of its tokens in the step); without a task list
  /// one loss, the step's.
  std::vector<double> task_losses() const {
    std::vector<double> losses(tasks_);
    detail::check(ur_sft_trainer_task_losses(ctx_, trainer_.get(), losses.data(), losses.size()));
    return losses;
  }

  /// Writes `out_dir/checkpoint-<step>/` (weights, config, tokenizer files and the optimizer state).
  void save(const std::string& out_dir) { detail::check(ur_sft_trainer_save(ctx_, trainer_.get(), out_dir.c_str())); }

 private:
  ur_context* ctx_ = nullptr;
  std::unique_ptr<ur_sft_trainer, detail::Deleter<ur_sft_trainer_free>> trainer_;
  size_t tasks_ = 1;
};

/// The DPO trainer on the caller's pair records (`ur_dpo_trainer_*`): a policy in float32 with its AdamW state,
/// its loss (`ur_dpo_config`, TRL's defaults by default) and a frozen reference when the loss needs one (from
/// `reference_dir`, or empty: a copy of the policy as it starts), owned and freed by this object (move-only).
///
///   ur_dpo_config loss = ur_dpo_config_default();  loss.beta = 0.1f;
///   unireward::DpoTrainer trainer(ctx, "path/to/policy", cfg, loss);
///   ur_dpo_step_metrics m = trainer.step(pairs);       // {"prompt": ..., "chosen": ..., "rejected": ...} lines
class DpoTrainer {
 public:
  DpoTrainer(const Context& ctx, const std::string& policy_dir, const TrainerConfig& config,
             const ur_dpo_config& loss = ur_dpo_config_default(), const std::string& reference_dir = "")
      : ctx_(ctx.get()) {
    const detail::TrainerConfigC c(config);
    ur_dpo_trainer* trainer = nullptr;
    detail::check(ur_dpo_trainer_create(ctx_, policy_dir.c_str(),
                                        reference_dir.empty() ? nullptr : reference_dir.c_str(), c.get(), &loss,
                                        &trainer));
    trainer_.reset(trainer);
  }

  /// The C handle (nullptr after a move).
  ur_dpo_trainer* get() const noexcept { return trainer_.get(); }

  /// One optimizer step on the pair `records` cut into micro-batches of `micro_batch_size` (0: one of all).
  ur_dpo_step_metrics step(const std::vector<std::string>& records, size_t micro_batch_size = 0) {
    const std::vector<const char*> c = detail::record_strings(records);
    ur_dpo_step_metrics metrics{};
    metrics.struct_size = sizeof metrics;
    detail::check(ur_dpo_trainer_step(ctx_, trainer_.get(), c.data(), c.size(), micro_batch_size, &metrics));
    return metrics;
  }

  /// Writes `out_dir/checkpoint-<step>/` (the policy's weights, config, tokenizer files and the trainer state).
  void save(const std::string& out_dir) { detail::check(ur_dpo_trainer_save(ctx_, trainer_.get(), out_dir.c_str())); }

 private:
  ur_context* ctx_ = nullptr;
  std::unique_ptr<ur_dpo_trainer, detail::Deleter<ur_dpo_trainer_free>> trainer_;
};

/// A scalar reward-model trainer (`ur_reward_trainer_*`) stepped on pair records (Bradley–Terry) or ranked lists
/// (`UR_REWARD_LOSS_KWISE*`). Move-only.
class RewardTrainer {
 public:
  RewardTrainer(const Context& ctx, const std::string& model_dir, const TrainerConfig& config,
                const ur_reward_loss_config& loss = ur_reward_loss_config_default())
      : ctx_(ctx.get()) {
    const detail::TrainerConfigC c(config);
    ur_reward_trainer* trainer = nullptr;
    detail::check(ur_reward_trainer_create(ctx_, model_dir.c_str(), c.get(), &loss, &trainer));
    trainer_.reset(trainer);
  }

  /// The C handle (nullptr after a move).
  ur_reward_trainer* get() const noexcept { return trainer_.get(); }

  /// One optimizer step on `records` cut into micro-batches of `micro_batch_size` (0: one of all).
  ur_reward_step_metrics step(const std::vector<std::string>& records, size_t micro_batch_size = 0) {
    const std::vector<const char*> c = detail::record_strings(records);
    ur_reward_step_metrics metrics{};
    metrics.struct_size = sizeof metrics;
    detail::check(ur_reward_trainer_step(ctx_, trainer_.get(), c.data(), c.size(), micro_batch_size, &metrics));
    return metrics;
  }

  /// Writes `out_dir/checkpoint-<step>/` (the weights with `score.weight`, config, tokenizer files, trainer state).
  void save(const std::string& out_dir) {
    detail::check(ur_reward_trainer_save(ctx_, trainer_.get(), out_dir.c_str()));
  }

 private:
  ur_context* ctx_ = nullptr;
  std::unique_ptr<ur_reward_trainer, detail::Deleter<ur_reward_trainer_free>> trainer_;
};

}  // namespace unireward

#endif  // UNIREWARD_HPP
