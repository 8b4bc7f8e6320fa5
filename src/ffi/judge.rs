//! `ur_judge_*`: the judge (`crate::judge::Judge`) behind an opaque handle — one-pass pairwise verdicts and
//! pointwise scores of the four UnifiedReward tasks, one request at a time or batched. Media cross as file paths
//! (the judge decodes them itself) or as 8-bit RGB pixels in host memory (`ur_judge_pixels`); either way the judge
//! preprocesses them with the checkpoint's `preprocessor_config.json`. Reasoned judgments are in
//! [`judge_reasoned`](super::judge_reasoned), users' template files in [`judge_template`](super::judge_template).

use std::ffi::{c_char, c_void};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytemuck::NoUninit;

use super::context::{self, array, caller_size, code, read_config, size_of_u32, text, ur_context, Config, Versioned};
use super::dlpack::{device_of, dtype_of, DLDataType, DLDevice};
use super::host_out::{check_host_outputs, HostOut, HostSpan};
use super::status::{call, ur_status, Failure, FfiResult};
use crate::judge::answer::Verdict;
use crate::judge::MediaSpec;
use crate::judge::{AnswerClasses, Candidate, Context, Judge, JudgeRequest, JudgeResult, MediaFile, Mode, Task};
use crate::media::{sample_frame_indices, RgbImage, MAX_IMAGE_SIDE, MAX_VIDEO_FRAMES};

/// `task` codes (the numbers never change).
pub const UR_TASK_IMAGE_GENERATION: i32 = 0;
pub const UR_TASK_IMAGE_UNDERSTANDING: i32 = 1;
pub const UR_TASK_VIDEO_GENERATION: i32 = 2;
pub const UR_TASK_VIDEO_UNDERSTANDING: i32 = 3;
/// `ur_judge_request.mode`: which of two candidates is better (or a tie), from both orders.
pub const UR_JUDGE_PAIRWISE: i32 = 0;
/// `ur_judge_request.mode`: one candidate's score on the task's scale.
pub const UR_JUDGE_POINTWISE: i32 = 1;
/// `ur_judge_item.kind`: a response text (the candidates of understanding tasks).
pub const UR_JUDGE_TEXT: i32 = 0;
/// `ur_judge_item.kind`: an image file (PNG, JPEG, WebP, GIF).
pub const UR_JUDGE_IMAGE: i32 = 1;
/// `ur_judge_item.kind`: a video, as a folder of frame images or an animated GIF.
pub const UR_JUDGE_VIDEO: i32 = 2;
/// `ur_judge_item.kind`: an image's pixels in memory, `value` pointing to a `ur_judge_pixels` of one frame.
pub const UR_JUDGE_IMAGE_PIXELS: i32 = 3;
/// `ur_judge_item.kind`: a video's frames in memory, `value` pointing to a `ur_judge_pixels`.
pub const UR_JUDGE_VIDEO_PIXELS: i32 = 4;
/// `ur_judge_result.verdict`: the first candidate given (A) is better.
pub const UR_VERDICT_FIRST: i32 = 0;
/// The second candidate given (B) is better.
pub const UR_VERDICT_SECOND: i32 = 1;
/// Neither is better.
pub const UR_VERDICT_TIE: i32 = 2;
/// No verdict: a pointwise judgment.
pub const UR_VERDICT_NONE: i32 = -1;

/// The C code of a verdict (`UR_VERDICT_NONE` for none: a pointwise judgment, an answer that states none).
pub(super) fn verdict_code(verdict: Option<Verdict>) -> i32 {
    match verdict {
        Some(Verdict::First) => UR_VERDICT_FIRST,
        Some(Verdict::Second) => UR_VERDICT_SECOND,
        Some(Verdict::Tie) => UR_VERDICT_TIE,
        None => UR_VERDICT_NONE,
    }
}

pub(super) const TASKS: [Task; 4] =
    [Task::ImageGeneration, Task::ImageUnderstanding, Task::VideoGeneration, Task::VideoUnderstanding];
pub(super) const MODES: [Mode; 2] = [Mode::Pairwise, Mode::Pointwise];

/// Tells a live judge from garbage (a freed or never-created pointer is still undefined behaviour).
const MAGIC: u64 = 0x7572_5f6a_7564_0001; // "ur_jud" v1

