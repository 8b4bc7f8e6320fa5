//! The C ABI's argument fuzzer, shared by the libFuzzer target (`fuzz_targets/abi_args.rs`, nightly) and the
//! seeded smoke test on stable (`tests/abi_fuzz_smoke.rs`, run by CI).
//!
//! From a byte string it picks an export and builds its arguments: DLTensor descriptors from per-op templates
//! (so that many calls reach the ops), each possibly broken (NULL descriptor, shape, or data, a wrong dtype, device,
//! rank or dimension, negative or overflowing dimensions, strides that are not row-major, misaligned offsets,
//! partially overlapping outputs), configs that are NULL, default, corrupted or mis-sized, and NULL host outputs.
//! Every descriptor whose data pointer is not NULL points to memory covering its whole described extent, as the
//! ABI's contract requires. The call must return a status (never UR_ERROR_PANIC, never a crash), with a message
//! when it fails.

use std::ffi::{c_void, CStr};
use std::ptr::{null, null_mut};

use unireward::ffi::*;

/// Reads the input a byte at a time; zeros after its end.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    /// True with probability about 1/n.
    fn one_in(&mut self, n: u8) -> bool {
        self.u8().is_multiple_of(n)
    }
}

#[derive(Clone, Copy)]
enum Kind {
    /// The call's float dtype.
    Float,
    /// int32 or int64.
    Int,
    F32,
    I32,
}

/// A dimension of a template: one of the call's sizes, or one of them plus one (CSR offsets).
#[derive(Clone, Copy)]
enum Dim {
    S(usize),
    Plus1(usize),
}
use Dim::{Plus1, S};

/// A descriptor and the memory it points to (kept alive until the call returns).
struct Arg {
    dl: DLTensor,
    _shape: Vec<i64>,
    _strides: Vec<i64>,
    _data: Vec<u64>,
    null: bool,
}

impl Arg {
    fn ptr(&self) -> *const DLTensor {
        if self.null {
            null()
        } else {
            &self.dl
        }
    }
}

const DTYPES: [(u8, u8); 7] = [(2, 32), (4, 16), (2, 16), (0, 32), (0, 64), (2, 64), (1, 8)];

/// One call's arguments, built from the input.
struct Call<'a> {
    r: Bytes<'a>,
    sizes: [i64; 6],
    /// The dtype code of the call's float tensors (most calls want them to agree).
    float: (u8, u8),
    /// Every tensor on a CUDA device no machine has (CUDA unavailable, or no such device).
    cuda: bool,
    args: Vec<Arg>,
}

impl<'a> Call<'a> {
    fn new(data: &'a [u8]) -> Self {
        let mut r = Bytes(data);
        let sizes = [0; 6].map(|_| if r.one_in(12) { 0 } else { 1 + (r.u8() % 4) as i64 });
        let float = DTYPES[(r.u8() % 3) as usize];
        let cuda = r.one_in(25);
        Call { r, sizes, float, cuda, args: Vec::new() }
    }

