//! [`MediaFile`]: an image or video the judge sees, as a file it decodes or as pixels the caller decoded.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::media::{decode_image, load_video, sample_frame_indices, RgbImage, VideoSource, MAX_VIDEO_FRAMES};
use crate::{Error, Result};

/// An image or video: a file, or 8-bit RGB pixels already in memory ([`RgbImage`]: `[height, width, 3]` bytes).
/// Pixels in memory are preprocessed exactly as a decoded file's: the same pixels give the same judgment, bit for
/// bit. They sit behind an `Arc`, so that cloning a request copies no pixels; equal pixels compare equal, so prompts
/// that see the same pixels share their prefill as prompts seeing the same file do. `Debug` and `Display` name
/// in-memory media by their size (`image 640x480 (in memory)`), never by their bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MediaFile {
    /// An image file (PNG, JPEG, WebP or GIF).
    Image(PathBuf),
    /// A video: a folder of frame images or an animated GIF.
    Video(PathBuf),
    /// An image's pixels.
    ImagePixels(Arc<RgbImage>),
    /// A video's frames in playing order (1 to [`MAX_VIDEO_FRAMES`]), sampled evenly to the template's frame count
    /// as a video file's are.
    VideoFrames(Arc<[RgbImage]>),
}

impl MediaFile {
    /// Whether this is a video (a file or frames).
    pub fn is_video(&self) -> bool {
        matches!(self, MediaFile::Video(_) | MediaFile::VideoFrames(_))
    }

    /// What can be refused before decoding anything: a file that does not exist, a video with no frames or more
    /// than [`MAX_VIDEO_FRAMES`].
    pub fn check(&self) -> Result<()> {
        match self {
            MediaFile::Image(path) | MediaFile::Video(path) if !path.exists() => {
                Err(Error::InvalidArgument(format!("media file {} does not exist", path.display())))
            }
            MediaFile::VideoFrames(frames) if frames.is_empty() || frames.len() > MAX_VIDEO_FRAMES => {
                Err(Error::InvalidArgument(format!("{self}: a video in memory takes 1 to {MAX_VIDEO_FRAMES} frames")))
            }
            _ => Ok(()),
        }
    }

    /// The RGB images this stands for: an image's own, or `frames` frames sampled evenly from a video (see
    /// [`sample_frame_indices`]). Pixels in memory are borrowed, files decoded.
    pub fn rgb_frames(&self, frames: usize) -> Result<Vec<Cow<'_, RgbImage>>> {
        self.check()?;
        Ok(match self {
            MediaFile::Image(path) => vec![Cow::Owned(decode_image(path)?)],
            MediaFile::Video(path) => {
                load_video(&VideoSource::from_path(path)?, frames)?.frames.into_iter().map(Cow::Owned).collect()
            }
            MediaFile::ImagePixels(image) => vec![Cow::Borrowed(&**image)],
            MediaFile::VideoFrames(all) => {
                sample_frame_indices(all.len(), frames)?.into_iter().map(|i| Cow::Borrowed(&all[i])).collect()
            }
        })
    }
}

/// A file's path; pixels in memory by their size.
impl fmt::Display for MediaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MediaFile::Image(path) | MediaFile::Video(path) => write!(f, "{}", path.display()),
            MediaFile::ImagePixels(image) => write!(f, "image {}x{} (in memory)", image.width(), image.height()),
            MediaFile::VideoFrames(frames) => match frames.first() {
                Some(first) => {
                    write!(f, "video of {} frames of {}x{} (in memory)", frames.len(), first.width(), first.height())
                }
                None => write!(f, "video of 0 frames (in memory)"),
            },
        }
    }
}

/// As derived for files (`Image("a.png")`); pixels in memory as [`Display`](fmt::Display) names them.
impl fmt::Debug for MediaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MediaFile::Image(path) => f.debug_tuple("Image").field(path).finish(),
            MediaFile::Video(path) => f.debug_tuple("Video").field(path).finish(),
            MediaFile::ImagePixels(_) | MediaFile::VideoFrames(_) => write!(f, "{self}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: usize, height: usize, shift: usize) -> RgbImage {
        let pixels = (0..width * height * 3).map(|i| ((i * 7 + shift) % 256) as u8).collect();
        RgbImage::new(width, height, pixels).unwrap()
    }

    #[test]
    fn in_memory_media_are_named_by_size_never_by_bytes() {
        let image = MediaFile::ImagePixels(Arc::new(gradient(640, 480, 0)));
        assert_eq!(format!("{image:?}"), "image 640x480 (in memory)");
        assert_eq!(image.to_string(), "image 640x480 (in memory)");
        let video = MediaFile::VideoFrames(vec![gradient(4, 3, 0), gradient(4, 3, 1)].into());
        assert_eq!(format!("{video:?}"), "video of 2 frames of 4x3 (in memory)");
        assert_eq!(format!("{:?}", MediaFile::Image("a.png".into())), "Image(\"a.png\")");
        assert!(video.is_video() && !image.is_video() && MediaFile::Video("v".into()).is_video());
    }

    #[test]
    fn video_frames_are_sampled_as_a_files_are() {
        let frames: Vec<RgbImage> = (0..10).map(|k| gradient(5, 2, k)).collect();
        let video = MediaFile::VideoFrames(frames.clone().into());
        let sampled = video.rgb_frames(4).unwrap();
        let want = sample_frame_indices(10, 4).unwrap();
        assert_eq!(sampled.len(), 4);
        for (got, i) in sampled.iter().zip(want) {
            assert!(matches!(got, Cow::Borrowed(_)), "frames in memory are not copied");
            assert_eq!(**got, frames[i]);
        }
        let image = MediaFile::ImagePixels(Arc::new(frames[3].clone()));
        assert_eq!(*image.rgb_frames(8).unwrap()[0], frames[3]);
    }

    #[test]
    fn bad_media_are_refused_by_name() {
        let empty = MediaFile::VideoFrames(Vec::new().into());
        let e = empty.rgb_frames(8).unwrap_err().to_string();
        assert!(e.contains("video of 0 frames (in memory)") && e.contains("1 to 100000 frames"), "{e}");
        let many = MediaFile::VideoFrames(vec![gradient(1, 1, 0); MAX_VIDEO_FRAMES + 1].into());
        let e = many.check().unwrap_err().to_string();
        assert!(e.contains("video of 100001 frames of 1x1 (in memory)"), "{e}");
        let e = MediaFile::Image("/no/such.png".into()).check().unwrap_err().to_string();
        assert!(e.contains("/no/such.png does not exist"), "{e}");
        let video = MediaFile::VideoFrames(vec![gradient(2, 2, 0)].into());
        assert!(video.rgb_frames(0).unwrap_err().to_string().contains("frames to sample is 0"));
    }
}