/// A judge checkpoint (LLaVA-OneVision, or a text-only Qwen2) with its tokenizer, chat template, image processor
/// and task templates. Opaque; create it with `ur_judge_load`, free it with `ur_judge_free`. Use it from one
/// thread at a time.
#[allow(non_camel_case_types)]
pub struct ur_judge {
    magic: u64,
    pub(super) judge: Judge,
    /// The texts of the last reasoned judgment, which its `ur_judge_reasoning` points to.
    pub(super) reasoning: super::judge_reasoned::ReasoningTexts,
}

/// One candidate, or one image or video of a context: a kind (`UR_JUDGE_*`) and its value. Its layout is fixed.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_judge_item {
    pub kind: i32,
    /// Set to 0.
    pub reserved: i32,
    /// `UR_JUDGE_TEXT`, `UR_JUDGE_IMAGE`, `UR_JUDGE_VIDEO`: the text, or the file's path, NUL-terminated UTF-8
    /// (`const char *`). `UR_JUDGE_IMAGE_PIXELS`, `UR_JUDGE_VIDEO_PIXELS`: a `const ur_judge_pixels *`.
    pub value: *const c_void,
}

/// An image or a video as 8-bit RGB pixels in host memory, the value of a `UR_JUDGE_IMAGE_PIXELS` or
/// `UR_JUDGE_VIDEO_PIXELS` item: judged exactly as the same pixels decoded from a file. The bytes are copied during
/// the call: an image's, and of a video only the frames the task's template samples (the others are never read).
/// Initialise with `ur_judge_pixels_default()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_judge_pixels {
    /// `sizeof(ur_judge_pixels)`.
    pub struct_size: u32,
    /// Set to 0.
    pub reserved: u32,
    /// `num_frames · height · width · 3` bytes: the frames in playing order, each row-major (rows top to bottom),
    /// R G B interleaved.
    pub data: *const u8,
    /// 1 for an image (the default); a video's frames, all of them (1 to 100000): the judge samples the
    /// template's frames evenly, as from a video file.
    pub num_frames: u64,
    /// Each frame's size, 1 to 32768 pixels a side.
    pub height: u64,
    pub width: u64,
}

impl Versioned for ur_judge_pixels {
    const NAME: &'static str = "ur_judge_pixels";
}

impl Config for ur_judge_pixels {
    fn default_value() -> Self {
        ur_judge_pixels {
            struct_size: size_of_u32::<Self>(),
            reserved: 0,
            data: std::ptr::null(),
            num_frames: 1,
            height: 0,
            width: 0,
        }
    }
}

/// One frame, no data, no size yet.
#[no_mangle]
pub extern "C" fn ur_judge_pixels_default() -> ur_judge_pixels {
    ur_judge_pixels::default_value()
}

/// What the candidates are judged against: the template's fields by name (`caption` for generation tasks,
/// `question` for understanding tasks) and, for understanding tasks, the image or video the question is about.
/// Initialise with `ur_judge_context_default()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_judge_context {
    /// `sizeof(ur_judge_context)`.
    pub struct_size: u32,
    /// Set to 0.
    pub reserved: u32,
    /// `num_fields` names and values, NUL-terminated UTF-8 (NULL when `num_fields` is 0).
    pub field_names: *const *const c_char,
    pub field_values: *const *const c_char,
    pub num_fields: usize,
    /// `num_media` images or videos (`UR_JUDGE_IMAGE`, `_VIDEO`, `_IMAGE_PIXELS` or `_VIDEO_PIXELS` items; NULL
    /// when `num_media` is 0).
    pub media: *const ur_judge_item,
    pub num_media: usize,
}

impl Versioned for ur_judge_context {
    const NAME: &'static str = "ur_judge_context";
}

impl Config for ur_judge_context {
    fn default_value() -> Self {
        ur_judge_context {
            struct_size: size_of_u32::<Self>(),
            reserved: 0,
            field_names: std::ptr::null(),
            field_values: std::ptr::null(),
            num_fields: 0,
            media: std::ptr::null(),
            num_media: 0,
        }
    }
}

/// An empty context: no fields, no media.
#[no_mangle]
pub extern "C" fn ur_judge_context_default() -> ur_judge_context {
    ur_judge_context::default_value()
}

