//! `unireward generate --image PATH --video PATH` on a LLaVA-OneVision checkpoint: the media preprocessed with the
//! checkpoint's `preprocessor_config.json`, each `<image>` / `<video>` of the prompt expanded to as many placeholder
//! ids as the media's packed features have rows (the library's [`expand_media_markers`]), the media encoded once in
//! the prefill.

use std::time::Instant;

use anyhow::Context;
use unireward::judge::media_prompt::{image_layout, IMAGE_MARKER, VIDEO_MARKER};
use unireward::judge::{expand_media_markers, MediaFile, MediaPixels, Tokenizer};
use unireward::media::ImageProcessor;
use unireward::model::llava::{LlavaOnevisionModel, MediaInput};

use crate::generate::{generation_config, load_options, prompt_text, report_output, warn_ignored, Args};

pub fn run(args: &Args, tokenizer: &Tokenizer) -> anyhow::Result<()> {
    let (model, report) = LlavaOnevisionModel::load_with(&args.model, args.dtype, args.device, &load_options(args))
        .with_context(|| format!("loading the model in {}", args.model.display()))?;
    warn_ignored(&report.ignored);
    let pixels = load_media(args)?;
    let media: Vec<MediaInput<'_>> = pixels.iter().map(MediaPixels::input).collect();
    let counts = model.placeholder_counts(&media)?;
    let (image_counts, video_counts) = counts.split_at(args.image.len());
    let user = with_markers(&args.prompt, args.image.len(), args.video.len())?;
    let text = prompt_text(args, &user);
    let prompt = expand_media_markers(tokenizer, &text, model.placeholders(), image_counts, video_counts)?;
    let lm = &model.language_model;
    let cfg = generation_config(args, lm);
    let start = Instant::now();
    let tokens = model.generate(&prompt, &media, &cfg)?;
    report_output(args, tokenizer, lm, &prompt, &tokens, &cfg, start.elapsed().as_secs_f64())
}

/// Every `--image` then every `--video`, preprocessed.
fn load_media(args: &Args) -> anyhow::Result<Vec<MediaPixels>> {
    if args.image.is_empty() && args.video.is_empty() {
        return Ok(Vec::new());
    }
    let processor = ImageProcessor::for_checkpoint(&args.model)?;
    let layout = image_layout(args.image.len());
    let images = args.image.iter().map(|p| ("--image", MediaFile::Image(p.clone())));
    let videos = args.video.iter().map(|p| ("--video", MediaFile::Video(p.clone())));
    images
        .chain(videos)
        .map(|(flag, file)| {
            MediaPixels::load(&processor, &file, layout, args.frames).with_context(|| format!("{flag} {file}"))
        })
        .collect()
}

/// The user's text with one marker per image and video: as written when it has any marker (their counts must match
/// the media's), else the markers first, one a line (`<image>\n<video>\n...text`), as LLaVA's templates put them.
fn with_markers(prompt: &str, images: usize, videos: usize) -> anyhow::Result<String> {
    let (found_images, found_videos) = (prompt.matches(IMAGE_MARKER).count(), prompt.matches(VIDEO_MARKER).count());
    if found_images == 0 && found_videos == 0 {
        let markers = format!("{IMAGE_MARKER}\n").repeat(images) + &format!("{VIDEO_MARKER}\n").repeat(videos);
        return Ok(markers + prompt);
    }
    anyhow::ensure!(
        found_images == images && found_videos == videos,
        "the prompt has {found_images} {IMAGE_MARKER} and {found_videos} {VIDEO_MARKER}, but {images} --image and \
         {videos} --video were given: give one marker per image and video, or none to have them put first"
    );
    Ok(prompt.to_string())
}
