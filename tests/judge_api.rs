//! The Judge API on a tiny LLaVA-OneVision checkpoint (tests/judge_checkpoint): the mechanics and equalities of
//! pairwise, pointwise, batched and reasoned judgments, and bad requests refused by name. (The one-pass numbers
//! themselves are checked against transformers in tests/judge_one_pass.rs.)

mod judge_checkpoint;

use std::sync::Arc;

use judge_checkpoint::{fixtures, image, judge_dir, VOCAB};
use unireward::judge::answer::Verdict;
use unireward::judge::{
    expand_media_markers, load_media, one_pass, AnswerClasses, AnswerGrammar, Candidate, Context, GenerationConfig,
    Judge, JudgeModel, JudgeRequest, MediaFile, MediaInput as TemplateMedia, MediaPixels, Mode, ScoreGrammar, Task,
    TaskTemplate,
};
use unireward::media::{decode_image, ImageProcessor, RgbImage, VideoSource};
use unireward::{DType, Device};

fn judge(name: &str) -> (judge_checkpoint::JudgeDir, Judge) {
    let dir = judge_dir(name);
    let judge = Judge::load(&dir.0, DType::F32, Device::Cpu).unwrap();
    (dir, judge)
}

fn img(name: &str) -> Candidate {
    Candidate::Media(MediaFile::Image(image(name)))
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-5
}

#[test]
fn pairwise_generation_is_mirrored_by_swapping_the_candidates() {
    let (_dir, judge) = judge("mirror");
    let context = Context::with_field("caption", "a red square");
    let ab = judge.pairwise(Task::ImageGeneration, &context, img("two_images_0.png"), img("two_images_1.png")).unwrap();
    let ba = judge.pairwise(Task::ImageGeneration, &context, img("two_images_1.png"), img("two_images_0.png")).unwrap();
    assert_eq!(ab.labels.len(), 3, "{:?}", ab.labels);
    assert!(close(ab.probs.iter().sum(), 1.0), "{:?}", ab.probs);
    let (pab, pba) = (ab.pair.as_ref().unwrap(), ba.pair.as_ref().unwrap());
    // Swapping the candidates swaps the orders: A's forward is B's swapped.
    for i in 0..3 {
        let j = [1, 0, 2][i];
        assert!(close(pab.forward[i], pba.swapped[j]), "{pab:?} vs {pba:?}");
        assert!(close(ab.probs[i], ba.probs[j]), "{:?} vs {:?}", ab.probs, ba.probs);
    }
    assert_eq!(pab.position_consistent, pba.position_consistent);
    let mirrored = match ab.verdict.unwrap() {
        Verdict::First => Verdict::Second,
        Verdict::Second => Verdict::First,
        Verdict::Tie => Verdict::Tie,
    };
    assert_eq!(ba.verdict.unwrap(), mirrored);
    assert!(ab.prompt_tokens > 0 && ab.score.is_none());
}

#[test]
fn pointwise_understanding_batch_shares_the_prefix_and_equals_each_alone() {
    let (_dir, judge) = judge("batch");
    let mut context = Context::with_field("question", "What color is the square?");
    context.media = vec![MediaFile::Image(image("anyres_0.png"))];
    let responses = ["It is red.", "Blue, I think.", "There is no square."];
    let requests: Vec<JudgeRequest> = responses
        .iter()
        .map(|r| JudgeRequest {
            task: Task::ImageUnderstanding,
            mode: Mode::Pointwise,
            context: context.clone(),
            candidates: vec![Candidate::Text(r.to_string())],
        })
        .collect();
    let batch = judge.judge_many(&requests).unwrap();
    assert_eq!(batch.results.len(), 3);
    let values = 101; // the scale 0..=100
                      // K prompts × the scale's values share one prefill: every sequence but one saves the shared prefix.
    assert!(batch.prefill_tokens_saved > (3 * values - 1) * 100, "{}", batch.prefill_tokens_saved);
    for (request, together) in requests.iter().zip(&batch.results) {
        let alone = judge.pointwise(request.task, &request.context, request.candidates[0].clone()).unwrap();
        assert_eq!(together.probs.len(), values);
        for (a, b) in together.probs.iter().zip(&alone.probs) {
            assert!((a - b).abs() <= 1e-5 * b.max(1e-3), "{a} vs {b}");
        }
        let score = together.score.unwrap();
        assert!((0.0..=100.0).contains(&score) && close(score, alone.score.unwrap()));
        let argmax = together.argmax_score.unwrap();
        let best = together.probs.iter().cloned().fold(f32::MIN, f32::max);
        assert_eq!(together.probs[argmax as usize], best);
        assert_eq!(together.prompt_tokens, alone.prompt_tokens);
    }
}