/// One judgment of a `ur_judge_many` batch. Initialise with `ur_judge_request_default()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_judge_request {
    /// `sizeof(ur_judge_request)`.
    pub struct_size: u32,
    /// `UR_TASK_*`.
    pub task: i32,
    /// `UR_JUDGE_PAIRWISE` (default) or `UR_JUDGE_POINTWISE`.
    pub mode: i32,
    /// Set to 0.
    pub reserved: i32,
    /// NULL: an empty context.
    pub context: *const ur_judge_context,
    /// Two candidates (A, B) for pairwise, one for pointwise: media (files or pixels) for generation tasks, texts
    /// for understanding tasks.
    pub candidates: *const ur_judge_item,
    pub num_candidates: usize,
}

impl Versioned for ur_judge_request {
    const NAME: &'static str = "ur_judge_request";
}

impl Config for ur_judge_request {
    fn default_value() -> Self {
        ur_judge_request {
            struct_size: size_of_u32::<Self>(),
            task: UR_TASK_IMAGE_GENERATION,
            mode: UR_JUDGE_PAIRWISE,
            reserved: 0,
            context: std::ptr::null(),
            candidates: std::ptr::null(),
            num_candidates: 0,
        }
    }
}

/// Image generation, pairwise, no context, no candidates.
#[no_mangle]
pub extern "C" fn ur_judge_request_default() -> ur_judge_request {
    ur_judge_request::default_value()
}

/// A judgment, besides its probabilities. Set `struct_size = sizeof(ur_judge_result)` before the call.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, NoUninit)]
pub struct ur_judge_result {
    /// `sizeof(ur_judge_result)`, set by the caller.
    pub struct_size: u32,
    /// Pairwise: the position-debiased verdict, `UR_VERDICT_FIRST` / `_SECOND` / `_TIE`; pointwise:
    /// `UR_VERDICT_NONE`.
    pub verdict: i32,
    /// The probabilities written: pairwise 3 (`[A better, B better, tie]`, debiased over both orders; the tie's 0
    /// for templates without a tie phrase), pointwise one per score value of the task's scale, lowest first.
    pub num_probs: u64,
    /// Pointwise: the expected score and the most probable score value; NaN for pairwise.
    pub score: f32,
    pub argmax_score: f32,
    /// Pairwise: 1 when both orders pick the same candidate, else 0; -1 for pointwise.
    pub position_consistent: i32,
    /// Written 0.
    pub reserved: i32,
    /// Tokens of the (forward-order) prompt, media placeholders included.
    pub prompt_tokens: u64,
    /// Wall time; in a batch, the batch's time shared equally by its requests.
    pub seconds: f64,
}

impl Versioned for ur_judge_result {
    const NAME: &'static str = "ur_judge_result";
}

/// What a `ur_judge_many` batch cost. Set `struct_size = sizeof(ur_judge_batch_info)` before the call.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, NoUninit)]
pub struct ur_judge_batch_info {
    /// `sizeof(ur_judge_batch_info)`, set by the caller.
    pub struct_size: u32,
    /// Written 0.
    pub reserved: u32,
    /// Positions run through the model, and the positions prefix sharing saved (prompts seeing the same media
    /// share their prefix).
    pub prefill_tokens: u64,
    pub prefill_tokens_saved: u64,
    pub seconds: f64,
}

impl Versioned for ur_judge_batch_info {
    const NAME: &'static str = "ur_judge_batch_info";
}

/// Borrows a judge handle.
///
/// # Safety
/// `judge` is NULL or a pointer returned by `ur_judge_load` and not yet freed.
pub(super) unsafe fn handle<'a>(judge: *const ur_judge) -> FfiResult<&'a Judge> {
    // SAFETY: this function's contract.
    live(unsafe { judge.as_ref() }).map(|j| &j.judge)
}

/// Borrows a judge handle to change it (its templates, its last reasoned texts).
///
/// # Safety
/// `judge` is NULL or a pointer returned by `ur_judge_load`, not yet freed, that no other call is using.
pub(super) unsafe fn handle_mut<'a>(judge: *mut ur_judge) -> FfiResult<&'a mut ur_judge> {
    // SAFETY: this function's contract.
    live(unsafe { judge.as_mut() })
}

/// `judge` when it is a live handle: NULL and anything without the magic are errors.
fn live<J: std::ops::Deref<Target = ur_judge>>(judge: Option<J>) -> FfiResult<J> {
    match judge {
        None => Err(Failure::null("judge")),
        Some(j) if j.magic == MAGIC => Ok(j),
        Some(_) => Err(Failure::invalid("`judge` is not a live ur_judge")),
    }
}

