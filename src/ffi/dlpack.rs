//! DLPack descriptors (`include/dlpack/dlpack.h`, mirrored `#[repr(C)]`), checked and wrapped as [`Tensor`]s over
//! the caller's memory without a copy, and the device scope an op runs in.

use std::ffi::c_void;

use bytemuck::NoUninit;

use super::status::{Failure, FfiResult};
use crate::runtime::cuda;
use crate::{DType, Device, Error, Tensor};

/// DLPack's `DLDevice`. `device_type` is read as a plain integer (a C enum), so any value is safe.
#[repr(C)]
#[derive(Clone, Copy, Debug, NoUninit)]
pub struct DLDevice {
    pub device_type: i32,
    pub device_id: i32,
}

/// DLPack's `DLDataType`.
#[repr(C)]
#[derive(Clone, Copy, Debug, NoUninit)]
pub struct DLDataType {
    pub code: u8,
    pub bits: u8,
    pub lanes: u16,
}

/// DLPack's `DLTensor`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DLTensor {
    pub data: *mut c_void,
    pub device: DLDevice,
    pub ndim: i32,
    pub dtype: DLDataType,
    pub shape: *mut i64,
    pub strides: *mut i64,
    pub byte_offset: u64,
}

const KDL_CPU: i32 = 1;
const KDL_CUDA: i32 = 2;
const KDL_INT: u8 = 0;
const KDL_FLOAT: u8 = 2;
const KDL_BFLOAT: u8 = 4;
/// More dimensions than any op takes: a larger `ndim` is garbage, refused before `shape` is read.
const MAX_NDIM: i32 = 16;

/// A checked descriptor: where the elements start, their shape, dtype and device.
#[derive(Clone, Debug)]
pub(crate) struct Desc {
    pub name: &'static str,
    pub ptr: u64,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub device: Device,
}

pub(crate) fn dtype_of(name: &str, d: DLDataType) -> FfiResult<DType> {
    let dtype = match (d.code, d.bits, d.lanes) {
        (KDL_FLOAT, 32, 1) => DType::F32,
        (KDL_FLOAT, 16, 1) => DType::F16,
        (KDL_BFLOAT, 16, 1) => DType::BF16,
        (KDL_INT, 32, 1) => DType::I32,
        (KDL_INT, 64, 1) => DType::I64,
        (code, bits, lanes) => {
            return Err(Failure::unsupported(format!(
                "`{name}` has DLPack dtype (code {code}, bits {bits}, lanes {lanes}); supported: float32, float16, \
                 bfloat16, int32, int64 with one lane"
            )))
        }
    };
    Ok(dtype)
}

pub(crate) fn device_of(name: &str, d: DLDevice) -> FfiResult<Device> {
    match d.device_type {
        KDL_CPU => Ok(Device::Cpu),
        KDL_CUDA => usize::try_from(d.device_id)
            .map(Device::Cuda)
            .map_err(|_| Failure::invalid(format!("`{name}` is on CUDA device {}", d.device_id))),
        other => Err(Failure::unsupported(format!(
            "`{name}` has DLPack device type {other}; supported: kDLCPU (1) and kDLCUDA (2)"
        ))),
    }
}

/// The DLPack dtype of `dtype` (the inverse of [`dtype_of`]).
pub(crate) fn dl_dtype(dtype: DType) -> DLDataType {
    let (code, bits) = match dtype {
        DType::F32 => (KDL_FLOAT, 32),
        DType::F16 => (KDL_FLOAT, 16),
        DType::BF16 => (KDL_BFLOAT, 16),
        DType::I32 => (KDL_INT, 32),
        DType::I64 => (KDL_INT, 64),
    };
    DLDataType { code, bits, lanes: 1 }
}

/// The DLPack device of `device` (the inverse of [`device_of`]).
pub(crate) fn dl_device(device: Device) -> DLDevice {
    match device {
        Device::Cpu => DLDevice { device_type: KDL_CPU, device_id: 0 },
        Device::Cuda(ordinal) => DLDevice { device_type: KDL_CUDA, device_id: ordinal as i32 },
    }
}

