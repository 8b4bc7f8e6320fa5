//! Image and video input against transformers' `LlavaOnevisionImageProcessor` and PIL (fixtures made by
//! tests/reference/media.py), and bad input.

use std::path::{Path, PathBuf};

use serde_json::Value;
use unireward::media::{
    decode_image, load_video, ImageLayout, ImageProcessor, ImageProcessorConfig, PassOrder, RgbImage, VideoSource,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/media")
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap()).unwrap()
}

fn processor(config: &str) -> ImageProcessor {
    ImageProcessor::new(ImageProcessorConfig::from_file(&fixtures().join(format!("{config}.json"))).unwrap()).unwrap()
}

/// The script's `pattern`: edges, gradients and pseudo-noise in integers.
fn pattern(width: usize, height: usize, phase: usize) -> RgbImage {
    let mut pixels = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            for c in 0..3 {
                let noise = ((x * 7919 + y * 104729 + c * 13) % 61) * 2;
                pixels.push(((x * x * 3 + y * 5 + c * 71 + x * y + phase * 37 + noise) % 256) as u8);
            }
        }
    }
    RgbImage::new(width, height, pixels).unwrap()
}

fn usizes(value: &Value) -> Vec<usize> {
    value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect()
}

fn read_f32(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixtures().join(name)).unwrap();
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// The largest difference from the case's expected values: all of them, or a strided sample and two weighted sums.
fn max_difference(case: &Value, actual: &[f32]) -> f64 {
    if let Some(file) = case["values"].as_str() {
        let expected = read_f32(file);
        assert_eq!(expected.len(), actual.len(), "{}", case["name"]);
        return expected.iter().zip(actual).map(|(e, a)| f64::from((e - a).abs())).fold(0.0, f64::max);
    }
    let digest = &case["digest"];
    let stride = digest["stride"].as_u64().unwrap() as usize;
    let sample: Vec<f64> = digest["sample"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(sample.len(), actual.len().div_ceil(stride), "{}", case["name"]);
    let worst =
        sample.iter().zip(actual.iter().step_by(stride)).map(|(e, &a)| (e - f64::from(a)).abs()).fold(0.0, f64::max);
    let (mut sum1, mut sum2) = (0.0f64, 0.0f64);
    for (i, &a) in actual.iter().enumerate() {
        sum1 += f64::from(a) * ((i * 7 + 3) % 97) as f64 / 97.0;
        sum2 += f64::from(a) * (((i * 13 + 5) % 89) as f64 / 89.0 - 0.5);
    }
    // One byte off anywhere moves a sum by at least 2/255 · 1/97 ≈ 8e-5 (or is in the sample); rounding of 10⁶
    // terms stays far below 1e-6.
    for (name, sum) in [("sum1", sum1), ("sum2", sum2)] {
        let error = (sum - digest[name].as_f64().unwrap()).abs();
        assert!(error < 1e-6, "{}: {name} off by {error}", case["name"]);
    }
    worst
}

/// Each case of `cases` preprocessed with its config under `order`: shapes, sizes and the largest difference from
/// transformers' values, which must be 0 (Pillow's resampling byte for byte, the float steps in the same precision
/// and order).
fn check_images(cases: &Value, order: PassOrder) {
    for case in cases.as_array().unwrap() {
        let (width, height) = (case["width"].as_u64().unwrap() as usize, case["height"].as_u64().unwrap() as usize);
        let layout = if case["layout"] == "anyres" { ImageLayout::Anyres } else { ImageLayout::Square };
        let mut config =
            ImageProcessorConfig::from_file(&fixtures().join(format!("{}.json", case["config"].as_str().unwrap())));
        config.as_mut().unwrap().pass_order = order;
        let processor = ImageProcessor::new(config.unwrap()).unwrap();
        let out = processor.preprocess(&pattern(width, height, 0), layout).unwrap();
        assert_eq!(out.pixel_values.shape(), usizes(&case["shape"]), "{}", case["name"]);
        assert_eq!(processor.output_shape((height, width), layout).unwrap().as_slice(), out.pixel_values.shape());
        let image_size = usizes(&case["image_size"]);
        assert_eq!(out.image_size, (image_size[0], image_size[1]), "{}", case["name"]);
        if let Some(grid) = out.grid {
            assert_eq!(1 + grid.rows * grid.cols, out.pixel_values.shape()[0], "{}", case["name"]);
        }
        let worst = max_difference(case, out.pixel_values.as_slice::<f32>().unwrap());
        assert_eq!(worst, 0.0, "{}: largest difference {worst}", case["name"]);
    }
}

#[test]
fn images_match_transformers_processor() {
    check_images(&expected()["images"], PassOrder::Pillow13);
}

#[test]
fn images_match_transformers_processor_with_pillow_12() {
    let pillow12: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("pillow12.json")).unwrap()).unwrap();
    check_images(&pillow12["images"], PassOrder::Pillow12);
    // These cases are there because the two orders give different bytes: Pillow 13's differ from Pillow 12's.
    for case in pillow12["images"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap().trim_start_matches("pillow12_");
        assert_ne!(read_f32(case["values"].as_str().unwrap()), read_f32(&format!("{name}.f32")), "{name}");
    }
}

