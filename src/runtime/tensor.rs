//! `Tensor`: a shape, strides and a dtype over CPU or CUDA storage.

use std::fmt;
use std::sync::Arc;

use super::cuda::{self, CudaBackend};
pub use super::storage::{CpuStorage, CudaStorage};
use super::{DType, Device, Element};
use crate::{Error, Result};

/// Where a tensor's bytes are.
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

/// A dense tensor. Every tensor the library creates is contiguous (row-major); ops check contiguity of their
/// inputs and refuse strided ones with a clear error.
pub struct Tensor {
    storage: Storage,
    shape: Vec<usize>,
    strides: Vec<usize>,
    dtype: DType,
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

fn checked_numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::Shape(format!("shape {shape:?} has more elements than fit in memory")))
}

impl Tensor {
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        let len_bytes = checked_numel(shape)? * dtype.size_in_bytes();
        let storage = match device {
            Device::Cpu => Storage::Cpu(CpuStorage::zeroed(len_bytes)),
            Device::Cuda(ordinal) => Storage::Cuda(CudaStorage::zeroed(len_bytes, cuda::backend(ordinal)?)?),
        };
        Ok(Tensor { storage, shape: shape.to_vec(), strides: contiguous_strides(shape), dtype })
    }

    /// A tensor over memory the caller owns (a DLPack tensor, a PyTorch tensor), without a copy.
    ///
    /// # Safety
    /// `ptr` must point to `shape.product() · dtype.size_in_bytes()` bytes on `device`, laid out row-major, valid
    /// for the tensor's whole life, and not accessed by anyone else while the tensor is used except for reads when
    /// the tensor is only read. On CUDA, the memory must belong to device `ordinal`, and work on it is ordered on the
    /// stream that [`cuda::backend`] returns on this thread (see [`cuda::on_stream`]).
    pub unsafe fn from_raw_parts(ptr: u64, shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        let len_bytes = checked_numel(shape)? * dtype.size_in_bytes();
        if ptr == 0 && len_bytes > 0 {
            return Err(Error::InvalidArgument("tensor data pointer is null".into()));
        }
        if !ptr.is_multiple_of(dtype.size_in_bytes() as u64) {
            return Err(Error::InvalidArgument(format!("tensor data pointer {ptr:#x} is not aligned for {dtype}")));
        }
        let storage = match device {
            Device::Cpu => {
                // A zero-byte tensor may have a null pointer: give it an aligned dangling one, never dereferenced.
                let ptr = std::ptr::NonNull::new(ptr as *mut u8).unwrap_or(std::ptr::NonNull::<u64>::dangling().cast());
                // SAFETY: this function's contract (a null pointer only with zero bytes, never read).
                Storage::Cpu(unsafe { CpuStorage::borrowed(ptr, len_bytes) })
            }
            // SAFETY: this function's contract.
            Device::Cuda(ordinal) => {
                Storage::Cuda(unsafe { CudaStorage::borrowed(ptr, len_bytes, cuda::backend(ordinal)?) })
            }
        };
        Ok(Tensor { storage, shape: shape.to_vec(), strides: contiguous_strides(shape), dtype })
    }

    /// A tensor holding a copy of `data`, laid out row-major in `shape`.
    pub fn from_slice<T: Element>(data: &[T], shape: &[usize], device: Device) -> Result<Tensor> {
        let numel = checked_numel(shape)?;
        if numel != data.len() {
            return Err(Error::Shape(format!("{} values cannot fill shape {shape:?} ({numel} elements)", data.len())));
        }
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let storage = match device {
            Device::Cpu => {
                let mut cpu = CpuStorage::zeroed(bytes.len());
                cpu.bytes_mut().copy_from_slice(bytes);
                Storage::Cpu(cpu)
            }
            Device::Cuda(ordinal) => {
                let mut cuda = CudaStorage::zeroed(bytes.len(), cuda::backend(ordinal)?)?;
                cuda.copy_from_host(bytes)?;
                Storage::Cuda(cuda)
            }
        };
        Ok(Tensor { storage, shape: shape.to_vec(), strides: contiguous_strides(shape), dtype: T::DTYPE })
    }

    /// A float tensor of `dtype` from f32 values, rounding to nearest for bf16 and f16.
    pub fn from_f32(data: &[f32], shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        use half::{bf16, f16};
        fn fill<T: Element>(data: &[f32], shape: &[usize], convert: fn(f32) -> T) -> Result<Tensor> {
            let mut out = Tensor::zeros(shape, T::DTYPE, Device::Cpu)?;
            let dst = out.as_mut_slice::<T>()?;
            if dst.len() != data.len() {
                return Err(Error::Shape(format!("{} values cannot fill shape {shape:?}", data.len())));
            }
            dst.iter_mut().zip(data).for_each(|(d, &v)| *d = convert(v));
            Ok(out)
        }
        let host = match dtype {
            DType::F32 => return Tensor::from_slice(data, shape, device),
            DType::BF16 => fill(data, shape, bf16::from_f32)?,
            DType::F16 => fill(data, shape, f16::from_f32)?,
            other => return Err(Error::DType { arg: "from_f32", got: other, expected: "a float dtype".into() }),
        };
        if device == Device::Cpu {
            Ok(host)
        } else {
            host.to_device(device)
        }
    }

    /// The elements of a float tensor as f32 (borrowed when it already is a CPU f32 tensor).
    pub fn to_f32_cow(&self) -> Result<std::borrow::Cow<'_, [f32]>> {
        use half::{bf16, f16};
        use std::borrow::Cow;
        if self.dtype == DType::F32 && self.device() == Device::Cpu {
            return Ok(Cow::Borrowed(self.as_slice::<f32>()?));
        }
        Ok(Cow::Owned(match self.dtype {
            DType::F32 => self.to_vec::<f32>()?,
            DType::BF16 => self.to_vec::<bf16>()?.iter().map(|v| v.to_f32()).collect(),
            DType::F16 => self.to_vec::<f16>()?.iter().map(|v| v.to_f32()).collect(),
            other => return Err(Error::DType { arg: "tensor", got: other, expected: "a float dtype".into() }),
        }))
    }

    /// A scalar (rank-0) tensor.
    pub fn scalar<T: Element>(value: T, device: Device) -> Result<Tensor> {
        Tensor::from_slice(&[value], &[], device)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn size_in_bytes(&self) -> usize {
        self.numel() * self.dtype.size_in_bytes()
    }

    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(c) => Device::Cuda(c.backend.ordinal()),
        }
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn is_contiguous(&self) -> bool {
        self.strides == contiguous_strides(&self.shape)
    }

    /// The same data under another shape with as many elements (no copy).
    pub fn reshape(mut self, shape: &[usize]) -> Result<Tensor> {
        self.reshape_in_place(shape)?;
        Ok(self)
    }

    /// Gives the tensor another shape with as many elements (no copy): a [N,T,heads·d] projection output read as
    /// `[N,T,heads,d]` attention input, in a buffer the caller keeps.
    pub fn reshape_in_place(&mut self, shape: &[usize]) -> Result<()> {
        if checked_numel(shape)? != self.numel() {
            return Err(Error::Shape(format!("cannot reshape {:?} into {shape:?}", self.shape)));
        }
        if !self.is_contiguous() {
            return Err(Error::Shape("cannot reshape a non-contiguous tensor".into()));
        }
        self.shape = shape.to_vec();
        self.strides = contiguous_strides(shape);
        Ok(())
    }

    fn expect_dtype<T: Element>(&self) -> Result<()> {
        if self.dtype != T::DTYPE {
            return Err(Error::DType { arg: "tensor", got: self.dtype, expected: T::DTYPE.to_string() });
        }
        Ok(())
    }

    /// The elements of a CPU tensor.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        self.expect_dtype::<T>()?;
        match &self.storage {
            Storage::Cpu(c) => Ok(bytemuck::cast_slice(c.bytes())),
            Storage::Cuda(_) => {
                Err(Error::Device(format!("as_slice needs a CPU tensor, this one is on {}", self.device())))
            }
        }
    }

    /// The elements of a CPU tensor, writable.
    pub fn as_mut_slice<T: Element>(&mut self) -> Result<&mut [T]> {
        self.expect_dtype::<T>()?;
        let device = self.device();
        match &mut self.storage {
            Storage::Cpu(c) => Ok(bytemuck::cast_slice_mut(c.bytes_mut())),
            Storage::Cuda(_) => Err(Error::Device(format!("as_mut_slice needs a CPU tensor, this one is on {device}"))),
        }
    }

    /// The device pointer of a CUDA tensor and its backend, for kernel launches. The pointer is valid while
    /// `self` is borrowed.
    pub fn cuda_ptr(&self) -> Result<(u64, &Arc<CudaBackend>)> {
        match &self.storage {
            Storage::Cuda(c) => Ok((c.ptr(), &c.backend)),
            Storage::Cpu(_) => Err(Error::Device("expected a CUDA tensor, got a CPU one".into())),
        }
    }

    /// Like [`Tensor::cuda_ptr`], for a tensor a kernel writes.
    pub fn cuda_ptr_mut(&mut self) -> Result<(u64, Arc<CudaBackend>)> {
        match &mut self.storage {
            Storage::Cuda(c) => Ok((c.ptr(), c.backend.clone())),
            Storage::Cpu(_) => Err(Error::Device("expected a CUDA tensor, got a CPU one".into())),
        }
    }

    /// Copies the elements out to a `Vec`, from either device.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.expect_dtype::<T>()?;
        match &self.storage {
            Storage::Cpu(c) => Ok(bytemuck::cast_slice(c.bytes()).to_vec()),
            Storage::Cuda(c) => Ok(bytemuck::pod_collect_to_vec(&c.to_host()?)),
        }
    }

    /// A copy on `device` (a copy even when it is already there).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        let host;
        let bytes: &[u8] = match &self.storage {
            Storage::Cpu(c) => c.bytes(),
            Storage::Cuda(c) => {
                host = c.to_host()?;
                &host
            }
        };
        let mut out = Tensor::zeros(&self.shape, self.dtype, device)?;
        match &mut out.storage {
            Storage::Cpu(c) => c.bytes_mut().copy_from_slice(bytes),
            Storage::Cuda(c) => c.copy_from_host(bytes)?,
        }
        Ok(out)
    }

    /// A deep copy on the same device.
    pub fn try_clone(&self) -> Result<Tensor> {
        let storage = match &self.storage {
            Storage::Cpu(c) => Storage::Cpu(c.to_owned()),
            Storage::Cuda(c) => Storage::Cuda(c.to_owned()?),
        };
        Ok(Tensor { storage, shape: self.shape.clone(), strides: self.strides.clone(), dtype: self.dtype })
    }

    /// Copies `src`'s elements into this tensor (same shape and dtype), from either device: a memcpy on the CPU, a
    /// device-to-device copy on this tensor's stream (not waited for) between CUDA tensors of one device, and a
    /// waited-for transfer between host and device. Lets a caller-owned buffer receive a result.
    pub fn copy_from(&mut self, src: &Tensor) -> Result<()> {
        if src.shape != self.shape || src.dtype != self.dtype {
            return Err(Error::Shape(format!(
                "cannot copy a {:?} {} tensor into a {:?} {} one",
                src.shape, src.dtype, self.shape, self.dtype
            )));
        }
        let (src_device, dst_device) = (src.device(), self.device());
        match (&mut self.storage, &src.storage) {
            (Storage::Cpu(d), Storage::Cpu(s)) => d.bytes_mut().copy_from_slice(s.bytes()),
            (Storage::Cuda(d), Storage::Cpu(s)) => d.copy_from_host(s.bytes())?,
            (Storage::Cpu(d), Storage::Cuda(s)) => d.bytes_mut().copy_from_slice(&s.to_host()?),
            (Storage::Cuda(d), Storage::Cuda(s)) if src_device == dst_device => d.copy_from_device(s)?,
            _ => return Err(Error::Device(format!("cannot copy from {src_device} to {dst_device} directly"))),
        }
        Ok(())
    }

    /// Sets every element to zero (on CUDA, queued on the tensor's stream).
    pub fn fill_zeros(&mut self) -> Result<()> {
        match &mut self.storage {
            Storage::Cpu(c) => c.bytes_mut().fill(0),
            Storage::Cuda(c) => c.fill_zeros()?,
        }
        Ok(())
    }

    /// A copy with every element converted to `dtype`. Floats round to nearest, once: f32 holds every f32, bf16
    /// and f16 value exactly, so conversions go through it (not through f64: `half`'s f64 conversions truncate
    /// before rounding). Integers convert exactly or fail: floats to integers are refused, and an i64 that does not
    /// fit in i32 is an error.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        let device = self.device();
        if dtype.is_float() {
            let values: std::borrow::Cow<'_, [f32]> = match self.dtype {
                DType::I32 => self.to_vec::<i32>()?.into_iter().map(|v| v as f32).collect(),
                DType::I64 => self.to_vec::<i64>()?.into_iter().map(|v| v as f32).collect(),
                DType::F32 | DType::BF16 | DType::F16 => self.to_f32_cow()?,
            };
            return Tensor::from_f32(&values, &self.shape, dtype, device);
        }
        let values: Vec<i64> = match self.dtype {
            DType::I32 => self.to_vec::<i32>()?.into_iter().map(i64::from).collect(),
            DType::I64 => self.to_vec::<i64>()?,
            DType::F32 | DType::BF16 | DType::F16 => {
                return Err(Error::DType {
                    arg: "to_dtype",
                    got: self.dtype,
                    expected: "an integer source for an integer target".into(),
                })
            }
        };
        if dtype == DType::I64 {
            return Tensor::from_slice(&values, &self.shape, device);
        }
        let narrow = values
            .iter()
            .map(|&v| {
                i32::try_from(v).map_err(|_| Error::InvalidArgument(format!("to_dtype: {v} does not fit in i32")))
            })
            .collect::<Result<Vec<i32>>>()?;
        Tensor::from_slice(&narrow, &self.shape, device)
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({:?}, {}, {})", self.shape, self.dtype, self.device())
    }
}