impl Desc {
    /// Checks the descriptor `t` points to (NULL is an error naming `name`).
    ///
    /// # Safety
    /// `t` is NULL or points to a readable `DLTensor` whose `shape` and `strides` (when not NULL) hold `ndim`
    /// values each.
    pub unsafe fn required(name: &'static str, t: *const DLTensor) -> FfiResult<Desc> {
        // SAFETY: this function's contract.
        unsafe { Desc::optional(name, t) }?.ok_or_else(|| Failure::null(name))
    }

    /// Like [`Desc::required`], with NULL meaning "not given".
    ///
    /// # Safety
    /// As for [`Desc::required`].
    pub unsafe fn optional(name: &'static str, t: *const DLTensor) -> FfiResult<Option<Desc>> {
        // SAFETY: this function's contract: NULL or a readable DLTensor.
        let Some(t) = (unsafe { t.as_ref() }) else { return Ok(None) };
        if !(0..=MAX_NDIM).contains(&t.ndim) {
            return Err(Failure::invalid(format!("`{name}` has ndim {} (0 to {MAX_NDIM} accepted)", t.ndim)));
        }
        let ndim = t.ndim as usize;
        let shape: &[i64] = if ndim == 0 {
            &[]
        } else if t.shape.is_null() {
            return Err(Failure::null(&format!("{name}->shape")));
        } else {
            // SAFETY: this function's contract: `shape` holds `ndim` values.
            unsafe { std::slice::from_raw_parts(t.shape, ndim) }
        };
        let shape = shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<usize>, _>>()
            .map_err(|_| Error::Shape(format!("`{name}` has a negative dimension in shape {shape:?}")))?;
        let dtype = dtype_of(name, t.dtype)?;
        let device = device_of(name, t.device)?;
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let bytes = numel.and_then(|n| n.checked_mul(dtype.size_in_bytes())).filter(|&b| b <= isize::MAX as usize);
        let Some(bytes) = bytes else {
            return Err(Error::Shape(format!("`{name}` has shape {shape:?}: more bytes than memory holds")).into());
        };
        if !t.strides.is_null() && bytes > 0 {
            // SAFETY: this function's contract: `strides` holds `ndim` values.
            let strides = unsafe { std::slice::from_raw_parts(t.strides, ndim) };
            let mut expected = 1i64;
            for (k, (&d, &s)) in shape.iter().zip(strides).enumerate().rev() {
                // A dimension of size 1 is never stepped along: any stride is row-major there (PyTorch writes 1).
                if d != 1 && s != expected {
                    return Err(Failure::unsupported(format!(
                        "`{name}` has strides {strides:?} for shape {shape:?} (dimension {k}): only row-major \
                         contiguous tensors are supported; make it contiguous first"
                    )));
                }
                expected *= d as i64;
            }
        }
        if t.data.is_null() && bytes > 0 {
            return Err(Failure::null(&format!("{name}->data")));
        }
        let ptr = (t.data as u64)
            .checked_add(t.byte_offset)
            .ok_or_else(|| Failure::invalid(format!("`{name}`: data + byte_offset overflows")))?;
        if ptr % dtype.size_in_bytes() as u64 != 0 {
            return Err(Failure::invalid(format!(
                "`{name}`: data + byte_offset = {ptr:#x} is not aligned for {dtype} ({} bytes)",
                dtype.size_in_bytes()
            )));
        }
        Ok(Some(Desc { name, ptr, shape, dtype, device }))
    }

    pub(crate) fn bytes(&self) -> u64 {
        (self.shape.iter().product::<usize>() * self.dtype.size_in_bytes()) as u64
    }

    /// Whether the two descriptors' bytes overlap (on one device).
    pub fn overlaps(&self, other: &Desc) -> bool {
        self.device == other.device
            && self.bytes() > 0
            && other.bytes() > 0
            && self.ptr < other.ptr + other.bytes()
            && other.ptr < self.ptr + self.bytes()
    }

