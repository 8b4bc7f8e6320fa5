//! The bytes under a tensor: owned by the library, or borrowed from a caller (DLPack through the C ABI, PyTorch)
//! without a copy.

use std::ptr::NonNull;
use std::sync::Arc;

use cudarc::driver::{result as driver, CudaSlice, DevicePtr};

use super::cuda::CudaBackend;
use super::host_cache;
use crate::Result;

/// Host memory: owned (8-byte aligned words, so it can be viewed as any element type) or borrowed.
pub struct CpuStorage(CpuMemory);

enum CpuMemory {
    Owned { words: Vec<u64>, len_bytes: usize },
    Borrowed { ptr: NonNull<u8>, len_bytes: usize },
}

// SAFETY: owned memory is a plain Vec. Borrowed memory is only created by the unsafe `Tensor::from_raw_parts`,
// whose caller promises that the memory stays valid and is accessed through the tensor only as Rust's borrow rules
// allow (shared for `&Tensor`, exclusive for `&mut Tensor`), so sending or sharing the tensor is as safe as for a Vec.
unsafe impl Send for CpuStorage {}
// SAFETY: as for Send.
unsafe impl Sync for CpuStorage {}

impl CpuStorage {
    pub(super) fn zeroed(len_bytes: usize) -> Self {
        CpuStorage(CpuMemory::Owned { words: host_cache::zeroed_words(len_bytes.div_ceil(8)), len_bytes })
    }

    /// # Safety
    /// `ptr` must be valid for reads and writes of `len_bytes` for the storage's whole life.
    pub(super) unsafe fn borrowed(ptr: NonNull<u8>, len_bytes: usize) -> Self {
        CpuStorage(CpuMemory::Borrowed { ptr, len_bytes })
    }

    pub(super) fn bytes(&self) -> &[u8] {
        match &self.0 {
            CpuMemory::Owned { words, len_bytes } => &bytemuck::cast_slice(words)[..*len_bytes],
            // SAFETY: `borrowed`'s contract: valid for `len_bytes` while the storage lives.
            CpuMemory::Borrowed { ptr, len_bytes } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), *len_bytes) },
        }
    }

    pub(super) fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.0 {
            CpuMemory::Owned { words, len_bytes } => &mut bytemuck::cast_slice_mut(words)[..*len_bytes],
            // SAFETY: `borrowed`'s contract, and `&mut self` makes this the only access.
            CpuMemory::Borrowed { ptr, len_bytes } => unsafe {
                std::slice::from_raw_parts_mut(ptr.as_ptr(), *len_bytes)
            },
        }
    }

    /// An owned copy.
    pub(super) fn to_owned(&self) -> Self {
        let mut copy = CpuStorage::zeroed(self.bytes().len());
        copy.bytes_mut().copy_from_slice(self.bytes());
        copy
    }
}

impl Drop for CpuStorage {
    fn drop(&mut self) {
        if let CpuMemory::Owned { words, .. } = &mut self.0 {
            host_cache::recycle(std::mem::take(words));
        }
    }
}

/// Device memory on one CUDA device, owned (freed on drop) or borrowed, with the backend whose stream orders the
/// work on it.
pub struct CudaStorage {
    ptr: u64,
    len_bytes: usize,
    /// Keeps owned memory alive; `None` for borrowed memory.
    _owned: Option<CudaSlice<u8>>,
    pub(super) backend: Arc<CudaBackend>,
}

impl CudaStorage {
    pub(super) fn owned(buffer: CudaSlice<u8>, backend: Arc<CudaBackend>) -> Self {
        let ptr = buffer.device_ptr(backend.stream()).0;
        CudaStorage { ptr, len_bytes: buffer.len(), _owned: Some(buffer), backend }
    }

    /// Zeroed device memory, allocated on the backend's stream.
    pub(super) fn zeroed(len_bytes: usize, backend: Arc<CudaBackend>) -> Result<Self> {
        // One byte at least: a zero-sized allocation has no address to hand to a kernel.
        let buffer = backend.stream().alloc_zeros::<u8>(len_bytes.max(1))?;
        let mut storage = CudaStorage::owned(buffer, backend);
        storage.len_bytes = len_bytes;
        Ok(storage)
    }

    /// # Safety
    /// `ptr` must be device memory of `backend`'s device, valid for `len_bytes` for the storage's whole life.
    pub(super) unsafe fn borrowed(ptr: u64, len_bytes: usize, backend: Arc<CudaBackend>) -> Self {
        CudaStorage { ptr, len_bytes, _owned: None, backend }
    }

    pub(super) fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Copies the bytes to the host, waiting for the stream's earlier work.
    pub(super) fn to_host(&self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.len_bytes];
        let stream = self.backend.stream();
        // SAFETY: `ptr` holds `len_bytes` bytes (constructors' contracts) and `out` as many; the stream is
        // synchronised before `out` is read or dropped.
        unsafe { driver::memcpy_dtoh_async(&mut out, self.ptr, stream.cu_stream()) }?;
        stream.synchronize()?;
        Ok(out)
    }

    /// Copies `bytes` (exactly `len_bytes` of them) from the host, waiting until the copy is done.
    pub(super) fn copy_from_host(&mut self, bytes: &[u8]) -> Result<()> {
        assert_eq!(bytes.len(), self.len_bytes, "copy_from_host: size mismatch");
        let stream = self.backend.stream();
        // SAFETY: both sides hold `len_bytes` bytes; synchronising keeps `bytes` alive until the copy ends.
        unsafe { driver::memcpy_htod_async(self.ptr, bytes, stream.cu_stream()) }?;
        stream.synchronize()?;
        Ok(())
    }

    /// Copies `src`'s bytes (as many as this storage holds) on this storage's stream, without waiting.
    pub(super) fn copy_from_device(&mut self, src: &CudaStorage) -> Result<()> {
        assert_eq!(src.len_bytes, self.len_bytes, "copy_from_device: size mismatch");
        // SAFETY: both buffers hold `len_bytes` bytes of device memory (constructors' contracts); the copy is
        // ordered on this storage's stream, where the caller orders the work that produced `src`.
        unsafe { driver::memcpy_dtod_async(self.ptr, src.ptr, self.len_bytes, self.backend.stream().cu_stream()) }?;
        Ok(())
    }

    /// Sets every byte to zero on the backend's stream, without waiting.
    pub(super) fn fill_zeros(&mut self) -> Result<()> {
        // SAFETY: `ptr` holds `len_bytes` bytes of this device (constructors' contracts).
        unsafe { driver::memset_d8_async(self.ptr, 0, self.len_bytes, self.backend.stream().cu_stream()) }?;
        Ok(())
    }

    /// An owned copy on the same stream.
    pub(super) fn to_owned(&self) -> Result<Self> {
        let copy = CudaStorage::zeroed(self.len_bytes, self.backend.clone())?;
        // SAFETY: both buffers hold `len_bytes` bytes of this device; ordered on the same stream.
        unsafe { driver::memcpy_dtod_async(copy.ptr, self.ptr, self.len_bytes, self.backend.stream().cu_stream()) }?;
        Ok(copy)
    }
}
