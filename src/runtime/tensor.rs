//! `Tensor`: a shape, strides and a dtype over CPU or CUDA storage.

use std::fmt;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::cuda::{self, CudaBackend};
use super::{DType, Device, Element};
use crate::{Error, Result};

/// Host memory, 8-byte aligned so that it can be viewed as any element type.
#[derive(Clone)]
pub struct CpuStorage {
    words: Vec<u64>,
    len_bytes: usize,
}

impl CpuStorage {
    fn zeroed(len_bytes: usize) -> Self {
        // `vec![0; n]` asks the allocator for zeroed pages, so large tensors cost nothing until touched.
        CpuStorage { words: vec![0u64; len_bytes.div_ceil(8)], len_bytes }
    }

    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len_bytes]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.len_bytes]
    }
}

/// Device memory on one CUDA device, owned by the tensor.
pub struct CudaStorage {
    buffer: CudaSlice<u8>,
    backend: Arc<CudaBackend>,
}

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
            Device::Cuda(ordinal) => {
                let backend = cuda::backend(ordinal)?;
                let buffer = backend.stream().alloc_zeros::<u8>(len_bytes)?;
                Storage::Cuda(CudaStorage { buffer, backend })
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
                let backend = cuda::backend(ordinal)?;
                let buffer = backend.stream().clone_htod(bytes)?;
                Storage::Cuda(CudaStorage { buffer, backend })
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
        if checked_numel(shape)? != self.numel() {
            return Err(Error::Shape(format!("cannot reshape {:?} into {shape:?}", self.shape)));
        }
        if !self.is_contiguous() {
            return Err(Error::Shape("cannot reshape a non-contiguous tensor".into()));
        }
        self.shape = shape.to_vec();
        self.strides = contiguous_strides(shape);
        Ok(self)
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
            Storage::Cuda(c) => {
                let (ptr, _sync) = c.buffer.device_ptr(c.backend.stream());
                Ok((ptr, &c.backend))
            }
            Storage::Cpu(_) => Err(Error::Device("expected a CUDA tensor, got a CPU one".into())),
        }
    }

    /// Like [`Tensor::cuda_ptr`], for a tensor a kernel writes.
    pub fn cuda_ptr_mut(&mut self) -> Result<(u64, Arc<CudaBackend>)> {
        match &mut self.storage {
            Storage::Cuda(c) => {
                let backend = c.backend.clone();
                let ptr = {
                    let (ptr, _sync) = c.buffer.device_ptr_mut(backend.stream());
                    ptr
                };
                Ok((ptr, backend))
            }
            Storage::Cpu(_) => Err(Error::Device("expected a CUDA tensor, got a CPU one".into())),
        }
    }

    /// Copies the elements out to a `Vec`, from either device.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.expect_dtype::<T>()?;
        match &self.storage {
            Storage::Cpu(c) => Ok(bytemuck::cast_slice(c.bytes()).to_vec()),
            Storage::Cuda(c) => {
                let bytes = c.backend.stream().clone_dtoh(&c.buffer)?;
                Ok(bytemuck::pod_collect_to_vec(&bytes))
            }
        }
    }

    /// A copy on `device` (a copy even when it is already there).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        let bytes: Vec<u8> = match &self.storage {
            Storage::Cpu(c) => c.bytes().to_vec(),
            Storage::Cuda(c) => c.backend.stream().clone_dtoh(&c.buffer)?,
        };
        let mut out = Tensor::zeros(&self.shape, self.dtype, Device::Cpu)?;
        match &mut out.storage {
            Storage::Cpu(c) => c.bytes_mut().copy_from_slice(&bytes),
            Storage::Cuda(_) => unreachable!("created on the CPU above"),
        }
        if device == Device::Cpu {
            return Ok(out);
        }
        let backend = match device {
            Device::Cuda(ordinal) => cuda::backend(ordinal)?,
            Device::Cpu => unreachable!(),
        };
        let buffer = backend.stream().clone_htod(&bytes)?;
        Ok(Tensor { storage: Storage::Cuda(CudaStorage { buffer, backend }), ..out })
    }

    /// A deep copy on the same device.
    pub fn try_clone(&self) -> Result<Tensor> {
        let storage = match &self.storage {
            Storage::Cpu(c) => Storage::Cpu(c.clone()),
            Storage::Cuda(c) => {
                Storage::Cuda(CudaStorage { buffer: c.buffer.try_clone()?, backend: c.backend.clone() })
            }
        };
        Ok(Tensor { storage, shape: self.shape.clone(), strides: self.strides.clone(), dtype: self.dtype })
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
