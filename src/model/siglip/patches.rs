//! The patch embedding's convolution (kernel = stride = `p`) as a product over patches: the pixels `[N,C,H,W]` are
//! rearranged into rows of patches `[N, P, C·p·p]` (each row in the kernel's `(c, y, x)` order, patches row-major
//! over the grid) and multiplied by the kernel read as `[hidden, C·p·p]`. The rearrangement is a permutation done
//! on the host, once per pass in each direction (a few MB for a 384×384 image); pixels past the last whole patch
//! (384 = 27·14 + 6 for so400m) are not read, as `Conv2d` drops them, and get a zero gradient.

use crate::runtime::{DType, Device, Tensor};
use crate::Result;

/// The geometry of a batch of images cut into patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PatchGrid {
    pub n: usize,
    pub channels: usize,
    /// Height and width of the images.
    pub image: usize,
    pub patch: usize,
}

impl PatchGrid {
    fn side(&self) -> usize {
        self.image / self.patch
    }

    /// `[N, P, C·p·p]`.
    pub fn patches_shape(&self) -> [usize; 3] {
        [self.n, self.side() * self.side(), self.channels * self.patch * self.patch]
    }

    /// `[N, C, H, W]`.
    pub fn pixels_shape(&self) -> [usize; 4] {
        [self.n, self.channels, self.image, self.image]
    }

    /// Calls `f(pixel index, patch-row index)` for every pixel that a patch reads.
    fn for_each_pair(&self, mut f: impl FnMut(usize, usize)) {
        let (side, p, c, img) = (self.side(), self.patch, self.channels, self.image);
        let mut row = 0;
        for n in 0..self.n {
            for py in 0..side {
                for px in 0..side {
                    for ch in 0..c {
                        for y in 0..p {
                            let pixel_row = ((n * c + ch) * img + py * p + y) * img + px * p;
                            for x in 0..p {
                                f(pixel_row + x, row);
                                row += 1;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Rearranges `pixels` `[N,C,H,W]` (any float dtype, any device) into `out` `[N,P,C·p·p]` (its dtype and device).
pub(super) fn pixels_to_patches(grid: &PatchGrid, pixels: &Tensor, out: &mut Tensor) -> Result<()> {
    let src = pixels.to_f32_cow()?;
    let mut rows = vec![0f32; out.numel()];
    grid.for_each_pair(|pixel, row| rows[row] = src[pixel]);
    store(rows, out)
}

/// The inverse: `grad_patches` `[N,P,C·p·p]` scattered back into `grad_pixels` `[N,C,H,W]` (zeros where no patch
/// reads).
pub(super) fn patches_to_pixels(grid: &PatchGrid, grad_patches: &Tensor, grad_pixels: &mut Tensor) -> Result<()> {
    let src = grad_patches.to_f32_cow()?;
    let mut pixels = vec![0f32; grad_pixels.numel()];
    grid.for_each_pair(|pixel, row| pixels[pixel] = src[row]);
    store(pixels, grad_pixels)
}

/// f32 host values into `out`, in its dtype, on its device.
fn store(values: Vec<f32>, out: &mut Tensor) -> Result<()> {
    if out.dtype() == DType::F32 && out.device() == Device::Cpu {
        out.as_mut_slice::<f32>()?.copy_from_slice(&values);
        return Ok(());
    }
    out.copy_from(&Tensor::from_f32(&values, out.shape(), out.dtype(), out.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_follow_the_kernel_layout_and_round_trip() {
        // 2 images, 2 channels, 5×5 pixels in 2×2 patches: a 2×2 grid, the last row and column unread.
        let grid = PatchGrid { n: 2, channels: 2, image: 5, patch: 2 };
        let values: Vec<f32> = (0..100).map(|v| v as f32).collect();
        let pixels = Tensor::from_slice(&values, &grid.pixels_shape(), Device::Cpu).unwrap();
        let mut patches = Tensor::zeros(&grid.patches_shape(), DType::F32, Device::Cpu).unwrap();
        pixels_to_patches(&grid, &pixels, &mut patches).unwrap();
        let rows = patches.to_vec::<f32>().unwrap();
        // Image 1, patch (row 1, column 0), channel 1, kernel row 0: pixel [1, 1, 2, 0..2].
        let at = |n: usize, c: usize, y: usize, x: usize| (((n * 2 + c) * 5 + y) * 5 + x) as f32;
        let patch = &rows[(4 + 2) * 8..(4 + 3) * 8];
        assert_eq!(patch[4..6], [at(1, 1, 2, 0), at(1, 1, 2, 1)]);
        assert_eq!(patch[0..2], [at(1, 0, 2, 0), at(1, 0, 2, 1)]);
        let mut back = Tensor::zeros(&grid.pixels_shape(), DType::F32, Device::Cpu).unwrap();
        patches_to_pixels(&grid, &patches, &mut back).unwrap();
        for (i, (&b, &v)) in back.to_vec::<f32>().unwrap().iter().zip(&values).enumerate() {
            let (y, x) = ((i / 5) % 5, i % 5);
            assert_eq!(b, if y < 4 && x < 4 { v } else { 0.0 }, "pixel {i}");
        }
    }
}