    /// A tensor from its template, possibly broken; `optional` ones are often left out (NULL).
    fn tensor(&mut self, dims: &[Dim], kind: Kind, optional: bool) -> *const DLTensor {
        let r = &mut self.r;
        let mut shape: Vec<i64> = dims
            .iter()
            .map(|d| match *d {
                S(i) => self.sizes[i],
                Plus1(i) => self.sizes[i] + 1,
            })
            .collect();
        let mut dtype = match kind {
            Kind::Float => self.float,
            Kind::Int => DTYPES[3 + (r.u8() % 2) as usize],
            Kind::F32 => (2, 32),
            Kind::I32 => (0, 32),
        };
        let mut lanes = 1u16;
        let (mut device_type, mut device_id) = if self.cuda { (2, 1000) } else { (1, 0) };
        let (mut null_desc, mut null_shape, mut null_data) = (optional && r.one_in(3), false, false);
        let (mut strides, mut byte_offset) = (None::<Vec<i64>>, 0u64);
        if r.one_in(10) {
            match r.u8() % 12 {
                0 => null_desc = true,
                1 => null_shape = true,
                2 => null_data = true,
                3 => dtype = DTYPES[(r.u8() % 7) as usize],
                4 => lanes = 1 + (r.u8() % 4) as u16,
                5 => (device_type, device_id) = (2, 1000 + r.u8() as i32), // a CUDA ordinal no machine has
                6 => (device_type, device_id) = ((r.u8() % 20) as i32, -(r.u8() as i32)),
                7 if !shape.is_empty() => {
                    shape.pop();
                }
                7 => shape.push(1 + (r.u8() % 3) as i64),
                8 if !shape.is_empty() => {
                    let k = r.u8() as usize % shape.len();
                    shape[k] = if r.one_in(2) { -1 - (r.u8() % 3) as i64 } else { (r.u8() % 6) as i64 };
                }
                // Overflowing: no buffer is allocated for it (only NULL data, or a descriptor refused first).
                9 => shape.iter_mut().for_each(|d| *d = i64::MAX / 2),
                10 => strides = Some(shape.iter().map(|_| (r.u8() % 5) as i64 - 1).collect()),
                _ => byte_offset = 1 + (r.u8() % 3) as u64,
            }
        } else if r.one_in(4) {
            // Explicit row-major strides (accepted), with any stride on dimensions of size 1.
            let mut s = vec![0i64; shape.len()];
            let mut acc = 1i64;
            for k in (0..shape.len()).rev() {
                s[k] = if shape[k] == 1 { r.u8() as i64 } else { acc };
                acc = acc.saturating_mul(shape[k].max(0));
            }
            strides = Some(s);
        }
        let elem = (dtype.1 as u64 / 8).max(1) * lanes as u64;
        let numel = shape.iter().try_fold(1u64, |a, &d| u64::try_from(d).ok().and_then(|d| a.checked_mul(d)));
        let bytes = numel.and_then(|n| n.checked_mul(elem)).filter(|&b| b < 1 << 20);
        // Memory for the whole extent, or NULL when the extent is not a real size (then the library must refuse).
        let mut data = match bytes {
            Some(b) if !null_data => vec![0u64; ((b + byte_offset).div_ceil(8) + 1) as usize],
            _ => Vec::new(),
        };
        fill(r, &mut data, dtype);
        let dl = DLTensor {
            data: if data.is_empty() { null_mut() } else { data.as_mut_ptr().cast() },
            device: DLDevice { device_type, device_id },
            ndim: if r.one_in(40) { 17 + r.u8() as i32 } else { shape.len() as i32 },
            dtype: DLDataType { code: dtype.0, bits: dtype.1, lanes },
            shape: if null_shape { null_mut() } else { shape.as_mut_ptr() },
            strides: strides.as_mut().map_or(null_mut(), |s| s.as_mut_ptr()),
            byte_offset,
        };
        let mut strides = strides.unwrap_or_default();
        let dl = DLTensor { strides: if dl.strides.is_null() { null_mut() } else { strides.as_mut_ptr() }, ..dl };
        self.args.push(Arg { dl, _shape: shape, _strides: strides, _data: data, null: null_desc });
        self.args.last().map_or(null(), Arg::ptr)
    }

    /// An output aliasing (part of) an earlier argument, to exercise the in-place and overlap checks.
    fn alias_of(&mut self, index: usize) -> *const DLTensor {
        let mut dl = self.args[index].dl;
        if self.r.one_in(2) {
            dl.byte_offset += (dl.dtype.bits as u64 / 8).max(1);
        }
        let shape = self.args[index]._shape.clone();
        let mut arg = Arg { dl, _shape: shape, _strides: Vec::new(), _data: Vec::new(), null: false };
        arg.dl.shape = arg._shape.as_mut_ptr();
        arg.dl.strides = null_mut();
        self.args.push(arg);
        self.args.last().map_or(null(), Arg::ptr)
    }

    /// A config: NULL, the defaults, a corrupted byte, or a wrong `struct_size`.
    fn config<T: Copy>(&mut self, default: T, storage: &mut Option<T>) -> *const T {
        self.config_prefix(default, storage, std::mem::size_of::<T>())
    }