#[test]
fn images_of_a_batch_are_padded_with_zero_patches() {
    let tiny = processor("tiny_bicubic");
    let images = [&pattern(1, 1, 0), &pattern(40, 40, 1)].map(|i| tiny.preprocess(i, ImageLayout::Anyres).unwrap());
    let batch = tiny.stack(&images).unwrap(); // 2 and 10 patches
    assert_eq!(batch.shape(), &[2, 10, 3, 16, 16]);
    let values = batch.as_slice::<f32>().unwrap();
    let (patch, image) = (3 * 16 * 16, 10 * 3 * 16 * 16);
    assert_eq!(&values[..2 * patch], images[0].pixel_values.as_slice::<f32>().unwrap());
    assert!(values[2 * patch..image].iter().all(|&v| v == 0.0));
    assert_eq!(&values[image..], images[1].pixel_values.as_slice::<f32>().unwrap());

    let config = ImageProcessorConfig::from_json(
        r#"{"size": 16, "image_grid_pinpoints": [[16, 16], [48, 48]], "do_pad": false}"#,
    );
    let unpadded = ImageProcessor::new(config.unwrap()).unwrap();
    let err = unpadded.stack(&images).unwrap_err().to_string();
    assert!(err.contains("needs `do_pad`"), "{err}");
    // Equal counts need no padding; pixel values of another tile size are refused.
    let squares = [&pattern(3, 3, 0), &pattern(5, 2, 0)].map(|i| unpadded.preprocess(i, ImageLayout::Square).unwrap());
    assert_eq!(unpadded.stack(&squares).unwrap().shape(), &[2, 1, 3, 16, 16]);
    let other = processor("onevision").preprocess(&pattern(3, 3, 0), ImageLayout::Square).unwrap();
    let err = unpadded.stack(&[other]).unwrap_err().to_string();
    assert!(err.contains("[patches, 3, 16, 16]"), "{err}");
}

#[test]
fn video_frames_match_the_per_frame_resize() {
    let expected = expected();
    let case = &expected["video"];
    let frames: Vec<RgbImage> = case["frames"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(phase, size)| {
            let size = usizes(size);
            pattern(size[0], size[1], phase)
        })
        .collect();
    let out = processor(case["config"].as_str().unwrap()).preprocess_frames(&frames).unwrap();
    assert_eq!(out.shape(), usizes(&case["shape"]));
    assert_eq!(max_difference(case, out.as_slice::<f32>().unwrap()), 0.0);
    assert!(processor("tiny_bicubic")
        .preprocess_frames::<RgbImage>(&[])
        .unwrap_err()
        .to_string()
        .contains("at least one frame"));
}