    /// The tensor over the caller's memory. Call it inside [`on_device`]'s scope (a CUDA tensor takes that
    /// scope's stream).
    ///
    /// # Safety
    /// The descriptor was read from a DLTensor describing memory valid for its whole extent while the tensor
    /// lives (each export's contract with its caller).
    pub unsafe fn tensor(&self) -> FfiResult<Tensor> {
        // SAFETY: this function's contract; `Desc::optional` checked the size, the alignment and NULL.
        Ok(unsafe { Tensor::from_raw_parts(self.ptr, &self.shape, self.dtype, self.device) }?)
    }

    /// Checks that this output descriptor is exactly what `result` is (shape and dtype).
    pub fn expect(&self, result: &Tensor) -> FfiResult {
        if self.shape != result.shape() {
            return Err(Error::Shape(format!(
                "output `{}` has shape {:?}, the op produces {:?}",
                self.name,
                self.shape,
                result.shape()
            ))
            .into());
        }
        if self.dtype != result.dtype() {
            return Err(Error::DType { arg: self.name, got: self.dtype, expected: result.dtype().to_string() }.into());
        }
        Ok(())
    }
}

/// Copies each result into its output (checking them all before writing any). Outputs that are `None` are skipped.
///
/// # Safety
/// As for [`Desc::tensor`]; outputs are writable.
pub(crate) unsafe fn write_outputs(outputs: &[(Option<&Desc>, &Tensor)]) -> FfiResult {
    for (out, result) in outputs {
        if let Some(out) = out {
            out.expect(result)?;
        }
    }
    for (out, result) in outputs {
        if let Some(out) = out {
            // SAFETY: this function's contract.
            unsafe { out.tensor() }?.copy_from(result)?;
        }
    }
    Ok(())
}

/// The one device of `descs` (inputs and outputs alike), or an error naming two that differ.
fn common_device(descs: &[&Desc]) -> FfiResult<Device> {
    let first = descs.first().ok_or_else(|| Failure::invalid("no tensors given"))?;
    for d in descs {
        if d.device != first.device {
            return Err(Error::Device(format!(
                "`{}` is on {} but `{}` is on {}: every tensor of a call must be on one device",
                d.name, d.device, first.name, first.device
            ))
            .into());
        }
    }
    Ok(first.device)
}

/// Outputs (named `*_out`, or `out`) must not overlap any other tensor of the call, input or output: a kernel
/// would read what it already overwrote. Every export passes all its tensors through here; the one documented
/// in-place case (`ur_logprobs_backward` writing over `logits`) passes the logits once, as the output.
fn check_no_overlap(descs: &[&Desc]) -> FfiResult<()> {
    let is_output = |d: &Desc| d.name == "out" || d.name.ends_with("_out");
    for (i, out) in descs.iter().enumerate().filter(|(_, d)| is_output(d)) {
        if let Some(other) = descs.iter().enumerate().find(|&(j, d)| j != i && out.overlaps(d)).map(|(_, d)| d) {
            return Err(Failure::invalid(format!(
                "`{}` overlaps `{}`: an output must be separate memory",
                out.name, other.name
            )));
        }
    }
    Ok(())
}

/// Runs `f` on the device of `descs` (all on one device, no output overlapping another tensor): directly for the
/// CPU; for CUDA inside [`cuda::on_stream`], so kernels and allocations go on the caller's `stream` of that device.
///
/// # Safety
/// For CUDA tensors, `stream` is NULL (the legacy default stream) or a valid `CUstream`/`cudaStream_t` of that
/// device's primary context, alive until the work queued on it has run.
pub(crate) unsafe fn on_device<R>(
    descs: &[Option<&Desc>],
    stream: *mut c_void,
    f: impl FnOnce() -> FfiResult<R>,
) -> FfiResult<R> {
    let given: Vec<&Desc> = descs.iter().flatten().copied().collect();
    check_no_overlap(&given)?;
    match common_device(&given)? {
        Device::Cpu => f(),
        // SAFETY: this function's contract.
        Device::Cuda(ordinal) => {
            unsafe { cuda::on_stream(ordinal, stream as cudarc::driver::sys::CUstream, || Ok(f())) }?
        }
    }
}
