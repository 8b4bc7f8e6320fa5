//! `unireward generate --image PATH --video PATH` on a LLaVA-OneVision checkpoint: the media preprocessed with the
//! checkpoint's `preprocessor_config.json`, each `<image>` / `<video>` of the prompt expanded to as many placeholder
//! ids as the media's packed features have rows (what transformers' processor does), the media encoded once in the
//! prefill.

use std::time::Instant;

use anyhow::Context;
use unireward::judge::Tokenizer;
use unireward::media::{ImageLayout, ImageProcessor, Size};
use unireward::model::llava::{LlavaOnevisionModel, MediaInput};
use unireward::Tensor;

use crate::generate::{generation_config, load_options, prompt_text, report_output, warn_ignored, Args};

/// The prompt's markers, as LLaVA-OneVision's chat templates write them.
const IMAGE_MARKER: &str = "<image>";
const VIDEO_MARKER: &str = "<video>";

pub fn run(args: &Args, tokenizer: &Tokenizer) -> anyhow::Result<()> {
    let (model, report) = LlavaOnevisionModel::load_with(&args.model, args.dtype, args.device, &load_options(args))
        .with_context(|| format!("loading the model in {}", args.model.display()))?;
    warn_ignored(&report.ignored);
    let pixels = load_media(args)?;
    let media: Vec<MediaInput<'_>> = pixels
        .iter()
        .map(|(tensor, size)| match size {
            Some(size) => MediaInput::Image { pixel_values: tensor, size: *size },
            None => MediaInput::Video { frames: tensor },
        })
        .collect();
    let counts = model.placeholder_counts(&media)?;
    let (image_counts, video_counts) = counts.split_at(args.image.len());
    let user = with_markers(&args.prompt, args.image.len(), args.video.len())?;
    let placeholders = model.placeholders();
    let mut expansion = Expansion {
        tokenizer,
        ids: Vec::new(),
        images: image_counts.iter(),
        videos: video_counts.iter(),
        image_id: placeholders.image,
        video_id: placeholders.video,
    };
    expansion.push_text(&prompt_text(args, &user))?;
    let prompt = expansion.ids;
    let lm = &model.language_model;
    let cfg = generation_config(args, lm);
    let start = Instant::now();
    let tokens = model.generate(&prompt, &media, &cfg)?;
    report_output(args, tokenizer, lm, &prompt, &tokens, &cfg, start.elapsed().as_secs_f64())
}

/// Preprocessed pixels, with an image's size before preprocessing (`None` for a video's frames).
type Pixels = (Tensor, Option<Size>);

/// Every `--image` then every `--video`, preprocessed.
fn load_media(args: &Args) -> anyhow::Result<Vec<Pixels>> {
    if args.image.is_empty() && args.video.is_empty() {
        return Ok(Vec::new());
    }
    let processor = ImageProcessor::for_checkpoint(&args.model)?;
    // transformers: an image alone in its sample takes the anyres tiles; several are each padded to a square.
    let layout = if args.image.len() == 1 { ImageLayout::Anyres } else { ImageLayout::Square };
    let mut out = Vec::with_capacity(args.image.len() + args.video.len());
    for path in &args.image {
        let pixels = processor.preprocess_file(path, layout).with_context(|| format!("--image {}", path.display()))?;
        out.push((pixels.pixel_values, Some(pixels.image_size)));
    }
    for path in &args.video {
        let frames =
            processor.preprocess_video(path, args.frames).with_context(|| format!("--video {}", path.display()))?;
        out.push((frames, None));
    }
    Ok(out)
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

/// Prompt ids being built: text tokenized piece by piece, each marker replaced by its item's placeholders.
struct Expansion<'a, I: Iterator<Item = &'a usize>> {
    tokenizer: &'a Tokenizer,
    ids: Vec<i64>,
    images: I,
    videos: I,
    image_id: i64,
    video_id: i64,
}

impl<'a, I: Iterator<Item = &'a usize>> Expansion<'a, I> {
    /// Appends `text`, whose markers match the media (checked by [`with_markers`]).
    fn push_text(&mut self, text: &str) -> anyhow::Result<()> {
        let next_marker = [IMAGE_MARKER, VIDEO_MARKER]
            .into_iter()
            .filter_map(|marker| text.find(marker).map(|at| (at, marker)))
            .min();
        let Some((at, marker)) = next_marker else {
            return self.push_tokens(text);
        };
        self.push_tokens(&text[..at])?;
        let (count, id) = if marker == IMAGE_MARKER {
            (self.images.next(), self.image_id)
        } else {
            (self.videos.next(), self.video_id)
        };
        let count = count.context("more markers than media (a marker inside the system message?)")?;
        self.ids.extend(std::iter::repeat_n(id, *count));
        self.push_text(&text[at + marker.len()..])
    }

    fn push_tokens(&mut self, text: &str) -> anyhow::Result<()> {
        self.ids.extend(self.tokenizer.encode(text)?.into_iter().map(i64::from));
        Ok(())
    }
}