#[test]
fn video_pointwise_and_understanding_pairwise_judge() {
    let (_dir, judge) = judge("video");
    let video = Candidate::Media(MediaFile::Video(fixtures().join("llava/video")));
    let result = judge.pointwise(Task::VideoGeneration, &Context::with_field("caption", "a square"), video).unwrap();
    assert_eq!(result.probs.len(), 10);
    assert!((1.0..=10.0).contains(&result.score.unwrap()));
    let mut context = Context::with_field("question", "What moves?");
    context.media = vec![MediaFile::Image(image("downsampled_0.png"))];
    let pair = judge
        .pairwise(Task::ImageUnderstanding, &context, Candidate::Text("A".into()), Candidate::Text("B".into()))
        .unwrap();
    // No tie phrase for understanding: the tie probability is 0.
    assert_eq!(pair.labels.len(), 2);
    assert_eq!(pair.probs[2], 0.0);
    assert!(close(pair.probs[0] + pair.probs[1], 1.0));
}

#[test]
fn reasoned_judgment_reports_its_text_and_parse() {
    let (_dir, judge) = judge("reasoned");
    let request = JudgeRequest {
        task: Task::ImageGeneration,
        mode: Mode::Pointwise,
        context: Context::with_field("caption", "a red square"),
        candidates: vec![img("anyres_0.png")],
    };
    let cfg = GenerationConfig { max_new_tokens: 6, ..Default::default() };
    let result = judge.reasoned(&request, &cfg).unwrap();
    let reasoning = result.reasoning.as_ref().unwrap();
    assert!(reasoning.generated_tokens >= 1 && reasoning.generated_tokens <= 6);
    // What the parser makes of the text, never a silent 0.
    assert_eq!(
        reasoning.parsed,
        unireward::judge::answer::parse_answer(
            &reasoning.text,
            &unireward::judge::TaskTemplate::built_in(Task::ImageGeneration, Mode::Pointwise).unwrap().answer
        )
    );
    assert_eq!(result.probs.len(), 5);
    assert!(close(result.probs.iter().sum(), 1.0));
}

#[test]
fn a_reasoned_pair_from_both_orders_is_the_two_orders_reasoned_and_combined() {
    let (_dir, judge) = judge("reasoned_both");
    let mut context = Context::with_field("question", "What moves?");
    context.media = vec![MediaFile::Image(image("downsampled_0.png"))];
    let request = |first: &str, second: &str| JudgeRequest {
        task: Task::ImageUnderstanding,
        mode: Mode::Pairwise,
        context: context.clone(),
        candidates: vec![Candidate::Text(first.into()), Candidate::Text(second.into())],
    };
    // Sampled, so that the two orders generate different answers of several tokens.
    let cfg = GenerationConfig { max_new_tokens: 5, temperature: 2.0, seed: 3, ..Default::default() };
    let both = judge.reasoned_both_orders(&request("red", "a blue one"), &cfg).unwrap();
    let forward = judge.reasoned(&request("red", "a blue one"), &cfg).unwrap();
    let swapped = judge.reasoned(&request("a blue one", "red"), &cfg).unwrap();
    let pair = both.pair.expect("both orders");
    assert_eq!(both.reasoning, forward.reasoning, "the forward order's reasoning");
    // No tie phrase for understanding: each order has two classes.
    assert_eq!((forward.probs.len(), swapped.probs.len()), (2, 2));
    assert_eq!(pair.forward, [forward.probs[0], forward.probs[1], 0.0]);
    assert_eq!(pair.swapped, [swapped.probs[1], swapped.probs[0], 0.0]);
    for i in 0..3 {
        assert_eq!(pair.debiased[i], 0.5 * (pair.forward[i] + pair.swapped[i]));
    }
    assert_eq!(both.probs, pair.debiased);
    let best = if pair.debiased[0] >= pair.debiased[1] { Verdict::First } else { Verdict::Second };
    assert_eq!(both.verdict, Some(best));

    let point =
        JudgeRequest { mode: Mode::Pointwise, candidates: vec![Candidate::Text("red".into())], ..request("a", "b") };
    let err = judge.reasoned_both_orders(&point, &cfg).unwrap_err().to_string();
    assert!(err.contains("pointwise judgment has one order"), "{err}");
}

