//! CUDA launches of the family (kernels in `kernels/preference.cu`). Each per-item kernel writes the gradients
//! and one row of partial sums (f64) per block; the host adds the rows in block order, so results are
//! deterministic. Integer side inputs (token counts, rank orders) were checked on the host and are uploaded as i64.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DeviceRepr};

use super::diffusion_dpo::{DiffusionDpoInputs, STREAMS};
use super::dpo::{stat, Grads, Plan, PreferenceLogps};
use super::dpo_config::DpoLossType;
use super::reward_model::{bt_stat, BradleyTerryPlan, KwiseMethod, KwisePlan};
use super::KERNELS;
use crate::runtime::cuda::{launch_config, CudaBackend, LaunchConfig, PushKernelArg};
use crate::runtime::{DType, Tensor};
use crate::{Error, Result};

/// Threads per block; the kernels' REDUCE_THREADS (a power of two).
const THREADS: u32 = 256;
/// Blocks of the per-item kernels: enough to fill a GPU, few enough that the partial sums are small.
const MAX_ITEM_BLOCKS: usize = 1024;
/// Blocks of the element-wise gradient kernel (grid-stride).
const MAX_ELEMENT_BLOCKS: usize = 4096;
/// Elements of one sample that one block of the squared-error kernel reduces.
const SQ_ERR_CHUNK: usize = 4096;

fn ptr(t: &Tensor) -> Result<u64> {
    Ok(t.cuda_ptr()?.0)
}

fn optional_ptr(t: Option<&Tensor>) -> Result<u64> {
    t.map_or(Ok(0), ptr)
}

fn backend_of(t: &Tensor) -> Result<Arc<CudaBackend>> {
    Ok(t.cuda_ptr()?.1.clone())
}

/// `n` as the kernels' `int` count.
fn count(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::Shape(format!("{n} {what} is more than the CUDA kernels index ({})", i32::MAX)))
}

fn item_blocks(n: usize) -> usize {
    n.div_ceil(THREADS as usize).clamp(1, MAX_ITEM_BLOCKS)
}

/// Zeroed f64 partial sums: `S` per block.
fn partials<const S: usize>(backend: &CudaBackend, blocks: usize) -> Result<CudaSlice<f64>> {
    Ok(backend.stream().alloc_zeros::<f64>(blocks * S)?)
}

/// The blocks' partial sums added in block order (waits for the kernel).
fn sum_partials<const S: usize>(backend: &CudaBackend, partial: &CudaSlice<f64>) -> Result<[f64; S]> {
    let host = backend.stream().clone_dtoh(partial)?;
    let mut sums = [0.0f64; S];
    for row in host.chunks(S) {
        for (s, v) in sums.iter_mut().zip(row) {
            *s += v;
        }
    }
    Ok(sums)
}

/// An i64 copy of host integers on the device of `like`.
fn upload_i64(values: &[i64], like: &Tensor) -> Result<Tensor> {
    Tensor::from_slice(values, &[values.len()], like.device())
}

/// The scalars of one DPO call, field for field the kernels' `DpoScalars`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct DpoScalars {
    beta: f64,
    eps: f64,
    gamma: f64,
    delta: f64,
    tau: f64,
    f_alpha: f64,
    exp_cap: f64,
    ld_alpha: f64,
    mean_scale: f64,
    nll_grad: f64,
    reward_scale: f64,
    weights: [f64; DpoLossType::ALL.len()],
    kinds: [i32; DpoLossType::ALL.len()],
    terms: i32,
    f_divergence: i32,
    reference_free: i32,
    use_ld: i32,
}

// SAFETY: a `#[repr(C)]` struct of plain numbers, laid out as the kernels' `DpoScalars` (doubles, then ints).
unsafe impl DeviceRepr for DpoScalars {}

