//! `unireward preprocess`: images and videos to the vision tower's pixel input (what transformers'
//! `LlavaOnevisionImageProcessor` makes of them), summarised as a table or JSON and optionally saved as `.npy` files
//! that numpy loads, to compare with Python or to feed a model.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use unireward::media::{
    decode_image, load_video, ImageLayout, ImageProcessor, ImageProcessorConfig, PassOrder, VideoSource,
};
use unireward::Tensor;

#[derive(clap::Args)]
pub struct Args {
    /// A checkpoint's preprocessor_config.json (default: transformers' LlavaOnevisionImageProcessor defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// An image file (PNG, JPEG, WebP, GIF); repeatable. One image takes the anyres tiles; several are taken as one
    /// sample's images, each padded to a square (as transformers does).
    #[arg(long)]
    image: Vec<PathBuf>,
    /// A video: a folder of frame images (in name order) or an animated GIF; repeatable.
    #[arg(long)]
    video: Vec<PathBuf>,
    /// Frames sampled from each video, evenly from the first to the last.
    #[arg(long, default_value_t = 8)]
    frames: usize,
    /// Write each input's pixel values to DIR/<input name>.npy (float32, [patches or frames, 3, H, W]).
    #[arg(long, value_name = "DIR")]
    save: Option<PathBuf>,
    /// Resize as Pillow 12 and older do (the horizontal pass always first) instead of Pillow 13.
    #[arg(long)]
    pillow_12: bool,
    /// Print the summary as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One preprocessed input, for the summary.
struct Summary {
    input: PathBuf,
    shape: Vec<usize>,
    /// Images: `(height, width)` before preprocessing; videos: none.
    image_size: Option<(usize, usize)>,
    /// Anyres images: the tile grid's rows and columns; videos: the sampled frame indices of the total.
    detail: serde_json::Value,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(!args.image.is_empty() || !args.video.is_empty(), "give at least one --image or --video");
    let mut config = match &args.config {
        Some(path) => ImageProcessorConfig::from_file(path)?,
        None => ImageProcessorConfig::default(),
    };
    if args.pillow_12 {
        config.pass_order = PassOrder::Pillow12;
    }
    let processor = ImageProcessor::new(config)?;
    let layout = if args.image.len() == 1 { ImageLayout::Anyres } else { ImageLayout::Square };
    let mut summaries = Vec::new();
    for path in &args.image {
        let pixels = processor.preprocess(&decode_image(path)?, layout)?;
        let detail = match pixels.grid {
            Some(grid) => serde_json::json!({"grid_rows": grid.rows, "grid_cols": grid.cols,
                "grid_resolution": [grid.resolution.0, grid.resolution.1]}),
            None => serde_json::json!({"layout": "square"}),
        };
        save(args, path, &pixels.pixel_values)?;
        summaries.push(Summary {
            input: path.clone(),
            shape: pixels.pixel_values.shape().to_vec(),
            image_size: Some(pixels.image_size),
            detail,
        });
    }
    for path in &args.video {
        let video = load_video(&VideoSource::from_path(path)?, args.frames)?;
        let pixel_values = processor.preprocess_frames(&video.frames)?;
        save(args, path, &pixel_values)?;
        summaries.push(Summary {
            input: path.clone(),
            shape: pixel_values.shape().to_vec(),
            image_size: None,
            detail: serde_json::json!({"frame_indices": video.indices, "total_frames": video.total}),
        });
    }
    print_summaries(&summaries, args.json)
}

fn print_summaries(summaries: &[Summary], json: bool) -> anyhow::Result<()> {
    if json {
        let items: Vec<serde_json::Value> = summaries
            .iter()
            .map(|s| {
                let mut item = s.detail.as_object().cloned().unwrap_or_default();
                item.insert("input".into(), serde_json::json!(s.input));
                item.insert("shape".into(), serde_json::json!(s.shape));
                item.insert("image_size".into(), serde_json::json!(s.image_size.map(|(h, w)| [h, w])));
                serde_json::Value::Object(item)
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    println!("{:<40} {:<22} {:<12} detail", "input", "pixel values", "size (h, w)");
    for s in summaries {
        let size = s.image_size.map_or("-".into(), |(h, w)| format!("{h} x {w}"));
        println!("{:<40} {:<22} {:<12} {}", s.input.display(), format!("{:?}", s.shape), size, s.detail);
    }
    Ok(())
}

/// `tensor` as DIR/<file stem>.npy when --save is given.
fn save(args: &Args, input: &Path, tensor: &Tensor) -> anyhow::Result<()> {
    let Some(dir) = &args.save else { return Ok(()) };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let stem = input.file_stem().map_or("input".into(), |s| s.to_string_lossy().into_owned());
    let path = dir.join(format!("{stem}.npy"));
    write_npy(&path, tensor).with_context(|| format!("cannot write {}", path.display()))
}

/// NPY format 1.0: magic, header length, a Python dict literal padded to 64 bytes, then little-endian float32s.
fn write_npy(path: &Path, tensor: &Tensor) -> anyhow::Result<()> {
    let shape: Vec<String> = tensor.shape().iter().map(usize::to_string).collect();
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}", shape.join(", "));
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    file.write_all(b"\x93NUMPY\x01\x00")?;
    file.write_all(&u16::try_from(header.len())?.to_le_bytes())?;
    file.write_all(header.as_bytes())?;
    for value in tensor.as_slice::<f32>()? {
        file.write_all(&value.to_le_bytes())?;
    }
    file.flush()?;
    Ok(())
}