    /// [`Self::config`] flipping bits only in the first `plain` bytes (the integers and floats before any
    /// pointer fields, which must stay valid pointers or NULL).
    fn config_prefix<T: Copy>(&mut self, default: T, storage: &mut Option<T>, plain: usize) -> *const T {
        let mut value = default;
        let size = plain.min(std::mem::size_of::<T>());
        // SAFETY: the first `size` bytes of `value` are integers and floats: any bytes are a valid value there.
        let bytes = unsafe { std::slice::from_raw_parts_mut((&mut value as *mut T).cast::<u8>(), size) };
        match self.r.u8() % 8 {
            0 => return null(),
            1 => bytes[4 + self.r.u8() as usize % (size - 4)] ^= 1 << (self.r.u8() % 8),
            // Any size up to the struct's own (a larger one would describe memory the caller does not have).
            2 => bytes[..4]
                .copy_from_slice(&((self.r.u8() as usize % (std::mem::size_of::<T>() + 1)) as u32).to_ne_bytes()),
            _ => {}
        }
        storage.insert(value)
    }

    /// A metrics struct's `struct_size`: mostly its own, sometimes any smaller one (never larger: that would
    /// describe memory the caller does not have).
    fn metrics_size<T>(&mut self) -> u32 {
        let size = std::mem::size_of::<T>();
        (if self.r.one_in(4) { self.r.u8() as usize % size } else { size }) as u32
    }
}

/// Fills a buffer: small integers (valid labels, CSR offsets, permutations), arbitrary bits, or small floats.
fn fill(r: &mut Bytes<'_>, data: &mut [u64], dtype: (u8, u8)) {
    let mode = r.u8() % 4;
    // SAFETY: plain integer memory viewed as bytes.
    let bytes = unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr().cast::<u8>(), data.len() * 8) };
    match (dtype, mode) {
        (_, 0) => bytes.iter_mut().for_each(|b| *b = r.u8()),
        ((0, 64), _) => {
            data.iter_mut().enumerate().for_each(|(i, v)| *v = if mode == 1 { i as u64 } else { (r.u8() % 5) as u64 })
        }
        ((0, 32), _) => bytes.chunks_exact_mut(4).enumerate().for_each(|(i, c)| {
            c.copy_from_slice(&(if mode == 1 { i as i32 } else { (r.u8() % 5) as i32 }).to_ne_bytes())
        }),
        ((2, 32), _) => {
            bytes.chunks_exact_mut(4).for_each(|c| c.copy_from_slice(&((r.u8() as f32 - 128.0) / 32.0).to_ne_bytes()))
        }
        _ => bytes.chunks_exact_mut(2).for_each(|c| c.copy_from_slice(&[0, 0x3c + r.u8() % 4])),
    }
}

// The call's sizes, by index into `Call::sizes`.
const N: usize = 0;
const T: usize = 1;
const V: usize = 2;
const H: usize = 3;
const K: usize = 4;
const C: usize = 5;