impl DpoScalars {
    fn new(plan: &Plan) -> Self {
        let p = &plan.params;
        let mut weights = [0.0; DpoLossType::ALL.len()];
        let mut kinds = [0; DpoLossType::ALL.len()];
        for (i, &(kind, weight)) in plan.mixture.terms().iter().enumerate() {
            kinds[i] = kind.code();
            weights[i] = weight as f64;
        }
        DpoScalars {
            beta: p.beta,
            eps: p.label_smoothing,
            gamma: p.gamma,
            delta: p.delta,
            tau: p.tau,
            f_alpha: p.f_alpha,
            exp_cap: p.exp_cap,
            ld_alpha: plan.ld_alpha.unwrap_or(1.0),
            mean_scale: plan.mean_scale,
            nll_grad: plan.nll_grad,
            reward_scale: plan.reward_scale,
            weights,
            kinds,
            terms: plan.mixture.terms().len() as i32,
            f_divergence: p.f_divergence,
            reference_free: p.reference_free as i32,
            use_ld: plan.ld_alpha.is_some() as i32,
        }
    }
}

pub(crate) fn dpo(inputs: &PreferenceLogps, plan: &Plan) -> Result<([f64; stat::COUNT], Grads)> {
    let first = inputs.policy_chosen;
    let (backend, dtype, device) = (backend_of(first)?, first.dtype(), first.device());
    let n = count(plan.pairs, "pairs")?;
    let lengths = match &plan.lengths {
        Some((c, r)) => Some((upload_i64(c, first)?, upload_i64(r, first)?)),
        None => None,
    };
    let (lc, lr) = (optional_ptr(lengths.as_ref().map(|l| &l.0))?, optional_ptr(lengths.as_ref().map(|l| &l.1))?);
    let order = plan.order.as_deref().map(|o| upload_i64(o, first)).transpose()?;
    let order_ptr = optional_ptr(order.as_ref())?;
    let (rc, rr) = if plan.use_reference {
        (optional_ptr(inputs.reference_chosen)?, optional_ptr(inputs.reference_rejected)?)
    } else {
        (0, 0)
    };
    let (cv, rv) = (optional_ptr(inputs.policy_chosen_verbose)?, optional_ptr(inputs.policy_rejected_verbose)?);
    let pw = optional_ptr(inputs.pair_weights)?;
    let (pc, pr) = (ptr(first)?, ptr(inputs.policy_rejected)?);
    let zeros = || Tensor::zeros(&[plan.pairs], dtype, device);
    let (mut grad_c, mut grad_r) = (zeros()?, zeros()?);
    let mut verbose = plan.ld_alpha.map(|_| Ok::<_, Error>((zeros()?, zeros()?))).transpose()?;
    let mut losses = Tensor::zeros(&[plan.pairs], DType::F32, device)?;
    let (gc, gr) = (grad_c.cuda_ptr_mut()?.0, grad_r.cuda_ptr_mut()?.0);
    let (gcv, grv) = match verbose.as_mut() {
        Some((c, r)) => (c.cuda_ptr_mut()?.0, r.cuda_ptr_mut()?.0),
        None => (0, 0),
    };
    let losses_ptr = losses.cuda_ptr_mut()?.0;
    let blocks = item_blocks(plan.pairs);
    let mut partial = partials::<{ stat::COUNT }>(&backend, blocks)?;
    let scalars = DpoScalars::new(plan);
    let f = backend.function(&KERNELS, &format!("dpo_loss_{}", dtype.name()))?;
    let mut launch = backend.stream().launch_builder(&f);
    launch.arg(&pc).arg(&pr).arg(&rc).arg(&rr).arg(&cv).arg(&rv).arg(&pw).arg(&lc).arg(&lr).arg(&order_ptr);
    launch.arg(&n).arg(&scalars).arg(&gc).arg(&gr).arg(&gcv).arg(&grv).arg(&losses_ptr).arg(&mut partial);
    // The buffers: pc, pr, gc, gr hold n elements of T; rc, rr, cv, rv, pw (when non-null) n elements of T; lc, lr
    // (when non-null) n i64; order (when non-null, which it is whenever the mixture has an AOT term) 7·n i64 in
    // 0..n; gcv, grv (non-null when use_ld) n elements of T; losses n floats; partial blocks·COUNT doubles.
    // SAFETY: dpo_loss_<T>(const T* ×7, const long long* ×3, int, DpoScalars, T* ×4, float*, double*) matches
    // these 18 arguments (DpoScalars laid out as the kernels' struct), with the buffers above for `blocks` blocks.
    unsafe { launch.launch(launch_config(blocks, THREADS, 0)?) }?;
    let sums = sum_partials::<{ stat::COUNT }>(&backend, &partial)?;
    let (chosen_verbose, rejected_verbose) = verbose.map_or((None, None), |(c, r)| (Some(c), Some(r)));
    Ok((sums, Grads { losses, chosen: grad_c, rejected: grad_r, chosen_verbose, rejected_verbose }))
}

