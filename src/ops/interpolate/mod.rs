//! Bilinear resizing of channels-last images `x` `[N, H, W, C]` to `[N, H₂, W₂, C]`, as
//! `torch.nn.functional.interpolate(x.permute(0, 3, 1, 2), size=(H₂, W₂), mode="bilinear", align_corners=False)`
//! (no antialias), down- or up-sampling. LLaVA-OneVision resizes grids of patch features with it: an anyres_max
//! image's unpadded grid when it holds too many patches, and each video frame's grid to ⌈H/2⌉ × ⌈W/2⌉. The vision
//! tower gives those features channels-last (C features per patch), which is why the op takes that layout: each tap
//! is a contiguous C-vector (coalesced on CUDA) and the model needs no transposes around it.
//!
//! Along an axis of `n_in → n_out`, output `o` samples the input at `s = max(scale·(o + ½) − ½, 0)` with
//! `scale = n_in / n_out`, between `i0 = ⌊s⌋` and `i1 = min(i0 + 1, n_in − 1)` with weights `1 − λ` and
//! `λ = s − i0`, all in f32 as PyTorch's float kernels (whose CPU and CUDA versions round `s` differently by an ulp
//! or two; every f32 version, this one included, is off the float64 result by up to about 5e-6 of the values'
//! scale at sizes near 80). An axis whose size does not change is left as it is. NaN follows PyTorch's CPU kernel:
//! both taps are read even at a zero weight, so a NaN reaches every output that reads it, but nothing along an
//! unchanged axis (PyTorch's CUDA kernel reads the next point there with weight 0, so NaN and inf spread one point
//! further). The backward gathers, for each input pixel, the outputs whose taps read it (a contiguous range along
//! each axis, since `i0` and `i1` grow with `o`): deterministic, no atomics. Arithmetic in f32 whatever the storage
//! dtype.

mod axis;
mod cpu;
mod cuda;

use crate::ops::check;
use crate::runtime::cuda::KernelModule;
use crate::runtime::{Device, Tensor};
use crate::{Error, Result};

pub const KERNELS: KernelModule = crate::kernel_module!("interpolate");

/// Validated sizes: `N`, `C`, the input's `[H, W]` and the output's `[H₂, W₂]`.
#[derive(Clone, Copy)]
struct Plan {
    n: usize,
    c: usize,
    input: [usize; 2],
    output: [usize; 2],
    device: Device,
}

impl Plan {
    fn input_shape(&self) -> [usize; 4] {
        [self.n, self.input[0], self.input[1], self.c]
    }

    fn output_shape(&self) -> [usize; 4] {
        [self.n, self.output[0], self.output[1], self.c]
    }
}

/// The largest element count of either side: the kernels index pixels with 32-bit integers, and a size asked for
/// by mistake (a width of 10⁹) is refused instead of allocated.
const MAX_ELEMENTS: usize = i32::MAX as usize;

/// `t` (`name`) is a non-empty float `[N, h, w, C]` (the input when `t_is_input`, else the output), and `other`
/// (`other_name`) the other side's `[h, w]`, at least 1 each.
fn plan(name: &'static str, t: &Tensor, other_name: &str, other: [usize; 2], t_is_input: bool) -> Result<Plan> {
    check::float(name, t)?;
    let &[n, h, w, c] = t.shape() else {
        return Err(Error::Shape(format!("`{name}` must be [N, H, W, C] (channels last), got shape {:?}", t.shape())));
    };
    if [n, h, w, c].contains(&0) {
        return Err(Error::Shape(format!("`{name}` is empty: shape {:?}", t.shape())));
    }
    if other.contains(&0) {
        return Err(Error::Shape(format!("`{other_name}` must be at least 1 in both dimensions, got {other:?}")));
    }
    let (input, output) = if t_is_input { ([h, w], other) } else { (other, [h, w]) };
    let device = check::same_device(&[(name, t)])?;
    let p = Plan { n, c, input, output, device };
    for (side, shape) in [("input", p.input_shape()), ("output", p.output_shape())] {
        let elements = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if elements.is_none_or(|e| e > MAX_ELEMENTS) {
            return Err(Error::Shape(format!(
                "the {side} {shape:?} has more than {MAX_ELEMENTS} elements, the most bilinear resizing supports"
            )));
        }
    }
    Ok(p)
}

/// `x` `[N, H, W, C]` resized to `[N, size[0], size[1], C]`, in `x`'s dtype.
pub fn bilinear(x: &Tensor, size: [usize; 2]) -> Result<Tensor> {
    let p = plan("x", x, "size", size, true)?;
    let mut out = Tensor::zeros(&p.output_shape(), x.dtype(), p.device)?;
    bilinear_into(x, size, &mut out)?;
    Ok(out)
}

/// [`bilinear`] into `out` (`[N, size[0], size[1], C]`, `x`'s dtype and device), overwritten whole; it must not
/// alias `x`.
pub fn bilinear_into(x: &Tensor, size: [usize; 2], out: &mut Tensor) -> Result<()> {
    let p = plan("x", x, "size", size, true)?;
    check::output("out", out, &p.output_shape(), x.dtype(), p.device)?;
    match p.device {
        Device::Cpu => cpu::forward(x, &p, out),
        Device::Cuda(_) => cuda::forward(x, &p, out),
    }
}

/// The gradient of `Σ grad_y · bilinear(x, [H₂, W₂])` with respect to `x` of spatial size `input_size` `[H, W]`:
/// `grad_y` `[N, H₂, W₂, C]` gives `[N, H, W, C]` in `grad_y`'s dtype (the op is linear: `x` itself is not needed).
pub fn bilinear_backward(grad_y: &Tensor, input_size: [usize; 2]) -> Result<Tensor> {
    let p = plan("grad_y", grad_y, "input_size", input_size, false)?;
    let mut grad_x = Tensor::zeros(&p.input_shape(), grad_y.dtype(), p.device)?;
    bilinear_backward_into(grad_y, input_size, &mut grad_x)?;
    Ok(grad_x)
}

/// [`bilinear_backward`] into `grad_x` (`[N, input_size[0], input_size[1], C]`, `grad_y`'s dtype and device),
/// overwritten whole; it must not alias `grad_y`.
pub fn bilinear_backward_into(grad_y: &Tensor, input_size: [usize; 2], grad_x: &mut Tensor) -> Result<()> {
    let p = plan("grad_y", grad_y, "input_size", input_size, false)?;
    check::output("grad_x", grad_x, &p.input_shape(), grad_y.dtype(), p.device)?;
    match p.device {
        Device::Cpu => cpu::backward(grad_y, &p, grad_x),
        Device::Cuda(_) => cuda::backward(grad_y, &p, grad_x),
    }
}