/// The frames the template of `task` × `mode` samples from each video (`None` for image templates): reading only
/// those of a video in memory judges exactly as reading all of them, since the judge would sample the same ones.
pub(super) fn sampled_frames(judge: &Judge, task: Task, mode: Mode) -> FfiResult<Option<usize>> {
    Ok(match judge.template(task, mode)?.media {
        MediaSpec::Video { frames_per_video, .. } => Some(frames_per_video),
        MediaSpec::Image { .. } => None,
    })
}

/// An item as the Rust API takes it (a context's media are refused as text by the caller); of a video in memory
/// only the `sampled` frames (when known: see [`sampled_frames`]) are read.
///
/// # Safety
/// `item.value` is NULL, NUL-terminated (a text or a path) or a readable `ur_judge_pixels` (the pixel kinds) as
/// [`read_pixels`] needs.
unsafe fn candidate(name: &str, item: &ur_judge_item, sampled: Option<usize>) -> FfiResult<Candidate> {
    let kinds = [UR_JUDGE_TEXT, UR_JUDGE_IMAGE, UR_JUDGE_VIDEO, UR_JUDGE_IMAGE_PIXELS, UR_JUDGE_VIDEO_PIXELS];
    let kind = code(&format!("{name}.kind"), item.kind, &kinds)?;
    if matches!(kind, UR_JUDGE_IMAGE_PIXELS | UR_JUDGE_VIDEO_PIXELS) {
        let video = (kind == UR_JUDGE_VIDEO_PIXELS).then_some(sampled);
        // SAFETY: this function's contract.
        let media = unsafe { read_pixels(name, video, item.value.cast()) }?;
        return Ok(Candidate::Media(media));
    }
    // SAFETY: this function's contract.
    let value = unsafe { text(&format!("{name}.value"), item.value.cast()) }?;
    Ok(match kind {
        UR_JUDGE_TEXT => Candidate::Text(value),
        UR_JUDGE_IMAGE => Candidate::Media(MediaFile::Image(PathBuf::from(value))),
        _ => Candidate::Media(MediaFile::Video(PathBuf::from(value))),
    })
}

/// The pixels of item `name` copied into an image (`video` `None`: one frame) or a video's frames (`Some`: all of
/// them, or only the frames sampled from them when the count to sample is known), every size checked before any
/// byte is read.
///
/// # Safety
/// `pixels` is NULL or a readable `ur_judge_pixels` of its `struct_size` whose `data` holds
/// `num_frames · height · width · 3` readable bytes.
unsafe fn read_pixels(
    name: &str,
    video: Option<Option<usize>>,
    pixels: *const ur_judge_pixels,
) -> FfiResult<MediaFile> {
    let field = format!("{name}.value->");
    if pixels.is_null() {
        return Err(Failure::null(&format!("{name}.value")));
    }
    let renamed = |f: Failure| Failure { message: f.message.replace("`ur_judge_pixels.", &format!("`{field}")), ..f };
    // SAFETY: this function's contract.
    let p = unsafe { read_config(pixels) }.map_err(renamed)?;
    let most_frames = if video.is_some() { MAX_VIDEO_FRAMES } else { 1 };
    let dim = |value: u64, f: &str, most: usize, what: &str| -> FfiResult<usize> {
        match usize::try_from(value) {
            Ok(v) if (1..=most).contains(&v) => Ok(v),
            _ => Err(Failure::invalid(format!("`{field}{f}` is {value}: {what} takes 1 to {most}"))),
        }
    };
    let kind = if video.is_some() { "a video (UR_JUDGE_VIDEO_PIXELS)" } else { "an image (UR_JUDGE_IMAGE_PIXELS)" };
    let frames = dim(p.num_frames, "num_frames", most_frames, kind)?;
    let height = dim(p.height, "height", MAX_IMAGE_SIDE, "a frame")?;
    let width = dim(p.width, "width", MAX_IMAGE_SIDE, "a frame")?;
    if p.data.is_null() {
        return Err(Failure::null(&format!("{field}data")));
    }
    // At most 32768² · 3 bytes a frame and 100000 frames: no overflow in 64 bits.
    let frame_bytes = height * width * 3;
    // SAFETY: this function's contract: `data` holds the frames' bytes.
    let bytes = unsafe { std::slice::from_raw_parts(p.data, frames * frame_bytes) };
    let read = match video {
        Some(Some(count)) => sample_frame_indices(frames, count)?,
        _ => (0..frames).collect(),
    };
    let mut images = read
        .into_iter()
        .map(|i| RgbImage::new(width, height, bytes[i * frame_bytes..(i + 1) * frame_bytes].to_vec()))
        .collect::<crate::Result<Vec<_>>>()?;
    Ok(match video {
        Some(_) => MediaFile::VideoFrames(images.into()),
        None => MediaFile::ImagePixels(Arc::new(images.remove(0))),
    })
}