pub(crate) fn bradley_terry(
    chosen: &Tensor,
    rejected: &Tensor,
    margin: Option<&Tensor>,
    plan: &BradleyTerryPlan,
) -> Result<([f64; bt_stat::COUNT], Tensor, Tensor)> {
    let (backend, dtype, device) = (backend_of(chosen)?, chosen.dtype(), chosen.device());
    let n = count(plan.pairs, "pairs")?;
    let (rc, rr, m) = (ptr(chosen)?, ptr(rejected)?, optional_ptr(margin)?);
    let mut grad_c = Tensor::zeros(&[plan.pairs], dtype, device)?;
    let mut grad_r = Tensor::zeros(&[plan.pairs], dtype, device)?;
    let (gc, gr) = (grad_c.cuda_ptr_mut()?.0, grad_r.cuda_ptr_mut()?.0);
    let blocks = item_blocks(plan.pairs);
    let mut partial = partials::<{ bt_stat::COUNT }>(&backend, blocks)?;
    let f = backend.function(&KERNELS, &format!("bradley_terry_{}", dtype.name()))?;
    let mut launch = backend.stream().launch_builder(&f);
    launch.arg(&rc).arg(&rr).arg(&m).arg(&n).arg(&plan.coefficient).arg(&plan.mean_scale);
    launch.arg(&gc).arg(&gr).arg(&mut partial);
    // SAFETY: bradley_terry_<T>(const T* ×3, int, double, double, T* ×2, double*) matches these 9 arguments;
    // rc, rr, gc, gr and (when non-null) m hold n elements of T, partial blocks·COUNT doubles.
    unsafe { launch.launch(launch_config(blocks, THREADS, 0)?) }?;
    let sums = sum_partials::<{ bt_stat::COUNT }>(&backend, &partial)?;
    Ok((sums, grad_c, grad_r))
}

pub(crate) fn kwise(rewards: &Tensor, plan: &KwisePlan) -> Result<([f64; 2], Tensor)> {
    let (backend, dtype, device) = (backend_of(rewards)?, rewards.dtype(), rewards.device());
    let (groups, k) = (count(plan.groups, "groups")?, count(plan.k, "candidates per group")?);
    let order = plan.order.as_deref().map(|o| upload_i64(o, rewards)).transpose()?;
    let (r, o) = (ptr(rewards)?, optional_ptr(order.as_ref())?);
    let method = plan.method.code();
    // Suffix logsumexps of Plackett–Luce (the all-pairs kernel does not touch it).
    let scratch_len = if plan.method == KwiseMethod::PlackettLuce { plan.groups * plan.k } else { 1 };
    let mut lse = backend.stream().alloc_zeros::<f64>(scratch_len)?;
    let mut grad = Tensor::zeros(&[plan.groups, plan.k], dtype, device)?;
    let g = grad.cuda_ptr_mut()?.0;
    let blocks = item_blocks(plan.groups);
    let mut partial = partials::<2>(&backend, blocks)?;
    let f = backend.function(&KERNELS, &format!("kwise_loss_{}", dtype.name()))?;
    let mut launch = backend.stream().launch_builder(&f);
    launch.arg(&r).arg(&o).arg(&groups).arg(&k).arg(&method).arg(&plan.mean_scale);
    launch.arg(&mut lse).arg(&g).arg(&mut partial);
    // SAFETY: kwise_loss_<T>(const T*, const long long*, int, int, int, double, double*, T*, double*) matches
    // these 9 arguments; r and g hold groups·k elements of T, o (when non-null) groups·k i64 in 0..k, lse
    // groups·k doubles for Plackett–Luce, partial blocks·2 doubles.
    unsafe { launch.launch(launch_config(blocks, THREADS, 0)?) }?;
    let sums = sum_partials::<2>(&backend, &partial)?;
    Ok((sums, grad))
}