/// Runs one fuzz case and returns the call's status; panics (a test failure) if the call panicked across the
/// boundary or broke the status rules.
pub fn run(data: &[u8]) -> ur_status {
    let mut call = Call::new(data);
    let mut ctx: *mut ur_context = null_mut();
    // SAFETY: `ctx` is a valid out-pointer.
    assert_eq!(unsafe { ur_context_create(&mut ctx) }, ur_status::UR_OK);
    let ctx_arg = if call.r.one_in(30) { null_mut() } else { ctx };
    let op = call.r.u8() % 16;
    let (mut c1, mut c2, mut c3, mut c4) = (None, None, None, None);
    let (mut c5, mut c6, mut c7, mut c8) = (None, None, None, None);
    let (mut loss, mut acc) = (0f32, 0f32);
    let loss_out: *mut f32 = if call.r.one_in(10) { null_mut() } else { &mut loss };
    let mut dpo_m = ur_dpo_metrics { struct_size: call.metrics_size::<ur_dpo_metrics>(), ..Default::default() };
    let mut bt_m =
        ur_bradley_terry_metrics { struct_size: call.metrics_size::<ur_bradley_terry_metrics>(), ..Default::default() };
    let mut dd_m =
        ur_diffusion_dpo_metrics { struct_size: call.metrics_size::<ur_diffusion_dpo_metrics>(), ..Default::default() };
    let values = [1.0f32; 256];
    let values_ptr = if call.r.one_in(2) { values.as_ptr() } else { null() };
    // Any count the buffer holds: the library must refuse every count but K.
    let values_len = usize::from(call.r.u8());
    let s = null_mut::<c_void>();
    let c = &mut call;
    // SAFETY: every descriptor is NULL or describes memory covering its extent (see `Call::tensor`); host outputs
    // are NULL or point to live locals; `values` holds more floats than any generated class count.
    let status = unsafe {
        match op {
            0 => {
                let (l, lab, m, cfg) = (
                    c.tensor(&[S(N), S(T), S(V)], Kind::Float, false),
                    c.tensor(&[S(N), S(T)], Kind::Int, false),
                    c.tensor(&[S(N), S(T)], Kind::Int, true),
                    c.config(ur_logprobs_config_default(), &mut c1),
                );
                let outs =
                    [&[S(N)][..], &[S(N)], &[S(N)], &[S(N)], &[S(N), S(T)]].map(|d| c.tensor(d, Kind::F32, true));
                ur_logprobs_forward(ctx_arg, l, lab, m, cfg, outs[0], outs[1], outs[2], outs[3], outs[4], s)
            }
            1 => {
                let l = c.tensor(&[S(N), S(T), S(V)], Kind::Float, false);
                let (lab, m) = (c.tensor(&[S(N), S(T)], Kind::Int, false), c.tensor(&[S(N), S(T)], Kind::Int, true));
                let (lse, counts, g) = (
                    c.tensor(&[S(N), S(T)], Kind::F32, false),
                    c.tensor(&[S(N)], Kind::F32, false),
                    c.tensor(&[S(N)], Kind::F32, false),
                );
                let cfg = c.config(ur_logprobs_config_default(), &mut c1);
                let out = if c.r.one_in(3) { c.alias_of(0) } else { c.tensor(&[S(N), S(T), S(V)], Kind::Float, false) };
                ur_logprobs_backward(ctx_arg, l, lab, m, lse, counts, g, cfg, out, s)
            }
            2 | 3 => {
                let (h, w, b) = (
                    c.tensor(&[S(N), S(T), S(H)], Kind::Float, false),
                    c.tensor(&[S(V), S(H)], Kind::Float, false),
                    c.tensor(&[S(V)], Kind::Float, true),
                );
                let (lab, m) = (c.tensor(&[S(N), S(T)], Kind::Int, false), c.tensor(&[S(N), S(T)], Kind::Int, true));
                let cfg = c.config(ur_fused_linear_config_default(), &mut c2);
                if op == 2 {
                    let outs =
                        [&[S(N)][..], &[S(N)], &[S(N)], &[S(N)], &[S(N), S(T)]].map(|d| c.tensor(d, Kind::F32, true));
                    ur_fused_linear_logprobs_forward(
                        ctx_arg, h, w, b, lab, m, cfg, outs[0], outs[1], outs[2], outs[3], outs[4], s,
                    )
                } else {
                    let (lse, g) = (c.tensor(&[S(N), S(T)], Kind::F32, false), c.tensor(&[S(N)], Kind::F32, false));
                    let (gh, gw, gb) = (
                        c.tensor(&[S(N), S(T), S(H)], Kind::Float, false),
                        c.tensor(&[S(V), S(H)], Kind::Float, false),
                        c.tensor(&[S(V)], Kind::Float, true),
                    );
                    ur_fused_linear_logprobs_backward(ctx_arg, h, w, b, lab, m, lse, g, cfg, gh, gw, gb, s)
                }
            }
            4 => {
                let f = [false, false, true, true].map(|o| c.tensor(&[S(N)], Kind::Float, o));
                let (lc, lr) = (c.tensor(&[S(N)], Kind::Int, true), c.tensor(&[S(N)], Kind::Int, true));
                let plain = std::mem::offset_of!(ur_dpo_config, loss_types);
                let cfg = c.config_prefix(ur_dpo_config_default(), &mut c3, plain);
                let (gc, gr) = (c.tensor(&[S(N)], Kind::Float, false), c.tensor(&[S(N)], Kind::Float, false));
                let m = if c.r.one_in(2) { null_mut() } else { &mut dpo_m };
                ur_dpo_loss(ctx_arg, f[0], f[1], f[2], f[3], lc, lr, cfg, loss_out, gc, gr, m, s)
            }
            5 => {
                let f = [false, false, true].map(|o| c.tensor(&[S(N)], Kind::Float, o));
                let cfg = c.config(ur_bradley_terry_config_default(), &mut c4);
                let (gc, gr) = (c.tensor(&[S(N)], Kind::Float, false), c.tensor(&[S(N)], Kind::Float, false));
                let m = if c.r.one_in(2) { null_mut() } else { &mut bt_m };
                ur_bradley_terry_loss(ctx_arg, f[0], f[1], f[2], cfg, loss_out, gc, gr, m, s)
            }
            6 => {
                let (rw, o) = (c.tensor(&[S(N), S(K)], Kind::Float, false), c.tensor(&[S(N), S(K)], Kind::Int, true));
                let cfg = c.config(ur_kwise_config_default(), &mut c5);
                let g = c.tensor(&[S(N), S(K)], Kind::Float, false);
                let a = if c.r.one_in(2) { null_mut() } else { &mut acc };
                ur_kwise_loss(ctx_arg, rw, o, cfg, loss_out, g, a, s)
            }
            7 => {
                let x = [0; 6].map(|_| c.tensor(&[S(N), S(T), S(H)], Kind::Float, false));
                let cfg = c.config(ur_diffusion_dpo_config_default(), &mut c6);
                let (gw, gl) = (
                    c.tensor(&[S(N), S(T), S(H)], Kind::Float, false),
                    c.tensor(&[S(N), S(T), S(H)], Kind::Float, false),
                );
                let m = if c.r.one_in(2) { null_mut() } else { &mut dd_m };
                ur_diffusion_dpo_loss(ctx_arg, x[0], x[1], x[2], x[3], x[4], x[5], cfg, loss_out, gw, gl, m, s)
            }
            8 | 9 => {
                let (h, e, w, b) = (
                    c.tensor(&[S(N), S(T), S(H)], Kind::Float, false),
                    c.tensor(&[S(N)], Kind::Int, false),
                    c.tensor(&[S(C), S(H)], Kind::Float, false),
                    c.tensor(&[S(C)], Kind::Float, true),
                );
                if op == 8 {
                    ur_scalar_head_forward(ctx_arg, h, e, w, b, c.tensor(&[S(N), S(C)], Kind::F32, false), s)
                } else {
                    let g = c.tensor(&[S(N), S(C)], Kind::F32, false);
                    let (gh, gw, gb) = (
                        c.tensor(&[S(N), S(T), S(H)], Kind::Float, false),
                        c.tensor(&[S(C), S(H)], Kind::Float, false),
                        c.tensor(&[S(C)], Kind::Float, true),
                    );
                    ur_scalar_head_backward(ctx_arg, h, e, w, b, g, gh, gw, gb, s)
                }
            }
            10 | 11 => {
                let (l, o, i) = (
                    c.tensor(&[S(N), S(V)], Kind::Float, false),
                    c.tensor(&[Plus1(K)], Kind::Int, false),
                    c.tensor(&[S(K)], Kind::Int, false),
                );
                if op == 10 {
                    let outs = [&[S(N), S(K)][..], &[S(N), S(K)], &[S(N)]].map(|d| c.tensor(d, Kind::F32, true));
                    ur_verdict_head_forward(ctx_arg, l, o, i, values_ptr, values_len, outs[0], outs[1], outs[2], s)
                } else {
                    let (glp, ges) = (c.tensor(&[S(N), S(K)], Kind::F32, true), c.tensor(&[S(N)], Kind::F32, true));
                    ur_verdict_head_backward(
                        ctx_arg,
                        l,
                        o,
                        i,
                        values_ptr,
                        values_len,
                        glp,
                        ges,
                        c.tensor(&[S(N), S(V)], Kind::Float, false),
                        s,
                    )
                }
            }
            12 => {
                let log_odds = c.r.one_in(2);
                let v = if log_odds {
                    c.tensor(&[S(N), S(K), S(K)], Kind::Float, false)
                } else {
                    c.tensor(&[S(N), S(K)], Kind::Float, false)
                };
                let mut cfg = ur_compare_config_default();
                cfg.verdict_kind = log_odds as i32;
                let cfg = c.config(cfg, &mut c7);
                let nkk = c.tensor(&[S(N), S(K), S(K)], Kind::F32, true);
                let nk = [Kind::F32, Kind::I32, Kind::I32, Kind::F32].map(|k| c.tensor(&[S(N), S(K)], k, true));
                let n = [Kind::I32, Kind::I32, Kind::I32, Kind::I32, Kind::F32].map(|k| c.tensor(&[S(N)], k, true));
                ur_compare(ctx_arg, v, cfg, nkk, nk[0], nk[1], nk[2], nk[3], n[0], n[1], n[2], n[3], n[4], s)
            }
            13 => {
                let log_odds = c.r.one_in(2);
                let v = if log_odds {
                    c.tensor(&[S(N), S(K), S(K)], Kind::Float, false)
                } else {
                    c.tensor(&[S(N), S(K)], Kind::Float, false)
                };
                let p = c.tensor(&[S(N), S(K)], Kind::Float, false);
                let mut cfg = ur_select_config_default();
                cfg.verdict_kind = log_odds as i32;
                let cfg = c.config(cfg, &mut c8);
                let n = [Kind::I32, Kind::I32, Kind::F32, Kind::F32, Kind::I32].map(|k| c.tensor(&[S(N)], k, true));
                ur_select_pairs(ctx_arg, v, p, cfg, n[0], n[1], n[2], n[3], n[4], s)
            }
            14 => image_processor(c, ctx_arg),
            _ => {
                assert!(!CStr::from_ptr(ur_status_name(i32::from_ne_bytes([0; 4].map(|_| c.r.u8())))).is_empty());
                ur_context_create(null_mut())
            }
        }
    };
    check(status);
    // SAFETY: `ctx` came from `ur_context_create`.
    unsafe { ur_context_free(ctx) };
    status
}

