//! Timing of a model's passes for `unireward bench model` and `bench llava`: each pass run once untimed (its
//! warm-up, sampling device memory), once for its heap peak from an empty host cache, then timed in interleaved
//! rounds; printed as one table with tokens per second, peak memory and, on CUDA, model FLOP utilisation.

use std::cell::Cell;
use std::time::{Duration, Instant};

use unireward::runtime::host_cache;
use unireward::Device;

use crate::peak_alloc::PeakMeter;
use crate::report;

/// H200 peaks (dense, no sparsity): bf16 tensor cores, and f32 without tensor cores.
const H200_BF16_FLOPS: f64 = 989e12;
const H200_F32_FLOPS: f64 = 67e12;

/// Waits for queued GPU work (ops return before their kernels finish); nothing on the CPU.
pub fn sync(device: Device) -> unireward::Result<()> {
    match device {
        Device::Cuda(ordinal) => unireward::runtime::cuda::backend(ordinal)?.synchronize(),
        Device::Cpu => Ok(()),
    }
}

/// Device memory in use (total − free) on a CUDA device, after waiting for queued work; 0 on the CPU.
fn device_used(device: Device) -> unireward::Result<usize> {
    match device {
        Device::Cuda(ordinal) => {
            let backend = unireward::runtime::cuda::backend(ordinal)?;
            backend.synchronize()?;
            let (free, total) = backend.context().mem_get_info()?;
            Ok(total - free)
        }
        Device::Cpu => Ok(0),
    }
}

/// A pass to time: its name, its model FLOPs and the work (returning the loss).
pub type Work<'w> = (&'static str, f64, &'w dyn Fn() -> unireward::Result<f32>);

/// One pass's measurements over the timed runs.
pub struct Pass {
    name: &'static str,
    times: Vec<Duration>,
    peak_heap: usize,
    /// Device memory in use beyond what existed when the timer was made, sampled when the pass holds the most
    /// (approximate).
    peak_device: usize,
    flops: f64,
    loss: f32,
}

impl Pass {
    fn median(&self) -> Duration {
        let mut t = self.times.clone();
        t.sort();
        t[t.len() / 2]
    }
}

/// Times passes on one device; the passes call [`PassTimer::sample_device`] where they hold the most memory.
pub struct PassTimer {
    device: Device,
    /// Device memory in use once the model and its inputs exist.
    base_device: usize,
    /// Whether to sample device memory (in the untimed warm-up runs only: sampling synchronises).
    sampling: Cell<bool>,
    /// Most device memory seen in use beyond `base_device` since the last reset.
    peak_device: Cell<usize>,
}

impl PassTimer {
    /// A timer whose device-memory figures count from what is in use now.
    pub fn new(device: Device) -> unireward::Result<PassTimer> {
        Ok(PassTimer {
            device,
            base_device: device_used(device)?,
            sampling: Cell::new(false),
            peak_device: Cell::new(0),
        })
    }

    pub fn sample_device(&self) -> unireward::Result<()> {
        if !self.sampling.get() {
            return Ok(());
        }
        let used = device_used(self.device)?.saturating_sub(self.base_device);
        self.peak_device.set(self.peak_device.get().max(used));
        Ok(())
    }

    /// Runs each work once untimed (its warm-up, sampling device memory), once more for its heap peak from an
    /// empty host cache (what the work itself needs, not counting buffers other works left cached), then `iters`
    /// rounds that time each work in turn (synchronised, with the cache warm as in a training loop): interleaved,
    /// so that none gains from running first in a process whose memory the others have not shaped yet.
    pub fn measure(&self, works: &[Work<'_>], iters: usize) -> unireward::Result<Vec<Pass>> {
        let mut passes = Vec::with_capacity(works.len());
        for &(name, flops, f) in works {
            self.peak_device.set(0);
            self.sampling.set(true);
            f()?;
            self.sampling.set(false);
            let peak_device = self.peak_device.get();
            passes.push(Pass { name, times: Vec::new(), peak_heap: 0, peak_device, flops, loss: f32::NAN });
        }
        for (pass, &(_, _, f)) in passes.iter_mut().zip(works) {
            host_cache::release_cached_memory();
            let meter = PeakMeter::start();
            f()?;
            pass.peak_heap = meter.peak_extra();
        }
        for _ in 0..iters {
            for (pass, &(_, _, f)) in passes.iter_mut().zip(works) {
                let start = Instant::now();
                pass.loss = f()?;
                sync(self.device)?;
                pass.times.push(start.elapsed());
            }
        }
        Ok(passes)
    }

    /// The three passes of a model bench: forward + loss, forward + loss + backward into fresh gradients, and the
    /// same into gradients kept across steps; `flops` are a forward's and a forward + backward's.
    pub fn measure_training(
        &self,
        forward: &dyn Fn() -> unireward::Result<f32>,
        fresh: &dyn Fn() -> unireward::Result<f32>,
        kept: &dyn Fn() -> unireward::Result<f32>,
        [fwd_flops, bwd_flops]: [f64; 2],
        iters: usize,
    ) -> unireward::Result<Vec<Pass>> {
        let works: [Work<'_>; 3] = [
            ("forward + loss", fwd_flops, forward),
            ("forward + loss + backward", bwd_flops, fresh),
            ("  the same, kept gradients", bwd_flops, kept),
        ];
        self.measure(&works, iters)
    }

    /// The passes as a table: median time, tokens per second, heap peak, loss, and GFLOP/s on the CPU or device
    /// memory, TFLOP/s and MFU on CUDA.
    pub fn print(&self, passes: &[Pass], tokens: usize) {
        let cuda = matches!(self.device, Device::Cuda(_));
        print!("{:<26} {:>10} {:>10} {:>12} {:>9}", "pass", "median", "tokens/s", "peak heap", "loss");
        if cuda {
            print!(" {:>12} {:>10} {:>10} {:>10}", "device mem", "TFLOP/s", "MFU bf16", "MFU f32");
        }
        println!();
        for p in passes {
            let secs = p.median().as_secs_f64();
            print!(
                "{:<26} {:>10} {:>10.0} {:>12} {:>9.4}",
                p.name,
                report::seconds(p.median()),
                tokens as f64 / secs,
                report::bytes(p.peak_heap),
                p.loss
            );
            let achieved = p.flops / secs;
            if cuda {
                print!(
                    " {:>12} {:>10.1} {:>9.1}% {:>9.1}%",
                    report::bytes(p.peak_device),
                    achieved / 1e12,
                    100.0 * achieved / H200_BF16_FLOPS,
                    100.0 * achieved / H200_F32_FLOPS
                );
            } else {
                print!("   {:.1} GFLOP/s", achieved / 1e9);
            }
            println!();
        }
        if cuda {
            println!(
                "device mem: total − free (cuMemGetInfo) beyond the weights and inputs, sampled after the loss and \
                 after the backward in the warm-up runs (approximate: misses peaks between samples, counts what the \
                 driver's pool holds)\nMFU: model FLOPs against H200 dense peaks: bf16 989 TFLOP/s, f32 67 TFLOP/s"
            );
        }
    }
}
