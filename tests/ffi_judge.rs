//! `ur_judge_*` called as C would call them, on the tiny LLaVA judge of tests/judge_checkpoint: pairwise, pointwise,
//! batched and reasoned judgments equal the Rust `Judge`'s, and so do judgments with a user's template; bad input is
//! a status and a message naming the C argument, with nothing written.

mod judge_checkpoint;

use std::ffi::{c_char, CStr, CString};
use std::ptr::{null, null_mut};

use judge_checkpoint::{image, judge_dir, parse_codes, VOCAB};
use unireward::ffi::*;
use unireward::judge::answer::Verdict;
use unireward::judge::{
    Candidate, Context, GenerationConfig, Judge, JudgeRequest, JudgeResult, MediaFile, Mode, Task, TaskTemplate,
    Variant,
};
use unireward::media::{decode_image, RgbImage};
use unireward::{DType, Device};

fn last_error() -> String {
    // SAFETY: never NULL, NUL-terminated, valid until the next failing call on this thread.
    unsafe { CStr::from_ptr(ur_last_error_message()) }.to_string_lossy().into_owned()
}

fn expect_status(status: ur_status, want: ur_status, fragment: &str) {
    assert_eq!(status, want, "{}", last_error());
    assert!(last_error().contains(fragment), "`{}` does not mention `{fragment}`", last_error());
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn item(kind: i32, value: &CString) -> ur_judge_item {
    ur_judge_item { kind, reserved: 0, value: value.as_ptr().cast() }
}

/// A context of one field (`names[0]` = `values[0]`) and no media.
fn one_field(names: &[*const c_char; 1], values: &[*const c_char; 1]) -> ur_judge_context {
    let mut context = ur_judge_context_default();
    context.field_names = names.as_ptr();
    context.field_values = values.as_ptr();
    context.num_fields = 1;
    context
}

const F32: DLDataType = DLDataType { code: 2, bits: 32, lanes: 1 };
const CPU: DLDevice = DLDevice { device_type: 1, device_id: 0 };

/// A fresh `ur_context`.
fn new_context() -> *mut ur_context {
    let mut ctx = null_mut();
    // SAFETY: a writable out-pointer.
    assert_eq!(unsafe { ur_context_create(&mut ctx) }, ur_status::UR_OK);
    ctx
}

/// The judge in `dir`, loaded through the C ABI in float32 on the CPU.
///
/// # Safety
/// `ctx` comes from `ur_context_create`.
unsafe fn load(ctx: *mut ur_context, dir: &CString) -> *mut ur_judge {
    let mut judge = null_mut();
    // SAFETY: this function's contract; `dir` is NUL-terminated.
    let status = unsafe { ur_judge_load(ctx, dir.as_ptr(), F32, CPU, &mut judge) };
    assert_eq!(status, ur_status::UR_OK, "{}", last_error());
    judge
}

fn fresh_result() -> ur_judge_result {
    // SAFETY: a plain-number struct: all zeros is a valid value.
    let mut r: ur_judge_result = unsafe { std::mem::zeroed() };
    r.struct_size = std::mem::size_of::<ur_judge_result>() as u32;
    r
}

/// The C result agrees with the Rust one: every probability within 1e-6, the verdict, scores and token count.
fn assert_same(probs: &[f32], result: &ur_judge_result, rust: &JudgeResult) {
    assert_eq!(result.num_probs as usize, rust.probs.len());
    for (c, r) in probs[..rust.probs.len()].iter().zip(&rust.probs) {
        assert!((c - r).abs() <= 1e-6, "{probs:?} vs {:?}", rust.probs);
    }
    let verdict = match rust.verdict {
        Some(Verdict::First) => UR_VERDICT_FIRST,
        Some(Verdict::Second) => UR_VERDICT_SECOND,
        Some(Verdict::Tie) => UR_VERDICT_TIE,
        None => UR_VERDICT_NONE,
    };
    assert_eq!(result.verdict, verdict);
    let same = |c: f32, r: Option<f32>| match r {
        Some(r) => (c - r).abs() <= 1e-5,
        None => c.is_nan(),
    };
    assert!(same(result.score, rust.score) && same(result.argmax_score, rust.argmax_score), "{result:?} vs {rust:?}");
    assert_eq!(result.position_consistent, rust.pair.as_ref().map_or(-1, |p| i32::from(p.position_consistent)));
    assert_eq!(result.prompt_tokens as usize, rust.prompt_tokens);
    assert!(result.seconds > 0.0);
}

#[test]
fn c_judgments_equal_the_rust_judge_and_bad_input_is_refused() {
    let dir = judge_dir("ffi");
    let rust = Judge::load(&dir.0, DType::F32, Device::Cpu).unwrap();
    let dir_c = c(dir.0.to_str().unwrap());
    let (img0, img1) = (image("two_images_0.png"), image("two_images_1.png"));
    let (img0_c, img1_c, scene_c) =
        (c(img0.to_str().unwrap()), c(img1.to_str().unwrap()), c(image("anyres_0.png").to_str().unwrap()));
    let (caption, caption_value, question, question_value) =
        (c("caption"), c("a red square"), c("question"), c("What color is the square?"));
    let responses = [c("It is red."), c("Blue, I think.")];
    let f32_cpu = (F32, CPU);

    let mut ctx = null_mut();
    // SAFETY (whole test): every pointer below is valid for the call (test-owned memory kept alive across it).
    unsafe {
        assert_eq!(ur_context_create(&mut ctx), ur_status::UR_OK);
        let mut judge: *mut ur_judge = null_mut();
        let bad_dtype = DLDataType { code: 0, bits: 32, lanes: 1 };
        expect_status(
            ur_judge_load(ctx, dir_c.as_ptr(), bad_dtype, f32_cpu.1, &mut judge),
            ur_status::UR_ERROR_INVALID_ARGUMENT,
            "`dtype`",
        );
        expect_status(
            ur_judge_load(ctx, null(), f32_cpu.0, f32_cpu.1, &mut judge),
            ur_status::UR_ERROR_NULL_POINTER,
            "`dir`",
        );
        let nowhere = c("/no/such/judge");
        expect_status(
            ur_judge_load(ctx, nowhere.as_ptr(), f32_cpu.0, f32_cpu.1, &mut judge),
            ur_status::UR_ERROR_CHECKPOINT,
            "/no/such/judge",
        );
        assert!(judge.is_null());
        assert_eq!(ur_judge_load(ctx, dir_c.as_ptr(), f32_cpu.0, f32_cpu.1, &mut judge), ur_status::UR_OK);

        let mut n = 0usize;
        for (task, mode, want) in [
            (UR_TASK_IMAGE_GENERATION, UR_JUDGE_PAIRWISE, 3),
            (UR_TASK_IMAGE_GENERATION, UR_JUDGE_POINTWISE, 5),
            (UR_TASK_IMAGE_UNDERSTANDING, UR_JUDGE_POINTWISE, 101),
            (UR_TASK_VIDEO_GENERATION, UR_JUDGE_POINTWISE, 10),
        ] {
            assert_eq!(ur_judge_num_probs(judge, task, mode, &mut n), ur_status::UR_OK, "{}", last_error());
            assert_eq!(n, want);
        }
        expect_status(ur_judge_num_probs(judge, 0, 2, &mut n), ur_status::UR_ERROR_INVALID_ARGUMENT, "`mode` is 2");
        expect_status(ur_judge_num_probs(judge, -1, 0, &mut n), ur_status::UR_ERROR_INVALID_ARGUMENT, "`task` is -1");
        expect_status(ur_judge_num_probs(judge, 0, 0, null_mut()), ur_status::UR_ERROR_NULL_POINTER, "`out`");

        // Pairwise image generation: A and B files against a caption.
        let names = [caption.as_ptr()];
        let values = [caption_value.as_ptr()];
        let gen_ctx = one_field(&names, &values);
        let (a, b) = (item(UR_JUDGE_IMAGE, &img0_c), item(UR_JUDGE_IMAGE, &img1_c));
        let mut probs = [0f32; 3];
        let mut result = fresh_result();
        let status = ur_judge_pairwise(
            ctx,
            judge,
            UR_TASK_IMAGE_GENERATION,
            &gen_ctx,
            &a,
            &b,
            probs.as_mut_ptr(),
            3,
            &mut result,
        );
        assert_eq!(status, ur_status::UR_OK, "{}", last_error());
        let context = Context::with_field("caption", "a red square");
        let image_candidate = |p: &std::path::Path| Candidate::Media(MediaFile::Image(p.to_path_buf()));
        let expected =
            rust.pairwise(Task::ImageGeneration, &context, image_candidate(&img0), image_candidate(&img1)).unwrap();
        assert_same(&probs, &result, &expected);

        // Pointwise image understanding: a response about the context's image, on the 0..=100 scale.
        let names_q = [question.as_ptr()];
        let values_q = [question_value.as_ptr()];
        let scene = [item(UR_JUDGE_IMAGE, &scene_c)];
        let mut und_ctx = one_field(&names_q, &values_q);
        und_ctx.media = scene.as_ptr();
        und_ctx.num_media = 1;
        let response = item(UR_JUDGE_TEXT, &responses[0]);
        let mut scale = [0f32; 101];
        let mut point = fresh_result();
        let status = ur_judge_pointwise(
            ctx,
            judge,
            UR_TASK_IMAGE_UNDERSTANDING,
            &und_ctx,
            &response,
            scale.as_mut_ptr(),
            101,
            &mut point,
        );
        assert_eq!(status, ur_status::UR_OK, "{}", last_error());
        let mut context_q = Context::with_field("question", "What color is the square?");
        context_q.media = vec![MediaFile::Image(image("anyres_0.png"))];
        let expected_point =
            rust.pointwise(Task::ImageUnderstanding, &context_q, Candidate::Text("It is red.".into())).unwrap();
        assert_same(&scale, &point, &expected_point);

        // A batch: the pointwise request, an understanding pair, the generation pair; a caller's longer structs
        // (stride = struct_size) work.
        let pair = [item(UR_JUDGE_TEXT, &responses[0]), item(UR_JUDGE_TEXT, &responses[1])];
        let mut requests = [ur_judge_request_default(); 3];
        requests[0].task = UR_TASK_IMAGE_UNDERSTANDING;
        requests[0].mode = UR_JUDGE_POINTWISE;
        requests[0].context = &und_ctx;
        requests[0].candidates = &response;
        requests[0].num_candidates = 1;
        requests[1].task = UR_TASK_IMAGE_UNDERSTANDING;
        requests[1].context = &und_ctx;
        requests[1].candidates = pair.as_ptr();
        requests[1].num_candidates = 2;
        let gen_pair = [a, b];
        requests[2].context = &gen_ctx;
        requests[2].candidates = gen_pair.as_ptr();
        requests[2].num_candidates = 2;
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Longer {
            r: ur_judge_result,
            newer: u64,
        }
        let mut results = [Longer { r: fresh_result(), newer: 7 }; 3];
        for r in &mut results {
            r.r.struct_size = std::mem::size_of::<Longer>() as u32;
        }
        let mut batch_probs = vec![f32::NAN; 3 * 101];
        let mut info: ur_judge_batch_info = std::mem::zeroed();
        info.struct_size = std::mem::size_of::<ur_judge_batch_info>() as u32;
        let status = ur_judge_many(
            ctx,
            judge,
            requests.as_ptr(),
            3,
            batch_probs.as_mut_ptr(),
            101,
            results.as_mut_ptr().cast(),
            &mut info,
        );
        assert_eq!(status, ur_status::UR_OK, "{}", last_error());
        assert_same(&batch_probs[..101], &results[0].r, &expected_point);
        let expected_und = rust
            .pairwise(
                Task::ImageUnderstanding,
                &context_q,
                Candidate::Text("It is red.".into()),
                Candidate::Text("Blue, I think.".into()),
            )
            .unwrap();
        assert_same(&batch_probs[101..202], &results[1].r, &expected_und);
        assert_same(&batch_probs[202..], &results[2].r, &expected);
        assert!(batch_probs[205..].iter().all(|p| p.is_nan()), "wrote past a request's probabilities");
        assert!(results.iter().all(|r| r.newer == 7), "wrote past the library's struct");
        assert!(info.prefill_tokens > 0 && info.prefill_tokens_saved > 0 && info.seconds > 0.0, "{info:?}");

        // Bad input: a status and a message naming the argument, nothing written.
        let mut untouched = fresh_result();
        let mut p3 = [-1f32; 3];
        let pairwise =
            |task: i32,
             context: *const ur_judge_context,
             a: *const ur_judge_item,
             b: *const ur_judge_item,
             probs: *mut f32,
             cap: usize,
             r: *mut ur_judge_result| { ur_judge_pairwise(ctx, judge, task, context, a, b, probs, cap, r) };
        let probs3 = p3.as_mut_ptr();
        let r = &mut untouched as *mut ur_judge_result;
        expect_status(pairwise(7, &gen_ctx, &a, &b, probs3, 3, r), ur_status::UR_ERROR_INVALID_ARGUMENT, "`task` is 7");
        expect_status(pairwise(0, null(), &a, &b, probs3, 3, r), ur_status::UR_ERROR_INVALID_ARGUMENT, "caption");
        let missing_c = c("/no/such/image.png");
        let missing = item(UR_JUDGE_IMAGE, &missing_c);
        expect_status(
            pairwise(0, &gen_ctx, &a, &missing, probs3, 3, r),
            ur_status::UR_ERROR_INVALID_ARGUMENT,
            "/no/such/image.png",
        );
        expect_status(
            pairwise(0, &gen_ctx, &a, &b, probs3, 2, r),
            ur_status::UR_ERROR_INVALID_ARGUMENT,
            "`probs_capacity` is 2",
        );
        expect_status(pairwise(0, &gen_ctx, &a, &b, null_mut(), 3, r), ur_status::UR_ERROR_NULL_POINTER, "`probs`");
        expect_status(pairwise(0, &gen_ctx, null(), &b, probs3, 3, r), ur_status::UR_ERROR_NULL_POINTER, "`a`");
        let inside_result = (r as *mut u8).add(8) as *mut f32;
        expect_status(
            pairwise(0, &gen_ctx, &a, &b, inside_result, 3, r),
            ur_status::UR_ERROR_INVALID_ARGUMENT,
            "overlaps",
        );
        expect_status(
            pairwise(0, &gen_ctx, &a, &b, probs3, 3, null_mut()),
            ur_status::UR_ERROR_NULL_POINTER,
            "`result`",
        );
        let bad_kind = ur_judge_item { kind: 9, ..a };
        expect_status(
            pairwise(0, &gen_ctx, &a, &bad_kind, probs3, 3, r),
            ur_status::UR_ERROR_INVALID_ARGUMENT,
            "`b.kind` is 9",
        );
        let null_value = ur_judge_item { value: null(), ..a };
        expect_status(
            pairwise(0, &gen_ctx, &null_value, &b, probs3, 3, r),
            ur_status::UR_ERROR_NULL_POINTER,
            "`a.value`",
        );
        let mut holey = gen_ctx;
        holey.field_values = null();
        expect_status(
            pairwise(0, &holey, &a, &b, probs3, 3, r),
            ur_status::UR_ERROR_NULL_POINTER,
            "`context->field_values`",
        );
        let mut short = gen_ctx;
        short.struct_size = 4;
        expect_status(
            pairwise(0, &short, &a, &b, probs3, 3, r),
            ur_status::UR_ERROR_INVALID_ARGUMENT,
            "`context->struct_size` is 4",
        );
        let mut small = fresh_result();
        small.struct_size = 8;
        expect_status(
            pairwise(0, &gen_ctx, &a, &b, probs3, 3, &mut small),
            ur_status::UR_ERROR_INVALID_ARGUMENT,
            "ur_judge_result.struct_size",
        );
        expect_status(
            ur_judge_pairwise(ctx, null(), 0, &gen_ctx, &a, &b, probs3, 3, r),
            ur_status::UR_ERROR_NULL_POINTER,
            "`judge`",
        );
        let mut small_scale = [0f32; 100];
        expect_status(
            ur_judge_pointwise(
                ctx,
                judge,
                UR_TASK_IMAGE_UNDERSTANDING,
                &und_ctx,
                &response,
                small_scale.as_mut_ptr(),
                100,
                r,
            ),
            ur_status::UR_ERROR_INVALID_ARGUMENT,
            "request 0 has 101 probabilities",
        );
        let mut text_media_ctx = und_ctx;
        let text_media = [item(UR_JUDGE_TEXT, &responses[0])];
        text_media_ctx.media = text_media.as_ptr();
        expect_status(
            ur_judge_pointwise(
                ctx,
                judge,
                UR_TASK_IMAGE_UNDERSTANDING,
                &text_media_ctx,
                &response,
                scale.as_mut_ptr(),
                101,
                r,
            ),
            ur_status::UR_ERROR_INVALID_ARGUMENT,
            "`context->media[0].kind` is UR_JUDGE_TEXT",
        );
        let mut bad = requests;
        bad[1].mode = 5;
        let results_ptr: *mut ur_judge_result = results.as_mut_ptr().cast();
        let scratch = batch_probs.as_mut_ptr();
        expect_status(
            ur_judge_many(ctx, judge, bad.as_ptr(), 3, scratch, 101, results_ptr, null_mut()),
            ur_status::UR_ERROR_INVALID_ARGUMENT,
            "`requests[1].mode` is 5",
        );
        bad = requests;
        bad[2].num_candidates = 1;
        expect_status(
            ur_judge_many(ctx, judge, bad.as_ptr(), 3, scratch, 101, results_ptr, null_mut()),
            ur_status::UR_ERROR_INVALID_ARGUMENT,
            "takes 2, 1 given",
        );
        bad = requests;
        bad[0].candidates = null();
        expect_status(
            ur_judge_many(ctx, judge, bad.as_ptr(), 3, scratch, 101, results_ptr, null_mut()),
            ur_status::UR_ERROR_NULL_POINTER,
            "`requests[0].candidates`",
        );
        expect_status(
            ur_judge_many(ctx, judge, requests.as_ptr(), 3, scratch, 3, results_ptr, null_mut()),
            ur_status::UR_ERROR_INVALID_ARGUMENT,
            "`probs_capacity` is 3, request 0 has 101",
        );
        expect_status(
            ur_judge_many(ctx, judge, requests.as_ptr(), 0, scratch, 101, results_ptr, null_mut()),
            ur_status::UR_ERROR_INVALID_ARGUMENT,
            "`num_requests` is 0",
        );
        results[2].r.struct_size = 8;
        expect_status(
            ur_judge_many(ctx, judge, requests.as_ptr(), 3, scratch, 101, results.as_mut_ptr().cast(), null_mut()),
            ur_status::UR_ERROR_INVALID_ARGUMENT,
            "`results[2].struct_size` is 8",
        );
        assert_eq!(p3, [-1.0; 3], "a failing call wrote probabilities");
        assert_eq!(untouched.num_probs, 0, "a failing call wrote a result");
        assert_eq!(small_scale, [0.0; 100]);

        ur_judge_free(judge);
        ur_judge_free(null_mut());
        ur_context_free(ctx);
    }
}

/// `ur_judge_pixels` over `bytes`, the pixels of `frames` (all of one size).
fn pixels_of(frames: &[RgbImage], bytes: &[u8]) -> ur_judge_pixels {
    let mut p = ur_judge_pixels_default();
    p.data = bytes.as_ptr();
    p.num_frames = frames.len() as u64;
    (p.height, p.width) = (frames[0].height() as u64, frames[0].width() as u64);
    p
}

fn pixel_item(kind: i32, pixels: &ur_judge_pixels) -> ur_judge_item {
    ur_judge_item { kind, reserved: 0, value: (pixels as *const ur_judge_pixels).cast() }
}

#[test]
fn c_pixels_judge_bit_for_bit_as_their_files_and_bad_pixels_are_refused() {
    let dir = judge_dir("ffi-pixels");
    let rust = Judge::load(&dir.0, DType::F32, Device::Cpu).unwrap();
    let dir_c = c(dir.0.to_str().unwrap());
    let (caption, caption_value) = (c("caption"), c("a red square"));
    let (img0, img1) = (image("two_images_0.png"), image("two_images_1.png"));
    let (img0_c, img1_c) = (c(img0.to_str().unwrap()), c(img1.to_str().unwrap()));
    let (rgb0, rgb1) = (decode_image(&img0).unwrap(), decode_image(&img1).unwrap());
    // Three frames of one size (a C caller's video is one block of bytes), each a different pattern.
    let frames: Vec<RgbImage> = (0..3)
        .map(|k| RgbImage::new(14, 10, (0..14 * 10 * 3).map(|i| ((i * 13 + k * 71) % 256) as u8).collect()).unwrap())
        .collect();
    let video_bytes: Vec<u8> = frames.iter().flat_map(|f| f.pixels().iter().copied()).collect();

    // SAFETY (whole test): every pointer below is valid for the call (test-owned memory kept alive across it).
    unsafe {
        let ctx = new_context();
        let judge = load(ctx, &dir_c);
        let names = [caption.as_ptr()];
        let values = [caption_value.as_ptr()];
        let gen_ctx = one_field(&names, &values);
        let pairwise = |a: &ur_judge_item, b: &ur_judge_item, probs: &mut [f32; 3], r: &mut ur_judge_result| {
            ur_judge_pairwise(ctx, judge, UR_TASK_IMAGE_GENERATION, &gen_ctx, a, b, probs.as_mut_ptr(), 3, r)
        };

        // Files, then the same pixels in memory: the same bits.
        let (mut from_files, mut from_pixels) = ([0f32; 3], [0f32; 3]);
        let (mut r_files, mut r_pixels) = (fresh_result(), fresh_result());
        let (a, b) = (item(UR_JUDGE_IMAGE, &img0_c), item(UR_JUDGE_IMAGE, &img1_c));
        assert_eq!(pairwise(&a, &b, &mut from_files, &mut r_files), ur_status::UR_OK, "{}", last_error());
        let one = std::slice::from_ref;
        let (p0, p1) = (pixels_of(one(&rgb0), rgb0.pixels()), pixels_of(one(&rgb1), rgb1.pixels()));
        let (a_px, b_px) = (pixel_item(UR_JUDGE_IMAGE_PIXELS, &p0), pixel_item(UR_JUDGE_IMAGE_PIXELS, &p1));
        assert_eq!(pairwise(&a_px, &b_px, &mut from_pixels, &mut r_pixels), ur_status::UR_OK, "{}", last_error());
        assert_eq!(from_files.map(f32::to_bits), from_pixels.map(f32::to_bits));
        assert_eq!((r_files.verdict, r_files.prompt_tokens), (r_pixels.verdict, r_pixels.prompt_tokens));

        // A video's frames in memory: the Rust judge's on the same frames.
        let video = pixels_of(&frames, &video_bytes);
        let mut scale = [0f32; 10];
        let mut point = fresh_result();
        let status = ur_judge_pointwise(
            ctx,
            judge,
            UR_TASK_VIDEO_GENERATION,
            &gen_ctx,
            &pixel_item(UR_JUDGE_VIDEO_PIXELS, &video),
            scale.as_mut_ptr(),
            10,
            &mut point,
        );
        assert_eq!(status, ur_status::UR_OK, "{}", last_error());
        let in_memory = Candidate::Media(MediaFile::VideoFrames(frames.clone().into()));
        let context = Context::with_field("caption", "a red square");
        let expected = rust.pointwise(Task::VideoGeneration, &context, in_memory).unwrap();
        assert_eq!(scale.map(f32::to_bits).to_vec(), expected.probs.iter().map(|p| p.to_bits()).collect::<Vec<_>>());
        // 21 frames, of which the template samples 8 (the only ones the call reads): the Rust judge's on all 21.
        let long: Vec<RgbImage> = (0..21)
            .map(|k| frames[k % 3].clone())
            .rev()
            .enumerate()
            .map(|(k, f)| {
                let shifted = f.pixels().iter().map(|&b| b.wrapping_add(k as u8 * 11)).collect();
                RgbImage::new(14, 10, shifted).unwrap()
            })
            .collect();
        let long_bytes: Vec<u8> = long.iter().flat_map(|f| f.pixels().iter().copied()).collect();
        let long_video = pixels_of(&long, &long_bytes);
        let status = ur_judge_pointwise(
            ctx,
            judge,
            UR_TASK_VIDEO_GENERATION,
            &gen_ctx,
            &pixel_item(UR_JUDGE_VIDEO_PIXELS, &long_video),
            scale.as_mut_ptr(),
            10,
            &mut point,
        );
        assert_eq!(status, ur_status::UR_OK, "{}", last_error());
        let all = Candidate::Media(MediaFile::VideoFrames(long.into()));
        let expected = rust.pointwise(Task::VideoGeneration, &context, all).unwrap();
        assert_eq!(scale.map(f32::to_bits).to_vec(), expected.probs.iter().map(|p| p.to_bits()).collect::<Vec<_>>());

        // Bad pixels: a status and a message naming the field, nothing written.
        let mut untouched = fresh_result();
        let mut p3 = [-1f32; 3];
        let mut refused = |b: ur_judge_item, want: ur_status, fragment: &str| {
            expect_status(pairwise(&a_px, &b, &mut p3, &mut untouched), want, fragment)
        };
        let invalid = ur_status::UR_ERROR_INVALID_ARGUMENT;
        for (change, fragment) in [
            ((|p: &mut ur_judge_pixels| p.num_frames = 2) as fn(&mut ur_judge_pixels), "`b.value->num_frames` is 2"),
            (|p| p.num_frames = 0, "`b.value->num_frames` is 0: an image (UR_JUDGE_IMAGE_PIXELS) takes 1 to 1"),
            (|p| p.height = 0, "`b.value->height` is 0: a frame takes 1 to 32768"),
            (|p| p.width = 40_000, "`b.value->width` is 40000"),
            (|p| p.struct_size = 4, "`b.value->struct_size` is 4"),
        ] {
            let mut bad = p1;
            change(&mut bad);
            refused(pixel_item(UR_JUDGE_IMAGE_PIXELS, &bad), invalid, fragment);
        }
        let mut no_data = p1;
        no_data.data = null();
        refused(pixel_item(UR_JUDGE_IMAGE_PIXELS, &no_data), ur_status::UR_ERROR_NULL_POINTER, "`b.value->data`");
        let null_value = ur_judge_item { kind: UR_JUDGE_IMAGE_PIXELS, reserved: 0, value: null() };
        refused(null_value, ur_status::UR_ERROR_NULL_POINTER, "`b.value`");
        let mut no_frames = video;
        no_frames.num_frames = 0;
        refused(
            pixel_item(UR_JUDGE_VIDEO_PIXELS, &no_frames),
            invalid,
            "a video (UR_JUDGE_VIDEO_PIXELS) takes 1 to 100000",
        );
        refused(pixel_item(UR_JUDGE_VIDEO_PIXELS, &video), invalid, "takes images, got video of 3 frames");
        assert_eq!(p3, [-1.0; 3], "a failing call wrote probabilities");
        assert_eq!(untouched.num_probs, 0, "a failing call wrote a result");

        ur_judge_free(judge);
        ur_context_free(ctx);
    }
}

fn size_of_u32<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

fn fresh_reasoning() -> ur_judge_reasoning {
    // SAFETY: numbers and NULL pointers: all zeros is a valid value.
    let mut r: ur_judge_reasoning = unsafe { std::mem::zeroed() };
    r.struct_size = std::mem::size_of::<ur_judge_reasoning>() as u32;
    r
}

/// The C reasoned judgment is the Rust one exactly: the same answer, parse, token counts and probabilities (bits).
fn assert_same_reasoned(probs: &[f32], result: &ur_judge_result, reasoning: &ur_judge_reasoning, rust: &JudgeResult) {
    let want = rust.reasoning.as_ref().unwrap();
    // SAFETY: the judge owns the text until its next reasoned call: `text_len` bytes, then a NUL.
    let text = unsafe { std::slice::from_raw_parts(reasoning.text.cast::<u8>(), reasoning.text_len as usize + 1) };
    assert_eq!(&text[..text.len() - 1], want.text.as_bytes());
    assert_eq!(text.last(), Some(&0));
    assert_eq!(
        (reasoning.generated_tokens as usize, reasoning.reasoning_tokens as usize),
        (want.generated_tokens, want.reasoning_tokens)
    );
    let (status, verdict, score) = parse_codes(&want.parsed);
    assert_eq!((reasoning.parse_status, reasoning.parsed_verdict), (status, verdict));
    assert_eq!(reasoning.parsed_score.to_bits(), score.to_bits());
    // SAFETY: as the text.
    let message = unsafe { CStr::from_ptr(reasoning.parse_error) }.to_str().unwrap();
    assert_eq!(message, want.parsed.as_ref().err().map_or(String::new(), ToString::to_string));
    assert_eq!(
        probs[..rust.probs.len()].iter().map(|p| p.to_bits()).collect::<Vec<_>>(),
        rust.probs.iter().map(|p| p.to_bits()).collect::<Vec<_>>()
    );
    assert_same(probs, result, rust);
}

/// A pairwise template for image understanding whose verdict phrases are single letters: a random model's sampled
/// answer states one of them.
fn letter_verdicts() -> String {
    let mut t: serde_json::Value = serde_json::from_str(
        TaskTemplate::built_in_file(Variant::Demo, Task::ImageUnderstanding, Mode::Pairwise).unwrap(),
    )
    .unwrap();
    t["answer"]["verdict"] = serde_json::json!({"first": ["e"], "second": ["a"], "tie": ["o"]});
    t.to_string()
}

#[test]
fn c_reasoned_judgments_equal_the_rust_judge_and_bad_options_are_refused() {
    let dir = judge_dir("ffi-reasoned");
    let mut rust = Judge::load(&dir.0, DType::F32, Device::Cpu).unwrap();
    let dir_c = c(dir.0.to_str().unwrap());
    let (caption, caption_value, question, question_value) =
        (c("caption"), c("a red square"), c("question"), c("What color is the square?"));
    let (scene, scene_c) = (image("anyres_0.png"), c(image("anyres_0.png").to_str().unwrap()));
    let responses = [c("It is red."), c("Blue, I think.")];
    // SAFETY (whole test): every pointer below is valid for the call (test-owned memory kept alive across it).
    unsafe {
        let ctx = new_context();
        let judge = load(ctx, &dir_c);

        // Pointwise image generation, greedy: a random model's answer has no "Final Score", reported as such.
        let names = [caption.as_ptr()];
        let values = [caption_value.as_ptr()];
        let gen_ctx = one_field(&names, &values);
        let candidate = item(UR_JUDGE_IMAGE, &scene_c);
        let mut request = ur_judge_request_default();
        request.mode = UR_JUDGE_POINTWISE;
        request.context = &gen_ctx;
        request.candidates = &candidate;
        request.num_candidates = 1;
        let mut cfg = ur_generation_config_default();
        cfg.max_new_tokens = 6;
        let (mut probs, mut result, mut reasoning) = ([0f32; 5], fresh_result(), fresh_reasoning());
        let status = ur_judge_reasoned(ctx, judge, &request, &cfg, probs.as_mut_ptr(), 5, &mut result, &mut reasoning);
        assert_eq!(status, ur_status::UR_OK, "{}", last_error());
        let point = JudgeRequest {
            task: Task::ImageGeneration,
            mode: Mode::Pointwise,
            context: Context::with_field("caption", "a red square"),
            candidates: vec![Candidate::Media(MediaFile::Image(scene.clone()))],
        };
        let expected = rust.reasoned(&point, &GenerationConfig { max_new_tokens: 6, ..Default::default() }).unwrap();
        assert_same_reasoned(&probs, &result, &reasoning, &expected);
        assert_eq!(reasoning.parse_status, UR_PARSE_UNPARSABLE);
        assert!(reasoning.parsed_score.is_nan());

        // Pairwise image understanding, sampled, with single-letter verdicts (a user's template) the answer states.
        let json = c(&letter_verdicts());
        let mut template = ur_judge_template_default();
        template.task = UR_TASK_IMAGE_UNDERSTANDING;
        template.json = json.as_ptr();
        assert_eq!(ur_judge_set_template(judge, &template), ur_status::UR_OK, "{}", last_error());
        rust.set_template(TaskTemplate::from_json(&letter_verdicts(), "letters").unwrap());
        let (names_q, values_q) = ([question.as_ptr()], [question_value.as_ptr()]);
        let media = [item(UR_JUDGE_IMAGE, &scene_c)];
        let mut und_ctx = one_field(&names_q, &values_q);
        und_ctx.media = media.as_ptr();
        und_ctx.num_media = 1;
        let pair = [item(UR_JUDGE_TEXT, &responses[0]), item(UR_JUDGE_TEXT, &responses[1])];
        let mut pair_request = ur_judge_request_default();
        pair_request.task = UR_TASK_IMAGE_UNDERSTANDING;
        pair_request.context = &und_ctx;
        pair_request.candidates = pair.as_ptr();
        pair_request.num_candidates = 2;
        (cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed) = (12, 1.5, 0.9, 3);
        let (mut p3, mut pair_result, mut pair_reasoning) = ([0f32; 3], fresh_result(), fresh_reasoning());
        let status = ur_judge_reasoned(
            ctx,
            judge,
            &pair_request,
            &cfg,
            p3.as_mut_ptr(),
            3,
            &mut pair_result,
            &mut pair_reasoning,
        );
        assert_eq!(status, ur_status::UR_OK, "{}", last_error());
        let mut context_q = Context::with_field("question", "What color is the square?");
        context_q.media = vec![MediaFile::Image(scene.clone())];
        let rust_pair = JudgeRequest {
            task: Task::ImageUnderstanding,
            mode: Mode::Pairwise,
            context: context_q,
            candidates: vec![Candidate::Text("It is red.".into()), Candidate::Text("Blue, I think.".into())],
        };
        let sampled =
            GenerationConfig { max_new_tokens: 12, temperature: 1.5, top_p: 0.9, seed: 3, ..Default::default() };
        let expected_pair = rust.reasoned(&rust_pair, &sampled).unwrap();
        assert_same_reasoned(&p3, &pair_result, &pair_reasoning, &expected_pair);
        assert_eq!(pair_reasoning.parse_status, UR_PARSE_OK, "the sampled answer states no letter verdict");
        assert!(pair_reasoning.parsed_verdict >= 0 && pair_result.position_consistent == -1);

        // Bad input: a status and a message naming the argument or field, nothing written.
        let (mut untouched, mut untouched_reasoning, mut p5) = (fresh_result(), fresh_reasoning(), [-1f32; 5]);
        let mut reasoned = |judge: *mut ur_judge,
                            request: *const ur_judge_request,
                            cfg: *const ur_generation_config,
                            capacity: usize,
                            result: *mut ur_judge_result,
                            reasoning: *mut ur_judge_reasoning| {
            ur_judge_reasoned(ctx, judge, request, cfg, p5.as_mut_ptr(), capacity, result, reasoning)
        };
        let (r, rr) = (&mut untouched as *mut ur_judge_result, &mut untouched_reasoning as *mut ur_judge_reasoning);
        let invalid = ur_status::UR_ERROR_INVALID_ARGUMENT;
        expect_status(reasoned(null_mut(), &request, &cfg, 5, r, rr), ur_status::UR_ERROR_NULL_POINTER, "`judge`");
        expect_status(reasoned(judge, null(), &cfg, 5, r, rr), ur_status::UR_ERROR_NULL_POINTER, "`request`");
        expect_status(
            reasoned(judge, &request, &cfg, 5, r, null_mut()),
            ur_status::UR_ERROR_NULL_POINTER,
            "`reasoning`",
        );
        expect_status(reasoned(judge, &request, &cfg, 5, null_mut(), rr), ur_status::UR_ERROR_NULL_POINTER, "`result`");
        expect_status(reasoned(judge, &request, &cfg, 4, r, rr), invalid, "`probs_capacity` is 4");
        let mut bad_request = request;
        bad_request.task = 8;
        expect_status(reasoned(judge, &bad_request, &cfg, 5, r, rr), invalid, "`request.task` is 8");
        bad_request = request;
        bad_request.struct_size = 4;
        expect_status(reasoned(judge, &bad_request, &cfg, 5, r, rr), invalid, "`request.struct_size` is 4");
        bad_request = request;
        bad_request.context = null();
        expect_status(reasoned(judge, &bad_request, &cfg, 5, r, rr), invalid, "caption");
        let missing_c = c("/no/such/image.png");
        let missing = item(UR_JUDGE_IMAGE, &missing_c);
        bad_request = request;
        bad_request.candidates = &missing;
        expect_status(reasoned(judge, &bad_request, &cfg, 5, r, rr), invalid, "/no/such/image.png");
        let stop = [VOCAB as i32];
        for (change, fragment) in [
            (
                (|c: &mut ur_generation_config| c.temperature = -1.0) as fn(&mut ur_generation_config),
                "`cfg->temperature`",
            ),
            (|c| c.temperature = f32::NAN, "`cfg->temperature`"),
            (|c| c.top_p = 0.0, "`cfg->top_p`"),
            (|c| c.top_p = 1.5, "`cfg->top_p`"),
            (|c| c.max_new_tokens = 0, "`cfg->max_new_tokens`"),
            (|c| c.struct_size = 4, "`cfg->struct_size` is 4"),
        ] {
            let mut bad = cfg;
            change(&mut bad);
            expect_status(reasoned(judge, &request, &bad, 5, r, rr), invalid, fragment);
        }
        let mut bad = cfg;
        (bad.stop_tokens, bad.num_stop_tokens) = (stop.as_ptr(), 1);
        expect_status(reasoned(judge, &request, &bad, 5, r, rr), invalid, "`cfg->stop_tokens` holds 365");
        bad.stop_tokens = null();
        expect_status(
            reasoned(judge, &request, &bad, 5, r, rr),
            ur_status::UR_ERROR_NULL_POINTER,
            "`cfg->stop_tokens`",
        );
        let mut small = fresh_reasoning();
        small.struct_size = 8;
        expect_status(reasoned(judge, &request, &cfg, 5, r, &mut small), invalid, "ur_judge_reasoning.struct_size");
        // A result and a reasoning 16 bytes into it.
        let mut block = [0u64; 16];
        let (in_result, in_reasoning) = (block.as_mut_ptr() as *mut u32, block.as_mut_ptr().add(2) as *mut u32);
        (*in_result, *in_reasoning) = (size_of_u32::<ur_judge_result>(), size_of_u32::<ur_judge_reasoning>());
        expect_status(reasoned(judge, &request, &cfg, 5, in_result.cast(), in_reasoning.cast()), invalid, "overlaps");
        assert_eq!(p5, [-1.0; 5], "a failing call wrote probabilities");
        assert_eq!((untouched.num_probs, untouched_reasoning.text_len), (0, 0), "a failing call wrote a result");
        assert!(untouched_reasoning.text.is_null());
        // The texts of the last successful call are still there.
        assert_same_reasoned(&p3, &pair_result, &pair_reasoning, &expected_pair);

        ur_judge_free(judge);
        ur_context_free(ctx);
    }
}

#[test]
fn c_templates_change_the_prompt_as_the_rust_override_does_and_bad_ones_are_refused() {
    let dir = judge_dir("ffi-template");
    let rust_default = Judge::load(&dir.0, DType::F32, Device::Cpu).unwrap();
    let mut rust = Judge::load(&dir.0, DType::F32, Device::Cpu).unwrap();
    // The demo's short instruction, on a 1..=10 scale.
    let mut mine: serde_json::Value = serde_json::from_str(
        TaskTemplate::built_in_file(Variant::Demo, Task::ImageGeneration, Mode::Pointwise).unwrap(),
    )
    .unwrap();
    mine["answer"]["score"]["max"] = 10.into();
    let path = dir.0.join("mine.json");
    std::fs::write(&path, mine.to_string()).unwrap();
    rust.set_template(TaskTemplate::from_file(&path).unwrap());
    let (dir_c, path_c, json_c) = (c(dir.0.to_str().unwrap()), c(path.to_str().unwrap()), c(&mine.to_string()));
    let (caption, caption_value) = (c("caption"), c("a red square"));
    let scene_c = c(image("anyres_0.png").to_str().unwrap());
    let context = Context::with_field("caption", "a red square");
    let scene = Candidate::Media(MediaFile::Image(image("anyres_0.png")));
    let expected = rust.pointwise(Task::ImageGeneration, &context, scene.clone()).unwrap();
    let built_in = rust_default.pointwise(Task::ImageGeneration, &context, scene).unwrap();
    assert_ne!(expected.prompt_tokens, built_in.prompt_tokens);
    // SAFETY (whole test): every pointer below is valid for the call (test-owned memory kept alive across it).
    unsafe {
        let ctx = new_context();
        let names = [caption.as_ptr()];
        let values = [caption_value.as_ptr()];
        let gen_ctx = one_field(&names, &values);
        let candidate = item(UR_JUDGE_IMAGE, &scene_c);
        let point = |judge: *mut ur_judge, want: &JudgeResult| {
            let (mut probs, mut result) = ([0f32; 10], fresh_result());
            let status = ur_judge_pointwise(
                ctx,
                judge,
                UR_TASK_IMAGE_GENERATION,
                &gen_ctx,
                &candidate,
                probs.as_mut_ptr(),
                10,
                &mut result,
            );
            assert_eq!(status, ur_status::UR_OK, "{}", last_error());
            assert_eq!(
                probs[..want.probs.len()].iter().map(|p| p.to_bits()).collect::<Vec<_>>(),
                want.probs.iter().map(|p| p.to_bits()).collect::<Vec<_>>()
            );
            assert_same(&probs, &result, want);
        };
        let mut template = ur_judge_template_default();
        template.mode = UR_JUDGE_POINTWISE;
        for (path, json) in [(path_c.as_ptr(), null()), (null(), json_c.as_ptr())] {
            let judge = load(ctx, &dir_c);
            point(judge, &built_in);
            let mut n = 0usize;
            assert_eq!(
                ur_judge_num_probs(judge, UR_TASK_IMAGE_GENERATION, UR_JUDGE_POINTWISE, &mut n),
                ur_status::UR_OK
            );
            assert_eq!(n, 5);
            (template.path, template.json) = (path, json);
            assert_eq!(ur_judge_set_template(judge, &template), ur_status::UR_OK, "{}", last_error());
            assert_eq!(
                ur_judge_num_probs(judge, UR_TASK_IMAGE_GENERATION, UR_JUDGE_POINTWISE, &mut n),
                ur_status::UR_OK
            );
            assert_eq!(n, 10);
            point(judge, &expected);

            // Bad templates: refused naming the field, the judge unchanged.
            let invalid = ur_status::UR_ERROR_INVALID_ARGUMENT;
            let unreadable = c("/no/such/template.json");
            let garbage = c("{\"task\": \"image_generation\"");
            let pairwise_c =
                c(TaskTemplate::built_in_file(Variant::Demo, Task::ImageGeneration, Mode::Pairwise).unwrap());
            let t = ur_judge_template { path: null(), json: null(), ..template };
            for (bad, status, fragment) in [
                (ur_judge_template { task: 9, path, json, ..t }, invalid, "`user_template->task` is 9"),
                (ur_judge_template { mode: -1, path, json, ..t }, invalid, "`user_template->mode` is -1"),
                (ur_judge_template { struct_size: 4, path, json, ..t }, invalid, "`user_template->struct_size` is 4"),
                (t, ur_status::UR_ERROR_NULL_POINTER, "`user_template->path` and `user_template->json` are both NULL"),
                (ur_judge_template { path: path_c.as_ptr(), json: json_c.as_ptr(), ..t }, invalid, "both set"),
                (ur_judge_template { path: unreadable.as_ptr(), ..t }, invalid, "/no/such/template.json"),
                (ur_judge_template { json: garbage.as_ptr(), ..t }, invalid, "`user_template->json`"),
                (
                    ur_judge_template { json: pairwise_c.as_ptr(), ..t },
                    invalid,
                    "say image_generation.pointwise, the template is image_generation.pairwise",
                ),
                (
                    ur_judge_template { task: UR_TASK_VIDEO_GENERATION, path, json, ..t },
                    invalid,
                    "say video_generation.pointwise",
                ),
            ] {
                expect_status(ur_judge_set_template(judge, &bad), status, fragment);
            }
            expect_status(ur_judge_set_template(judge, null()), ur_status::UR_ERROR_NULL_POINTER, "`user_template`");
            expect_status(ur_judge_set_template(null_mut(), &template), ur_status::UR_ERROR_NULL_POINTER, "`judge`");
            point(judge, &expected);
            ur_judge_free(judge);
        }
        ur_context_free(ctx);
    }
}