#[test]
fn reasoned_verdict_is_scored_after_the_generated_tokens() {
    let (dir, mut judge) = judge("reasoned_tokens");
    // Generation between two letters that the tokenizer merges ("h" "e" → "he"): the answer's text encodes to
    // other ids than the model generated.
    let letters: Vec<u32> = ["h", "e"].map(|t| judge.tokenizer.token_to_id(t).unwrap()).to_vec();
    let suppress_tokens = (0..VOCAB as u32).filter(|id| !letters.contains(id)).collect();
    // Sampled, and flattened: the random model's greedy answer repeats one letter.
    let cfg = GenerationConfig { max_new_tokens: 16, temperature: 4.0, seed: 7, suppress_tokens, ..Default::default() };
    // The score prefix "e": the reasoning ends at the answer's last "e", inside the answer.
    let mut template = TaskTemplate::built_in(Task::ImageGeneration, Mode::Pointwise).unwrap();
    template.answer = AnswerGrammar::Score(ScoreGrammar { prefix: "e".into(), min: 1, max: 5 });
    judge.set_template(template.clone());
    let context = Context::with_field("caption", "a red square");
    let request = JudgeRequest {
        task: Task::ImageGeneration,
        mode: Mode::Pointwise,
        context: context.clone(),
        candidates: vec![img("anyres_0.png")],
    };
    let result = judge.reasoned(&request, &cfg).unwrap();
    let reasoning = result.reasoning.as_ref().unwrap();
    assert_eq!(reasoning.tokens.len(), 16);
    let end = reasoning.text.rfind('e').unwrap_or(0);
    assert!(end > 0 && end < reasoning.text.len(), "the answer {:?} has no 'e' past its start", reasoning.text);
    // One byte a token: the reasoning is the first `end` generated tokens.
    assert_eq!(reasoning.reasoning_tokens, end);
    let generated = &reasoning.tokens[..end];
    assert_ne!(judge.tokenizer.encode(&reasoning.text[..end]).unwrap(), generated, "re-encoding gives them back");

    // The prompt built here from the public pieces: the template, the image preprocessed, its placeholders.
    let processor = ImageProcessor::for_checkpoint_or_defaults(&dir.0).unwrap();
    let pixels = load_media(&processor, &[MediaFile::Image(image("anyres_0.png"))], 0).unwrap();
    let inputs: Vec<_> = pixels.iter().map(MediaPixels::input).collect();
    let JudgeModel::Llava(model) = &judge.model else { panic!("the test checkpoint is a LLaVA one") };
    let counts = model.placeholder_counts(&inputs).unwrap();
    let text = template.render_prompt(&judge.chat, &context.fields, TemplateMedia::Images(1)).unwrap();
    let mut ids = expand_media_markers(&judge.tokenizer, &text, model.placeholders(), &counts, &[]).unwrap();
    assert_eq!(ids.len(), result.prompt_tokens);
    ids.extend(generated.iter().map(|&id| i64::from(id)));
    let classes = AnswerClasses::for_grammar(&template.answer, &judge.tokenizer).unwrap();
    let (want, _) = one_pass(&judge.model, &[ids], &inputs, &classes).unwrap();
    assert_eq!(result.probs, want[0].probs);
}

#[test]
fn bad_requests_are_refused_by_name() {
    let (_dir, judge) = judge("bad");
    let err = |r: unireward::Result<unireward::judge::JudgeResult>| r.unwrap_err().to_string();
    let e = err(judge.pairwise(
        Task::ImageGeneration,
        &Context::default(),
        img("two_images_0.png"),
        img("two_images_1.png"),
    ));
    assert!(e.contains("caption"), "{e}");
    let missing = Candidate::Media(MediaFile::Image(image("no_such.png")));
    let e = err(judge.pointwise(Task::ImageGeneration, &Context::with_field("caption", "x"), missing));
    assert!(e.contains("no_such.png") && e.contains("does not exist"), "{e}");
    let mut two = Context::with_field("question", "q");
    two.media = vec![MediaFile::Image(image("two_images_0.png")), MediaFile::Image(image("two_images_1.png"))];
    let e = err(judge.pointwise(Task::ImageUnderstanding, &two, Candidate::Text("r".into())));
    assert!(e.contains("1 image(s), 2 given"), "{e}");
    let e =
        err(judge.pointwise(Task::ImageGeneration, &Context::with_field("caption", "x"), Candidate::Text("r".into())));
    assert!(e.contains("candidates[0]"), "{e}");
    let e = err(judge.pointwise(Task::VideoGeneration, &Context::with_field("caption", "x"), img("anyres_0.png")));
    assert!(e.contains("takes videos"), "{e}");
    let e = "image-gen".parse::<Task>().unwrap_err().to_string();
    assert!(e.contains("unknown task `image-gen`"), "{e}");
    let request = JudgeRequest {
        task: Task::ImageGeneration,
        mode: Mode::Pairwise,
        context: Context::with_field("caption", "x"),
        candidates: vec![img("anyres_0.png")],
    };
    let e = judge.judge_many(&[request]).unwrap_err().to_string();
    assert!(e.contains("`candidates`") && e.contains("takes 2, 1 given"), "{e}");
}