/// PIL's `convert("RGB")` of the file: width, height, bytes.
fn pil_rgb(entry: &Value) -> RgbImage {
    let pixels = entry["rgb"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
    RgbImage::new(entry["width"].as_u64().unwrap() as usize, entry["height"].as_u64().unwrap() as usize, pixels)
        .unwrap()
}

fn largest_byte_difference(a: &RgbImage, b: &RgbImage) -> u8 {
    assert_eq!((a.width(), a.height()), (b.width(), b.height()));
    a.pixels().iter().zip(b.pixels()).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
}

#[test]
fn decoding_matches_pil() {
    let expected = expected();
    // JPEG: PIL decodes with libjpeg-turbo, this library with zune-jpeg, whose inverse DCT (and, in colour, chroma
    // upsampling) round differently: up to 1 level in grey and 2 in colour here (measured). Lossy WebP (image-webp
    // against libwebp) and every lossless format match exactly.
    let lossy_bound = [("gray.jpg", 1u8), ("color.jpg", 2)];
    let mut failures = Vec::new();
    for (name, entry) in expected["decoded"].as_object().unwrap() {
        if name == "anim.gif" {
            continue;
        }
        let decoded = decode_image(&fixtures().join(name)).unwrap();
        let difference = largest_byte_difference(&decoded, &pil_rgb(entry));
        let bound = lossy_bound.iter().find(|(file, _)| file == name).map_or(0, |(_, bound)| *bound);
        println!("{name}: largest byte difference from PIL {difference}");
        if difference > bound {
            failures.push(format!("{name}: bytes differ from PIL's by up to {difference} (bound {bound})"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn animated_gif_is_a_video() {
    let expected = expected();
    let pil_frames = expected["decoded"]["anim.gif"].as_array().unwrap();
    let source = VideoSource::from_path(&fixtures().join("anim.gif")).unwrap();
    let video = load_video(&source, 3).unwrap();
    assert_eq!((video.total, video.indices.clone()), (pil_frames.len(), vec![0, 2, 4]));
    for (frame, &index) in video.frames.iter().zip(&video.indices) {
        assert_eq!(largest_byte_difference(frame, &pil_rgb(&pil_frames[index])), 0, "frame {index}");
    }
    // A still image's first frame is the GIF's first frame.
    assert_eq!(decode_image(&fixtures().join("anim.gif")).unwrap(), pil_rgb(&pil_frames[0]));
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("unireward-media-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn save_png(path: &Path, image: &RgbImage) {
    image::RgbImage::from_raw(image.width() as u32, image.height() as u32, image.pixels().to_vec())
        .unwrap()
        .save(path)
        .unwrap();
}

#[test]
fn folder_of_frames_in_name_order() {
    let dir = temp_dir("folder");
    // Frame k is pattern phase k; written out of order, with files that are not frames beside them.
    for k in [3usize, 0, 4, 1, 2] {
        save_png(&dir.join(format!("frame_{k:03}.png")), &pattern(6, 5, k));
    }
    save_png(&dir.join(".hidden.png"), &pattern(6, 5, 9));
    std::fs::write(dir.join("notes.txt"), "not a frame").unwrap();
    let video = load_video(&VideoSource::from_path(&dir).unwrap(), 3).unwrap();
    assert_eq!((video.total, video.indices.clone()), (5, vec![0, 2, 4]));
    for (frame, &k) in video.frames.iter().zip(&video.indices) {
        assert_eq!(frame, &pattern(6, 5, k));
    }
    let empty = temp_dir("empty");
    let err = VideoSource::from_path(&empty).unwrap_err().to_string();
    assert!(err.contains("no frames") && err.contains(&*empty.to_string_lossy()), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
}

/// A PNG declaring `width x height` (8-bit RGB): the signature, a valid IHDR chunk and an empty IDAT chunk, so that
/// the header reads and only the pixels are missing.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for chunk in [ihdr, b"IDAT".to_vec()] {
        png.extend((chunk.len() as u32 - 4).to_be_bytes());
        png.extend(&chunk);
        png.extend(crc32(&chunk).to_be_bytes());
    }
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn bad_files_are_clear_errors_naming_the_file() {
    let dir = temp_dir("bad");
    let palette = std::fs::read(fixtures().join("palette.png")).unwrap();
    let cases: [(&str, Vec<u8>, &str); 6] = [
        ("truncated.png", palette[..palette.len() / 2].to_vec(), "unexpected end of file"),
        ("zero.png", png_header(0, 5), "dimensions"),
        ("huge.png", png_header(100_000, 20), "100000x20, larger than this library accepts"),
        ("text.png", b"just some text".to_vec(), "unknown image format"),
        ("picture.bmp", b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0".to_vec(), "Bmp images are not supported"),
        ("empty.jpg", Vec::new(), "unknown image format"),
    ];
    for (name, bytes, message) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = decode_image(&path).unwrap_err().to_string();
        assert!(err.contains(&*path.to_string_lossy()) && err.contains(message), "{name}: {err}");
    }
    for (path, message) in [(dir.clone(), "not a regular file"), (dir.join("missing.png"), "cannot open")] {
        let err = decode_image(&path).unwrap_err().to_string();
        assert!(err.contains(message) && err.contains(&*path.to_string_lossy()), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn caller_pixels_are_checked() {
    let err = RgbImage::new(4, 3, vec![0; 35]).unwrap_err().to_string();
    assert!(err.contains("needs 36 bytes"), "{err}");
    let err = RgbImage::new(0, 3, Vec::new()).unwrap_err().to_string();
    assert!(err.contains("zero size"), "{err}");
    let err = RgbImage::new(40_000, 1, vec![0; 120_000]).unwrap_err().to_string();
    assert!(err.contains("larger than this library accepts"), "{err}");
    // Debug names the size, never the pixels (errors and logs stay short).
    assert_eq!(format!("{:?}", RgbImage::new(4, 3, vec![7; 36]).unwrap()), "RgbImage(4x3)");
}

/// The float32 values of an .npy file the CLI wrote, with its shape.
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'") && (10 + header_len) % 64 == 0, "{header}");
    let shape = header.split('(').nth(1).unwrap().split(')').next().unwrap();
    let shape = shape.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
    let values = bytes[10 + header_len..].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    (shape, values)
}

#[test]
fn cli_preprocess_writes_the_library_output() {
    let dir = temp_dir("cli");
    let config = fixtures().join("tiny_bicubic.json");
    let image = fixtures().join("rgba.png");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_unireward"))
        .args(["preprocess", "--json", "--frames", "2", "--config"])
        .arg(&config)
        .arg("--image")
        .arg(&image)
        .arg("--video")
        .arg(fixtures().join("anim.gif"))
        .arg("--save")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary[0]["image_size"], serde_json::json!([7, 10]));
    assert_eq!(summary[1]["frame_indices"], serde_json::json!([0, 4]));

    let processor = processor("tiny_bicubic");
    let expected = processor.preprocess(&decode_image(&image).unwrap(), ImageLayout::Anyres).unwrap();
    let (shape, values) = read_npy(&dir.join("rgba.npy"));
    assert_eq!(
        (shape.as_slice(), values.as_slice()),
        (expected.pixel_values.shape(), expected.pixel_values.as_slice::<f32>().unwrap())
    );
    let video = load_video(&VideoSource::from_path(&fixtures().join("anim.gif")).unwrap(), 2).unwrap();
    let expected = processor.preprocess_frames(&video.frames).unwrap();
    let (shape, values) = read_npy(&dir.join("anim.npy"));
    assert_eq!((shape.as_slice(), values.as_slice()), (expected.shape(), expected.as_slice::<f32>().unwrap()));

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_unireward"))
        .args(["preprocess", "--image"])
        .arg(dir.join("missing.png"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("missing.png") && stderr.lines().count() == 1, "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