/// `Σ_d (pred - target)²` per stream and sample, laid out `[stream * B + b]`.
pub(crate) fn diffusion_squared_errors(inputs: &DiffusionDpoInputs, batch: usize, width: usize) -> Result<Vec<f64>> {
    let first = inputs.model_winner;
    let backend = backend_of(first)?;
    let chunks = width.div_ceil(SQ_ERR_CHUNK);
    let grid =
        (u32::try_from(chunks).ok().filter(|&c| c < (1 << 31)), u32::try_from(batch).ok().filter(|&b| b <= 65535));
    let (Some(x), Some(y)) = grid else {
        return Err(Error::Shape(format!("Diffusion-DPO on CUDA takes up to 65535 samples, got {batch}")));
    };
    let mut pointers = Vec::with_capacity(2 * STREAMS);
    for (pred, target) in inputs.streams() {
        pointers.push(ptr(pred)?);
        pointers.push(ptr(target)?);
    }
    let (width_i64, chunk_i64) = (width as i64, SQ_ERR_CHUNK as i64);
    let mut partial = backend.stream().alloc_zeros::<f64>(STREAMS * batch * chunks)?;
    let f = backend.function(&KERNELS, &format!("diffusion_sq_err_{}", first.dtype().name()))?;
    let mut launch = backend.stream().launch_builder(&f);
    for p in &pointers {
        launch.arg(p);
    }
    launch.arg(&width_i64).arg(&chunk_i64).arg(&mut partial);
    let cfg = LaunchConfig { grid_dim: (x, y, STREAMS as u32), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: diffusion_sq_err_<T>(const T* ×8, long long, long long, double*) matches these 11 arguments; each
    // pointer holds batch·width elements of T; the grid is (chunks, batch, 4) and partial holds 4·batch·chunks
    // doubles, one per block.
    unsafe { launch.launch(cfg) }?;
    let host = backend.stream().clone_dtoh(&partial)?;
    Ok(host.chunks(chunks).map(|c| c.iter().sum()).collect())
}

/// `coefficients[side * B + b] · (pred - target)` for the model's winner (side 0) and loser (side 1).
pub(crate) fn diffusion_gradients(
    inputs: &DiffusionDpoInputs,
    coefficients: &[f64],
    width: usize,
) -> Result<(Tensor, Tensor)> {
    let first = inputs.model_winner;
    let (backend, dtype, device) = (backend_of(first)?, first.dtype(), first.device());
    let batch = coefficients.len() / 2;
    let batch_i32 = count(batch, "samples")?;
    let width_i64 = width as i64;
    let coef = backend.stream().clone_htod(coefficients)?;
    let (pw, tw) = (ptr(inputs.model_winner)?, ptr(inputs.target_winner)?);
    let (pl, tl) = (ptr(inputs.model_loser)?, ptr(inputs.target_loser)?);
    let mut grad_w = Tensor::zeros(first.shape(), dtype, device)?;
    let mut grad_l = Tensor::zeros(first.shape(), dtype, device)?;
    let (gw, gl) = (grad_w.cuda_ptr_mut()?.0, grad_l.cuda_ptr_mut()?.0);
    let blocks = (batch * width).div_ceil(THREADS as usize).clamp(1, MAX_ELEMENT_BLOCKS) as u32;
    let f = backend.function(&KERNELS, &format!("diffusion_grad_{}", dtype.name()))?;
    let mut launch = backend.stream().launch_builder(&f);
    launch.arg(&pw).arg(&tw).arg(&pl).arg(&tl).arg(&coef).arg(&batch_i32).arg(&width_i64).arg(&gw).arg(&gl);
    let cfg = LaunchConfig { grid_dim: (blocks, 2, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: diffusion_grad_<T>(const T* ×4, const double*, int, long long, T* ×2) matches these 9 arguments;
    // the predictions, targets and gradients hold batch·width elements of T and coef 2·batch doubles.
    unsafe { launch.launch(cfg) }?;
    Ok((grad_w, grad_l))
}
