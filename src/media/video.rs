//! Videos as frames: a list of frame files, a folder of them, or an animated GIF, sampled uniformly to a requested
//! count the way UnifiedReward's and LLaVA-NeXT's video loaders do (`np.linspace(0, total - 1, count, dtype=int)`).

use std::path::{Path, PathBuf};

use super::decode::{decode_gif_frames, decode_image};
use super::rgb::RgbImage;
use crate::{Error, Result};

/// The most frames a video may have (files in a folder, or GIF frames are bounded by the decoder).
pub const MAX_VIDEO_FRAMES: usize = 100_000;
/// The most frames sampled from one video (UnifiedReward uses 8; LLaVA-OneVision at most 64).
pub const MAX_SAMPLED_FRAMES: usize = 1024;

/// The file names a folder of frames may hold (compared without case); other files in the folder are not frames.
const FRAME_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "gif"];

/// Where a video's frames come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VideoSource {
    /// Frame files in playing order (each file's first image).
    Frames(Vec<PathBuf>),
    /// An animated GIF.
    Gif(PathBuf),
}

impl VideoSource {
    /// A folder: its PNG, JPEG, WebP and GIF files (not hidden ones) in the byte order of their names, which is
    /// playing order for zero-padded numbering (`frame_0001.png`, ...). A file: an animated GIF.
    pub fn from_path(path: &Path) -> Result<VideoSource> {
        let metadata = std::fs::metadata(path).map_err(|e| video_error(path, &format!("cannot open: {e}")))?;
        if metadata.is_file() {
            return Ok(VideoSource::Gif(path.to_path_buf()));
        }
        if !metadata.is_dir() {
            return Err(video_error(path, "neither a folder of frames nor a file"));
        }
        let mut frames = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| video_error(path, &format!("cannot list: {e}")))? {
            let entry = entry.map_err(|e| video_error(path, &format!("cannot list: {e}")))?;
            let name = entry.file_name();
            let is_frame = !name.to_string_lossy().starts_with('.')
                && Path::new(&name)
                    .extension()
                    .is_some_and(|ext| FRAME_EXTENSIONS.iter().any(|known| ext.eq_ignore_ascii_case(known)));
            if is_frame {
                if frames.len() == MAX_VIDEO_FRAMES {
                    return Err(video_error(path, &format!("more than {MAX_VIDEO_FRAMES} frames")));
                }
                frames.push(entry.path());
            }
        }
        if frames.is_empty() {
            return Err(video_error(path, "the folder has no frames (PNG, JPEG, WebP or GIF files)"));
        }
        frames.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        Ok(VideoSource::Frames(frames))
    }
}

/// Frames sampled from a video.
#[derive(Clone, Debug)]
pub struct VideoFrames {
    pub frames: Vec<RgbImage>,
    /// The index of each sampled frame in the video.
    pub indices: Vec<usize>,
    /// How many frames the video has.
    pub total: usize,
}

/// `count` frame indices spread evenly from the first frame to the last: numpy's
/// `np.linspace(0, total - 1, count).astype(int)` (each `i · (total - 1) / (count - 1)` in f64, rounded down, the last
/// exactly `total - 1`). A video shorter than `count` repeats frames, as that expression does.
pub fn sample_frame_indices(total: usize, count: usize) -> Result<Vec<usize>> {
    if total == 0 {
        return Err(Error::InvalidArgument("a video needs at least one frame".into()));
    }
    if count == 0 || count > MAX_SAMPLED_FRAMES {
        return Err(Error::InvalidArgument(format!(
            "frames to sample is {count}; it must be 1 to {MAX_SAMPLED_FRAMES}"
        )));
    }
    if count == 1 {
        return Ok(vec![0]);
    }
    let step = (total - 1) as f64 / (count - 1) as f64;
    let mut indices: Vec<usize> = (0..count).map(|i| (i as f64 * step).floor() as usize).collect();
    indices[count - 1] = total - 1;
    Ok(indices)
}

/// `count` frames sampled from `source` (see [`sample_frame_indices`]); only the sampled frame files are decoded.
pub fn load_video(source: &VideoSource, count: usize) -> Result<VideoFrames> {
    match source {
        VideoSource::Frames(paths) => {
            let indices = sample_frame_indices(paths.len(), count)?;
            let frames = indices.iter().map(|&i| decode_image(&paths[i])).collect::<Result<Vec<_>>>()?;
            Ok(VideoFrames { frames, indices, total: paths.len() })
        }
        VideoSource::Gif(path) => {
            let mut indices = Vec::new();
            let (frames, total) = decode_gif_frames(path, |total| {
                indices = sample_frame_indices(total, count)?;
                Ok(indices.clone())
            })?;
            Ok(VideoFrames { frames, indices, total })
        }
    }
}

fn video_error(path: &Path, message: &str) -> Error {
    Error::InvalidArgument(format!("video {}: {message}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_matches_numpy_linspace() {
        // np.linspace(0, total - 1, count).astype(int), computed with numpy 2.4.
        assert_eq!(sample_frame_indices(100, 8).unwrap(), [0, 14, 28, 42, 56, 70, 84, 99]);
        assert_eq!(sample_frame_indices(8, 8).unwrap(), [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(sample_frame_indices(3, 8).unwrap(), [0, 0, 0, 0, 1, 1, 1, 2]);
        assert_eq!(sample_frame_indices(1, 4).unwrap(), [0, 0, 0, 0]);
        assert_eq!(sample_frame_indices(50, 1).unwrap(), [0]);
        assert_eq!(sample_frame_indices(1000, 7).unwrap(), [0, 166, 333, 499, 666, 832, 999]);
        assert_eq!(sample_frame_indices(37, 9).unwrap(), [0, 4, 9, 13, 18, 22, 27, 31, 36]);
        assert!(sample_frame_indices(0, 8).is_err());
        assert!(sample_frame_indices(10, 0).unwrap_err().to_string().contains("1 to 1024"));
    }
}