/// Reads a context (NULL: empty), its strings copied, of its videos in memory only the `sampled` frames.
///
/// # Safety
/// `ctx` is NULL or a readable `ur_judge_context` of its `struct_size` whose arrays hold their counts of valid
/// pointers, its media items valid as [`candidate`] needs.
unsafe fn read_context(name: &str, ctx: *const ur_judge_context, sampled: Option<usize>) -> FfiResult<Context> {
    let at = |f: Failure| {
        let message = f.message.replace("`ur_judge_context.", &format!("`{name}->"));
        Failure { message: message.replace("`ur_judge_context`", &format!("`*{name}`")), ..f }
    };
    // SAFETY (block): this function's contract.
    unsafe {
        let c = read_config(ctx).map_err(at)?;
        let names = array(&format!("{name}->field_names"), c.field_names, c.num_fields)?;
        let values = array(&format!("{name}->field_values"), c.field_values, c.num_fields)?;
        let mut out = Context::default();
        for (i, (&n, &v)) in names.iter().zip(values).enumerate() {
            let field = text(&format!("{name}->field_names[{i}]"), n)?;
            let value = text(&format!("{name}->field_values[{i}]"), v)?;
            if out.fields.insert(field.clone(), value).is_some() {
                return Err(Failure::invalid(format!("`{name}->field_names` holds `{field}` twice")));
            }
        }
        for (i, item) in array(&format!("{name}->media"), c.media, c.num_media)?.iter().enumerate() {
            let item_name = format!("{name}->media[{i}]");
            match candidate(&item_name, item, sampled)? {
                Candidate::Media(m) => out.media.push(m),
                Candidate::Text(_) => {
                    return Err(Failure::invalid(format!(
                        "`{item_name}.kind` is UR_JUDGE_TEXT: a context's media are UR_JUDGE_IMAGE or UR_JUDGE_VIDEO"
                    )))
                }
            }
        }
        Ok(out)
    }
}

/// Reads request `name` (a readable, non-NULL `ur_judge_request`), its context and candidates.
///
/// # Safety
/// `request` points to a readable `ur_judge_request` of its `struct_size` whose pointers are valid as
/// [`read_context`] and [`candidate`] need.
pub(super) unsafe fn read_request(
    judge: &Judge,
    name: &str,
    request: *const ur_judge_request,
) -> FfiResult<JudgeRequest> {
    let at = |f: Failure| Failure { message: f.message.replace("`ur_judge_request", &format!("`{name}")), ..f };
    // SAFETY (block): this function's contract.
    unsafe {
        let r = read_config(request).map_err(at)?;
        let task = code(&format!("{name}.task"), r.task, &TASKS)?;
        let mode = code(&format!("{name}.mode"), r.mode, &MODES)?;
        let sampled = sampled_frames(judge, task, mode)?;
        let context = read_context(&format!("{name}.context"), r.context, sampled)?;
        let items = array(&format!("{name}.candidates"), r.candidates, r.num_candidates)?;
        let candidates = items
            .iter()
            .enumerate()
            .map(|(k, c)| candidate(&format!("{name}.candidates[{k}]"), c, sampled))
            .collect::<FfiResult<Vec<_>>>()?;
        Ok(JudgeRequest { task, mode, context, candidates })
    }
}

/// Where the results go: `count` result structs (stride: the first one's `struct_size`) and `count` runs of
/// `capacity` probabilities.
pub(super) struct Outputs {
    results: Vec<HostOut<ur_judge_result>>,
    probs: *mut f32,
    capacity: usize,
}

