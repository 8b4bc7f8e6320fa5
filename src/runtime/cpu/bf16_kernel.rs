//! bf16 × bf16 → f32 products with AVX512-BF16's `vdpbf16ps` (16 lanes, each adding two bf16 products to an f32
//! accumulator), no widening of either operand.
//!
//! Both operands are packed into the pair-interleaved layout the instruction reads: elements 2p and 2p+1 along the
//! inner dimension side by side in one 32-bit word. `a` is packed once, whole (an activation or gradient: small),
//! as panels of [`MR`] rows; `b` one [`NR`]-column panel of at most [`KC_PAIRS`] pairs at a time (≤ 32 KiB, kept
//! in L1 while every row panel of `a` runs against it). Each [`MR`] × [`NR`] register tile accumulates in f32
//! over a block of pairs, then adds into `dst`. Tasks are blocks of output tiles, spread over rayon's pool.
//!
//! Like every `vdpbf16ps` product (PyTorch's among them), subnormal bf16 inputs and subnormal partial sums are
//! flushed to zero; normal values give the f32-accumulated product.

use std::arch::x86_64::*;
use std::ops::Range;

use half::bf16;
use rayon::prelude::*;

use super::MatRef;

/// Rows of a register tile: one broadcast pair each.
const MR: usize = 8;
/// Columns of a register tile: two 16-lane f32 accumulators per row (MR × 2 = 16 of the 32 zmm registers).
const NR: usize = 32;
/// Most pairs of the inner dimension a packed `b` panel holds: NR × 256 words = 32 KiB.
const KC_PAIRS: usize = 256;
/// Most rows of `a` one task covers: its packed block (MC × k bf16) stays in L2 while the task walks its columns.
const MC: usize = 256;

/// Elements 2p (low half) and 2p+1 (high half) along the inner dimension, as `vdpbf16ps` pairs them.
fn pair(lo: bf16, hi: bf16) -> u32 {
    u32::from(lo.to_bits()) | u32::from(hi.to_bits()) << 16
}

/// Element (i, j) of `m`, zero past its last column (an odd inner dimension's missing pair half).
fn at(m: MatRef<'_, bf16>, i: usize, j: usize) -> bf16 {
    if j < m.cols {
        m.data[i * m.row_stride + j * m.col_stride]
    } else {
        bf16::ZERO
    }
}

/// `a` (m × k) as panels of MR rows, each `pairs` words per row, word `p * MR + r` holding row r's pair p. Rows
/// past `m` stay zero.
fn pack_a(a: MatRef<'_, bf16>, pairs: usize) -> Vec<u32> {
    let mut packed = vec![0u32; a.rows.div_ceil(MR) * pairs * MR];
    packed.par_chunks_mut(pairs * MR).enumerate().for_each(|(panel_index, panel)| {
        let first = panel_index * MR;
        for r in 0..MR.min(a.rows - first) {
            for p in 0..pairs {
                panel[p * MR + r] = pair(at(a, first + r, 2 * p), at(a, first + r, 2 * p + 1));
            }
        }
    });
    packed
}

/// Pairs `pairs` of columns `first..first + NR` of `b` (k × n) into `panel`, word `(p - pairs.start) * NR + c`
/// holding column c's pair p; columns past `n` are zero. The loops run along `b`'s contiguous dimension.
fn pack_b(b: MatRef<'_, bf16>, pairs: Range<usize>, first: usize, panel: &mut [u32]) {
    let cols = NR.min(b.cols - first);
    let bt = b.t(); // (j, k): pairs run along bt's columns
    let word = |c: usize, p: usize| pair(at(bt, first + c, 2 * p), at(bt, first + c, 2 * p + 1));
    if b.col_stride == 1 {
        for (q, p) in pairs.enumerate() {
            let row = &mut panel[q * NR..(q + 1) * NR];
            row.iter_mut().enumerate().for_each(|(c, w)| *w = if c < cols { word(c, p) } else { 0 });
        }
    } else {
        for c in 0..NR {
            for (q, p) in pairs.clone().enumerate() {
                panel[q * NR + c] = if c < cols { word(c, p) } else { 0 };
            }
        }
    }
}

/// How a finished register tile goes into `dst`.
#[derive(Clone, Copy)]
enum Epilogue {
    /// `dst = tile` (the first block of pairs with `beta = 0`: what `dst` held is ignored, NaN included).
    Store,
    /// `dst = beta · dst + tile` (the first block of pairs).
    Scale(f32),
    /// `dst += tile` (the later blocks).
    Add,
}