/// The image processor (transformers' defaults) on a small image of any size (0 included) and any layout code,
/// into an output of the right count or one off, its pixels sometimes the output's own bytes.
///
/// # Safety
/// `ctx` is NULL or a live context.
unsafe fn image_processor(c: &mut Call<'_>, ctx: *mut ur_context) -> ur_status {
    let mut processor = null_mut();
    // SAFETY: this function's contract; `processor` is a valid out-pointer.
    let created = unsafe { ur_image_processor_create(ctx, null(), &mut processor) };
    if created != ur_status::UR_OK {
        return created;
    }
    let (height, width) = (u64::from(c.r.u8() % 9), u64::from(c.r.u8() % 9));
    let layout = i32::from(c.r.u8() % 3);
    let mut shape = [0u64; 4];
    // SAFETY: a live processor and four writable values.
    let known = unsafe { ur_image_processor_output_shape(processor, height, width, layout, shape.as_mut_ptr()) };
    let expected = if known == ur_status::UR_OK { shape.iter().product::<u64>() } else { 16 };
    let out_len = match c.r.u8() % 3 {
        0 => expected.saturating_sub(1),
        1 => expected + 1,
        _ => expected,
    };
    let mut out = vec![0f32; out_len as usize];
    let pixels = vec![7u8; (height * width * 3) as usize];
    let pixels_ptr = match c.r.u8() % 8 {
        0 => null(),
        // The output's own bytes, as many as the pixels need (the output is never smaller).
        1 if out.len() * 4 >= pixels.len() => out.as_ptr().cast::<u8>(),
        _ => pixels.as_ptr(),
    };
    // SAFETY: `pixels_ptr` is NULL or holds height·width·3 bytes; `out` holds `out_len` floats.
    let status =
        unsafe { ur_image_processor_run(processor, pixels_ptr, height, width, layout, out.as_mut_ptr(), out_len) };
    // SAFETY: created above, used by no other call.
    unsafe { ur_image_processor_free(processor) };
    status
}

/// The status rules: no panic crossed (UR_ERROR_PANIC means one was caught), a failure has a message.
fn check(status: ur_status) {
    // SAFETY: the message is a NUL-terminated string valid until the next failing call on this thread.
    let message = unsafe { CStr::from_ptr(ur_last_error_message()) }.to_string_lossy().into_owned();
    assert_ne!(status, ur_status::UR_ERROR_PANIC, "an export panicked: {message}");
    if status != ur_status::UR_OK {
        assert!(!message.is_empty(), "{status:?} without a message");
    }
}