impl Outputs {
    /// Checks the outputs of `count` judgments, each needing the probabilities in `needed` (index: request), and
    /// that none overlaps the call's `other` outputs.
    ///
    /// # Safety
    /// `results` is NULL or points to `count` structs of its first `struct_size` each.
    pub(super) unsafe fn check(
        name: &'static str,
        results: *mut ur_judge_result,
        probs: *mut f32,
        capacity: usize,
        needed: &[usize],
        other: &[HostSpan],
    ) -> FfiResult<Self> {
        if results.is_null() {
            return Err(Failure::null(name));
        }
        // SAFETY: this function's contract; `ur_judge_result` starts with its `u32` size.
        let first = unsafe { *(results as *const u32) };
        let stride = caller_size::<ur_judge_result>(first, "set it to sizeof(ur_judge_result) before the call")?;
        let mut outs = Vec::with_capacity(needed.len());
        for i in 0..needed.len() {
            // SAFETY: this function's contract: item `i` starts `i · stride` bytes in.
            let item = unsafe { (results as *mut u8).add(i * stride) } as *mut ur_judge_result;
            // SAFETY: as above.
            let size = unsafe { *(item as *const u32) };
            if size != first {
                return Err(Failure::invalid(format!(
                    "`{name}[{i}].struct_size` is {size}, `{name}[0]`'s {first}: every item of the array has the same size"
                )));
            }
            // SAFETY: as above.
            outs.push(unsafe { HostOut::versioned(name, item) }?.expect("checked non-NULL"));
        }
        let most = needed.iter().copied().max().unwrap_or(0);
        if capacity < most {
            let at = needed.iter().position(|&n| n == most).unwrap_or(0);
            return Err(Failure::invalid(format!(
                "`probs_capacity` is {capacity}, request {at} has {most} probabilities"
            )));
        }
        if probs.is_null() && most > 0 {
            return Err(Failure::null("probs"));
        }
        let mut spans: Vec<Option<HostSpan>> = outs.iter().map(|o| Some(o.span())).collect();
        let probs_bytes = needed.len() * capacity * std::mem::size_of::<f32>();
        spans.push(Some(HostSpan::new("probs", probs as *const u8, probs_bytes)));
        spans.extend(other.iter().copied().map(Some));
        check_host_outputs(&spans, &[])?;
        Ok(Outputs { results: outs, probs, capacity })
    }

    /// Writes the results, in request order.
    ///
    /// # Safety
    /// `probs` holds `count · capacity` writable floats; the result pointers are writable for their size.
    pub(super) unsafe fn write(&self, results: &[JudgeResult]) {
        for (i, (out, r)) in self.results.iter().zip(results).enumerate() {
            // SAFETY: this function's contract; `check` made sure each result's probabilities fit its run.
            unsafe {
                std::ptr::copy_nonoverlapping(r.probs.as_ptr(), self.probs.add(i * self.capacity), r.probs.len())
            };
            let verdict = verdict_code(r.verdict);
            // SAFETY: this function's contract.
            unsafe {
                out.write(ur_judge_result {
                    struct_size: 0,
                    verdict,
                    num_probs: r.probs.len() as u64,
                    score: r.score.unwrap_or(f32::NAN),
                    argmax_score: r.argmax_score.unwrap_or(f32::NAN),
                    position_consistent: r.pair.as_ref().map_or(-1, |p| i32::from(p.position_consistent)),
                    reserved: 0,
                    prompt_tokens: r.prompt_tokens as u64,
                    seconds: r.seconds,
                })
            };
        }
    }
}

/// The probabilities a judgment of `task` × `mode` has: 3 pairwise, one per answer class (score value)
/// pointwise.
pub(super) fn probabilities(judge: &Judge, task: Task, mode: Mode) -> FfiResult<usize> {
    Ok(match mode {
        Mode::Pairwise => 3,
        Mode::Pointwise => {
            AnswerClasses::for_grammar(&judge.template(task, mode)?.answer, &judge.tokenizer)?.labels.len()
        }
    })
}

/// Runs checked requests and writes their results; nothing is written when the judge refuses one.
///
/// # Safety
/// As for [`Outputs::check`] and [`Outputs::write`].
unsafe fn run(
    judge: &Judge,
    name: &'static str,
    requests: &[JudgeRequest],
    probs: *mut f32,
    capacity: usize,
    results: *mut ur_judge_result,
    info: Option<HostOut<ur_judge_batch_info>>,
) -> FfiResult {
    let needed = requests.iter().map(|r| probabilities(judge, r.task, r.mode)).collect::<FfiResult<Vec<_>>>()?;
    // SAFETY: this function's contract.
    let outputs = unsafe { Outputs::check(name, results, probs, capacity, &needed, &[]) }?;
    let batch = judge.judge_many(requests)?;
    // SAFETY: this function's contract.
    unsafe { outputs.write(&batch.results) };
    if let Some(info) = info {
        // SAFETY: this function's contract.
        unsafe {
            info.write(ur_judge_batch_info {
                struct_size: 0,
                reserved: 0,
                prefill_tokens: batch.prefill_tokens as u64,
                prefill_tokens_saved: batch.prefill_tokens_saved as u64,
                seconds: batch.seconds,
            })
        };
    }
    Ok(())
}