/// One MR × NR tile: `pairs` pairs of `a_panel` (MR words per pair) against `b_panel` (NR words per pair), the
/// first `rows` × `cols` of the result put into `dst` (rows `ldc` apart) as `epilogue` says.
///
/// # Safety
/// The CPU has AVX-512F and AVX512-BF16; `dst` is valid for reads and writes of `rows` rows of `cols` elements,
/// `ldc` apart, that no other thread touches meanwhile.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    pairs: usize,
    a_panel: &[u32],
    b_panel: &[u32],
    dst: *mut f32,
    ldc: usize,
    (rows, cols): (usize, usize),
    epilogue: Epilogue,
) {
    assert!(a_panel.len() >= pairs * MR && b_panel.len() >= pairs * NR && rows <= MR && cols <= NR);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..pairs {
        // SAFETY: p < pairs, so both NR-word reads of pair p lie inside `b_panel` (asserted above); the intrinsic
        // reads unaligned memory.
        let (b0, b1): (__m512bh, __m512bh) = unsafe {
            let b = b_panel.as_ptr().add(p * NR);
            (
                std::mem::transmute(_mm512_loadu_si512(b.cast())),
                std::mem::transmute(_mm512_loadu_si512(b.add(16).cast())),
            )
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: a bit pattern of 16 bf16 pairs; transmuting between 64-byte vector types.
            let a: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(a_panel[p * MR + r] as i32)) };
            acc[0] = _mm512_dpbf16_ps(acc[0], a, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], a, b1);
        }
    }
    for (r, acc) in acc.iter().enumerate().take(rows) {
        for (half, &sum) in acc.iter().enumerate() {
            let first = half * 16;
            if first >= cols {
                break;
            }
            let mask: __mmask16 = if cols - first >= 16 { u16::MAX } else { (1u16 << (cols - first)) - 1 };
            // SAFETY: row r < rows and columns first..cols of it are inside the caller's tile of `dst` (the
            // function's contract); masked-off lanes are neither read nor written.
            unsafe {
                let out = dst.add(r * ldc + first);
                let value = match epilogue {
                    Epilogue::Store => sum,
                    Epilogue::Scale(beta) => {
                        _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, out), _mm512_set1_ps(beta), sum)
                    }
                    Epilogue::Add => _mm512_add_ps(_mm512_maskz_loadu_ps(mask, out), sum),
                };
                _mm512_mask_storeu_ps(out, mask, value);
            }
        }
    }
}

/// `dst`'s base pointer, shared by the tasks that each write their own disjoint tiles.
#[derive(Clone, Copy)]
struct SharedDst(*mut f32);
impl SharedDst {
    /// The pointer `offset` elements in (a method, so closures capture the whole `Send` wrapper).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}
// SAFETY: the tasks write disjoint tiles of `dst` (see `matmul`), so sharing the pointer across threads is sound.
unsafe impl Send for SharedDst {}
// SAFETY: as above.
unsafe impl Sync for SharedDst {}

/// `dst = beta · dst + a · b` for a row-major `dst` of `a.rows × b.cols` (`beta = 0` ignores what `dst` held).
///
/// # Safety
/// The CPU has AVX-512F and AVX512-BF16. The shapes agree and every view lies inside its slice (the caller
/// asserts both).
pub(super) unsafe fn matmul(dst: &mut [f32], a: MatRef<'_, bf16>, b: MatRef<'_, bf16>, beta: f32) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(b.rows == k && dst.len() >= m * n, "matmul: shapes disagree");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst[..m * n].iter_mut().for_each(|d| *d = if beta == 0.0 { 0.0 } else { beta * *d });
        return;
    }
    let pairs = k.div_ceil(2);
    let packed_a = pack_a(a, pairs);
    let (row_panels, col_panels) = (m.div_ceil(MR), n.div_ceil(NR));
    // Tasks: blocks of at most MC rows × enough column panels for about four tasks per thread.
    let panels_per_row_block = (MC / MR).min(row_panels);
    let row_blocks = row_panels.div_ceil(panels_per_row_block);
    let target_tasks = 4 * rayon::current_num_threads();
    let panels_per_col_block = col_panels.div_ceil(target_tasks.div_ceil(row_blocks).clamp(1, col_panels));
    let col_blocks = col_panels.div_ceil(panels_per_col_block);
    let k_blocks = pairs.div_ceil(KC_PAIRS);
    let pairs_per_block = pairs.div_ceil(k_blocks);
    let out = SharedDst(dst.as_mut_ptr());
    (0..row_blocks * col_blocks).into_par_iter().for_each_init(
        || vec![0u32; pairs_per_block * NR],
        |b_panel, task| {
            let (row_block, col_block) = (task / col_blocks, task % col_blocks);
            let row_panels_here =
                row_block * panels_per_row_block..row_panels.min((row_block + 1) * panels_per_row_block);
            let col_panels_here =
                col_block * panels_per_col_block..col_panels.min((col_block + 1) * panels_per_col_block);
            for col_panel in col_panels_here {
                for k_block in 0..k_blocks {
                    let block = k_block * pairs_per_block..pairs.min((k_block + 1) * pairs_per_block);
                    pack_b(b, block.clone(), col_panel * NR, b_panel);
                    let epilogue = if k_block > 0 {
                        Epilogue::Add
                    } else if beta == 0.0 {
                        Epilogue::Store
                    } else {
                        Epilogue::Scale(beta)
                    };
                    for row_panel in row_panels_here.clone() {
                        let a_panel = &packed_a[(row_panel * pairs + block.start) * MR..(row_panel + 1) * pairs * MR];
                        let size = (MR.min(m - row_panel * MR), NR.min(n - col_panel * NR));
                        let corner = row_panel * MR * n + col_panel * NR;
                        // SAFETY: the caller guarantees the CPU features; the tile's rows × cols from `corner` lie
                        // inside dst's m × n (asserted above), and each (row panel, column panel) tile belongs to
                        // exactly one task, so no other thread touches it.
                        unsafe { tile(block.len(), a_panel, b_panel, out.at(corner), n, size, epilogue) };
                    }
                }
            }
        },
    );
}