/// An image file's pixels, decoded here and given to the judge in memory.
fn decoded(name: &str) -> MediaFile {
    MediaFile::ImagePixels(Arc::new(decode_image(&image(name)).unwrap()))
}

fn bits(probs: &[f32]) -> Vec<u32> {
    probs.iter().map(|p| p.to_bits()).collect()
}

#[test]
fn media_in_memory_judge_bit_for_bit_as_their_files() {
    let (_dir, judge) = judge("in_memory");
    let caption = Context::with_field("caption", "a red square");
    // Two images of one prompt (square tiles each), as files and as pixels.
    let files = judge.pairwise(Task::ImageGeneration, &caption, img("two_images_0.png"), img("two_images_1.png"));
    let (a, b) = (Candidate::Media(decoded("two_images_0.png")), Candidate::Media(decoded("two_images_1.png")));
    let pixels = judge.pairwise(Task::ImageGeneration, &caption, a, b);
    let (files, pixels) = (files.unwrap(), pixels.unwrap());
    assert_eq!(bits(&files.probs), bits(&pixels.probs));
    assert_eq!((files.prompt_tokens, files.verdict), (pixels.prompt_tokens, pixels.verdict));

    // A context's image alone (anyres tiles), a file beside the same pixels in one batch.
    let mut question = Context::with_field("question", "What color is the square?");
    question.media = vec![MediaFile::Image(image("anyres_0.png"))];
    let mut in_memory = question.clone();
    in_memory.media = vec![decoded("anyres_0.png")];
    let request = |context: &Context| JudgeRequest {
        task: Task::ImageUnderstanding,
        mode: Mode::Pointwise,
        context: context.clone(),
        candidates: vec![Candidate::Text("It is red.".into())],
    };
    let batch = judge.judge_many(&[request(&question), request(&in_memory)]).unwrap();
    let (file, memory) = (&batch.results[0], &batch.results[1]);
    assert_eq!(bits(&file.probs), bits(&memory.probs));
    assert_eq!(file.score.unwrap().to_bits(), memory.score.unwrap().to_bits());
    assert_eq!(file.prompt_tokens, memory.prompt_tokens);

    // A video: every frame of the folder in memory, sampled by the judge as it samples the folder's files.
    let folder = fixtures().join("llava/video");
    let VideoSource::Frames(paths) = VideoSource::from_path(&folder).unwrap() else { panic!("a folder of frames") };
    let frames: Vec<RgbImage> = paths.iter().map(|p| decode_image(p).unwrap()).collect();
    let caption = Context::with_field("caption", "a square");
    let file = judge.pointwise(Task::VideoGeneration, &caption, Candidate::Media(MediaFile::Video(folder))).unwrap();
    let memory =
        judge.pointwise(Task::VideoGeneration, &caption, Candidate::Media(MediaFile::VideoFrames(frames.into())));
    assert_eq!(bits(&file.probs), bits(&memory.unwrap().probs));
}

#[test]
fn bad_media_in_memory_are_refused_by_name() {
    let (_dir, judge) = judge("bad_in_memory");
    let caption = Context::with_field("caption", "x");
    let err = |task: Task, media: MediaFile| {
        judge.pointwise(task, &caption, Candidate::Media(media)).unwrap_err().to_string()
    };
    let e = err(Task::VideoGeneration, MediaFile::VideoFrames(Vec::new().into()));
    assert!(e.contains("request 0: video of 0 frames (in memory)") && e.contains("1 to 100000 frames"), "{e}");
    let e = err(Task::VideoGeneration, decoded("anyres_0.png"));
    let size = decode_image(&image("anyres_0.png")).unwrap();
    assert!(e.contains(&format!("takes videos, got image {}x{} (in memory)", size.width(), size.height())), "{e}");
    let frame = RgbImage::filled(4, 3, [9, 9, 9]).unwrap();
    let e = err(Task::ImageGeneration, MediaFile::VideoFrames(vec![frame.clone(), frame].into()));
    assert!(e.contains("takes images, got video of 2 frames of 4x3 (in memory)"), "{e}");
    let request = JudgeRequest {
        task: Task::VideoGeneration,
        mode: Mode::Pointwise,
        context: caption.clone(),
        candidates: vec![Candidate::Media(MediaFile::VideoFrames(Vec::new().into()))],
    };
    assert!(judge.check(&request).unwrap_err().to_string().contains("video of 0 frames"));
    // The pixels' own checks are RgbImage's.
    assert!(RgbImage::new(0, 3, Vec::new()).unwrap_err().to_string().contains("zero size"));
    assert!(RgbImage::new(2, 2, vec![0; 11]).unwrap_err().to_string().contains("needs 12 bytes"));
}