/// Loads the judge checkpoint in directory `dir` — LLaVA-OneVision, or a text-only Qwen2 (`model_type` "qwen2")
/// — with its `tokenizer.json`, chat template (the built-in Qwen2 one when it has none) and
/// `preprocessor_config.json` (transformers' defaults when absent), converted to `dtype` (float32, bfloat16 or
/// float16) on `device` (kDLCPU, or kDLCUDA with its ordinal), into `*out`. A missing, unreadable or unsupported
/// file is `UR_ERROR_CHECKPOINT` naming it. On failure `*out` is left unchanged.
///
/// # Safety
/// `ctx` comes from `ur_context_create`; `dir` is NULL or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ur_judge_load(
    ctx: *mut ur_context,
    dir: *const c_char,
    dtype: DLDataType,
    device: DLDevice,
    out: *mut *mut ur_judge,
) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe {
        context::check(ctx)?;
        let dir = text("dir", dir)?;
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let dtype = dtype_of("dtype", dtype)?;
        if !dtype.is_float() {
            return Err(Failure::invalid(format!(
                "`dtype` is {dtype}; a judge computes in float32, bfloat16 or float16"
            )));
        }
        let judge = Judge::load(Path::new(&dir), dtype, device_of("device", device)?)?;
        *out = Box::into_raw(Box::new(ur_judge { magic: MAGIC, judge, reasoning: Default::default() }));
        Ok(())
    })
}

/// Frees a judge. NULL is accepted and does nothing.
///
/// # Safety
/// `judge` is NULL or a pointer returned by `ur_judge_load`, not yet freed, and no call is using it.
#[no_mangle]
pub unsafe extern "C" fn ur_judge_free(judge: *mut ur_judge) {
    if judge.is_null() {
        return;
    }
    // A panic while dropping must not cross into C: the memory is then leaked instead.
    // The handle is gone after the call whatever happens, so no broken state can be observed after a panic.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: this function's contract: `judge` came from `Box::into_raw` in `ur_judge_load`.
        let mut judge = unsafe { Box::from_raw(judge) };
        judge.magic = 0;
    }));
}

/// The probabilities a judgment of `task` (`UR_TASK_*`) in `mode` (`UR_JUDGE_PAIRWISE` / `_POINTWISE`) writes
/// into `*out`: 3 pairwise, the scale's values pointwise (5, 10 or 101 with the built-in templates). Size `probs`
/// with it.
///
/// # Safety
/// `judge` comes from `ur_judge_load`; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ur_judge_num_probs(
    judge: *const ur_judge,
    task: i32,
    mode: i32,
    out: *mut usize,
) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe {
        let judge = handle(judge)?;
        let n = probabilities(judge, code("task", task, &TASKS)?, code("mode", mode, &MODES)?)?;
        super::model::write("out", out, n)
    })
}

/// Which of candidates `a` and `b` is better for `task` (`UR_TASK_*`), or a tie, judged in one pass from both
/// orders against `context` (NULL: empty): generation tasks judge images or videos (`UR_JUDGE_IMAGE` /
/// `UR_JUDGE_VIDEO` files, `UR_JUDGE_IMAGE_PIXELS` / `UR_JUDGE_VIDEO_PIXELS` pixels) against a `caption` field,
/// understanding tasks `UR_JUDGE_TEXT` responses to a `question` about the context's image or video. Writes
/// `[A better, B better, tie]` to `probs` (room for `probs_capacity` floats, at least 3) and the verdict to
/// `*result`. Everything (the arguments, the fields the task's template needs, the media) is checked before
/// anything is written. Synchronises.
///
/// # Safety
/// `ctx` comes from `ur_context_create`, `judge` from `ur_judge_load`; `context` is NULL or a readable
/// `ur_judge_context`; `a` and `b` are NULL or readable items; strings are NUL-terminated; a pixel item's `value`
/// is a readable `ur_judge_pixels` whose `data` holds its bytes; `probs` holds
/// `probs_capacity` writable floats; `result` is NULL (an error) or points to `result->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn ur_judge_pairwise(
    ctx: *mut ur_context,
    judge: *const ur_judge,
    task: i32,
    context: *const ur_judge_context,
    a: *const ur_judge_item,
    b: *const ur_judge_item,
    probs: *mut f32,
    probs_capacity: usize,
    result: *mut ur_judge_result,
) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe {
        context::check(ctx)?;
        let judge = handle(judge)?;
        let task = code("task", task, &TASKS)?;
        let sampled = sampled_frames(judge, task, Mode::Pairwise)?;
        let context = read_context("context", context, sampled)?;
        let a = candidate("a", a.as_ref().ok_or_else(|| Failure::null("a"))?, sampled)?;
        let b = candidate("b", b.as_ref().ok_or_else(|| Failure::null("b"))?, sampled)?;
        let request = JudgeRequest { task, mode: Mode::Pairwise, context, candidates: vec![a, b] };
        run(judge, "result", &[request], probs, probs_capacity, result, None)
    })
}

/// The score of `candidate` for `task` (`UR_TASK_*`) on the task's scale, judged in one pass against `context`
/// (as for `ur_judge_pairwise`): the probability of each score value, lowest first, to `probs` (room for
/// `probs_capacity` floats: the scale's values, 101 at most for the built-in templates), the expected and the most
/// probable score to `*result`. Everything is checked before anything is written. Synchronises.
///
/// # Safety
/// As for `ur_judge_pairwise`, with `candidate` for `a` and `b`.
#[no_mangle]
pub unsafe extern "C" fn ur_judge_pointwise(
    ctx: *mut ur_context,
    judge: *const ur_judge,
    task: i32,
    context: *const ur_judge_context,
    candidate: *const ur_judge_item,
    probs: *mut f32,
    probs_capacity: usize,
    result: *mut ur_judge_result,
) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe {
        context::check(ctx)?;
        let judge = handle(judge)?;
        let task = code("task", task, &TASKS)?;
        let sampled = sampled_frames(judge, task, Mode::Pointwise)?;
        let context = read_context("context", context, sampled)?;
        let item = candidate.as_ref().ok_or_else(|| Failure::null("candidate"))?;
        let one = self::candidate("candidate", item, sampled)?;
        let request = JudgeRequest { task, mode: Mode::Pointwise, context, candidates: vec![one] };
        run(judge, "result", &[request], probs, probs_capacity, result, None)
    })
}

/// `num_requests` judgments in one batch (their prompts that see the same media share their prefill): request
/// `i`'s probabilities go to `probs[i * probs_capacity ...]` (`probs` holds `num_requests * probs_capacity`
/// floats; `probs_capacity` at least the most probabilities a request has), its result to `results[i]` (an array
/// whose items all have the first one's `struct_size`, the stride). `info` (NULL: not wanted) gets the batch's
/// prefill tokens, the tokens prefix sharing saved, and its time. Every request is checked before anything is
/// written. Synchronises.
///
/// # Safety
/// `ctx` comes from `ur_context_create`, `judge` from `ur_judge_load`; `requests` points to `num_requests`
/// requests of its first `struct_size` each, whose pointers are valid as for `ur_judge_pairwise`; `probs` holds
/// `num_requests * probs_capacity` writable floats; `results` points to `num_requests` writable results of its
/// first `struct_size` each; `info` is NULL or points to `info->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn ur_judge_many(
    ctx: *mut ur_context,
    judge: *const ur_judge,
    requests: *const ur_judge_request,
    num_requests: usize,
    probs: *mut f32,
    probs_capacity: usize,
    results: *mut ur_judge_result,
    info: *mut ur_judge_batch_info,
) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe {
        context::check(ctx)?;
        let judge = handle(judge)?;
        if num_requests == 0 {
            return Err(Failure::invalid("`num_requests` is 0: give at least one request"));
        }
        if requests.is_null() {
            return Err(Failure::null("requests"));
        }
        let first = *(requests as *const u32);
        let stride = caller_size::<ur_judge_request>(first, "initialise each request with ur_judge_request_default()")?;
        let mut checked = Vec::with_capacity(num_requests);
        for i in 0..num_requests {
            let item = (requests as *const u8).add(i * stride) as *const ur_judge_request;
            let size = *(item as *const u32);
            if size != first {
                return Err(Failure::invalid(format!(
                    "requests[{i}].struct_size is {size}, requests[0]'s {first}: every item of the array has the same size"
                )));
            }
            checked.push(read_request(judge, &format!("requests[{i}]"), item)?);
        }
        let info = HostOut::versioned("info", info)?;
        run(judge, "results", &checked, probs, probs_capacity, results, info)
    })
}
