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
const MR: usize = 12;
/// Columns of a register tile: two 16-lane f32 accumulators per row (MR × 2 = 24 of the 32 zmm registers; 12 rows
/// measured a few per cent faster than 8 on Zen 5).
const NR: usize = 32;
/// Most pairs of the inner dimension a packed `b` panel holds: NR × 256 words = 32 KiB.
const KC_PAIRS: usize = 256;
/// Most rows of `a` one task covers.
const MC: usize = 256;
/// Packed `a` rows a task may re-read for each of its column panels (half a typical 1–2 MiB L2).
const A_L2_BYTES: usize = 512 << 10;

/// Elements 2p (low half) and 2p+1 (high half) along the inner dimension, as `vdpbf16ps` pairs them.
fn pair(lo: bf16, hi: bf16) -> u32 {
    u32::from(lo.to_bits()) | u32::from(hi.to_bits()) << 16
}

/// Pairs `pairs` of columns `first..first + width` of `src` (k × n: pairs run down its columns) into `panel`, word
/// `(p - pairs.start) * width + c` holding column `first + c`'s elements 2p and 2p+1. Columns past `n` and the
/// missing half of an odd k's last pair are zero. Both operands are packed this way: `b` itself (width NR), and
/// `aᵀ` (width MR). The loops run along `src`'s contiguous dimension when it has one.
#[target_feature(enable = "avx512f")]
fn pack_panel(src: MatRef<'_, bf16>, pairs: Range<usize>, first: usize, width: usize, panel: &mut [u32]) {
    let (k, cols) = (src.rows, width.min(src.cols - first));
    let panel = &mut panel[..pairs.len() * width];
    if cols < width {
        panel.fill(0);
    }
    if src.col_stride == 1 {
        // Rows of src (k) are contiguous: zip two rows at a time.
        for (words, p) in panel.chunks_exact_mut(width).zip(pairs) {
            let row = |i: usize| &src.data[i * src.row_stride + first..][..cols];
            let lo = row(2 * p);
            if 2 * p + 1 < k {
                let hi = row(2 * p + 1);
                words.iter_mut().zip(lo.iter().zip(hi)).for_each(|(w, (&lo, &hi))| *w = pair(lo, hi));
            } else {
                words.iter_mut().zip(lo).for_each(|(w, &lo)| *w = pair(lo, bf16::ZERO));
            }
        }
    } else if src.row_stride == 1 {
        // Columns of src are contiguous: each column's pairs are adjacent elements. Blocks of 16 columns × 16 pairs
        // are transposed in registers; the rest go one word at a time, `width` apart.
        let full = pairs.end.min(k / 2).saturating_sub(pairs.start);
        let column = |c: usize| &src.data[(first + c) * src.col_stride..];
        let (block_cols, block_pairs) = (cols / 16 * 16, full / 16 * 16);
        for c in (0..block_cols).step_by(16) {
            for q in (0..block_pairs).step_by(16) {
                // SAFETY: each slice is 32 bf16 (64 bytes) of one column, bounds-checked; loads are unaligned.
                let words = std::array::from_fn(|i| unsafe {
                    _mm512_loadu_si512(column(c + i)[2 * (pairs.start + q)..][..32].as_ptr().cast())
                });
                for (i, word) in transpose_16x16(words).into_iter().enumerate() {
                    let out = &mut panel[(q + i) * width + c..][..16];
                    // SAFETY: `out` is 16 words (64 bytes), bounds-checked; the store is unaligned.
                    unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), word) };
                }
            }
        }
        for c in 0..cols {
            let column = column(c);
            let from = if c < block_cols { block_pairs } else { 0 };
            let adjacent = column[2 * (pairs.start + from)..][..2 * (full - from)].chunks_exact(2);
            for (q, two) in (from..).zip(adjacent) {
                panel[q * width + c] = pair(two[0], two[1]);
            }
            if full < pairs.len() {
                panel[full * width + c] = pair(column[k - 1], bf16::ZERO);
            }
        }
    } else {
        let at =
            |i: usize, j: usize| if i < k { src.data[i * src.row_stride + j * src.col_stride] } else { bf16::ZERO };
        for (q, p) in pairs.enumerate() {
            for c in 0..cols {
                panel[q * width + c] = pair(at(2 * p, first + c), at(2 * p + 1, first + c));
            }
        }
    }
}

/// The transpose of a 16 × 16 block of words: `rows[i]` lane j becomes lane i of the result's vector j
/// (128-bit-lane interleaves, then two rounds of 128-bit-lane shuffles).
#[target_feature(enable = "avx512f")]
fn transpose_16x16(rows: [__m512i; 16]) -> [__m512i; 16] {
    let zero = _mm512_setzero_si512();
    // t[4g + {0, 1, 2, 3}]: rows 4g, 4g+1 (low, high word pairs of each 128-bit lane), then rows 4g+2, 4g+3.
    let mut t = [zero; 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(rows[2 * i], rows[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(rows[2 * i], rows[2 * i + 1]);
    }
    // u[4g + j]: rows 4g..4g+3 of columns j, j+4, j+8, j+12 (one per 128-bit lane).
    let mut u = [zero; 16];
    for b in (0..16).step_by(4) {
        u[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
        u[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
        u[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
        u[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
    }
    // v[8h + 2j]: columns j, j+8 of rows 8h..8h+3 and 8h+4..8h+7; v[8h + 2j + 1]: columns j+4, j+12 likewise.
    let mut v = [zero; 16];
    for h in [0, 8] {
        for j in 0..4 {
            v[h + 2 * j] = _mm512_shuffle_i32x4::<0x88>(u[h + j], u[h + 4 + j]);
            v[h + 2 * j + 1] = _mm512_shuffle_i32x4::<0xdd>(u[h + j], u[h + 4 + j]);
        }
    }
    let mut out = [zero; 16];
    for j in 0..4 {
        out[j] = _mm512_shuffle_i32x4::<0x88>(v[2 * j], v[8 + 2 * j]);
        out[j + 8] = _mm512_shuffle_i32x4::<0xdd>(v[2 * j], v[8 + 2 * j]);
        out[j + 4] = _mm512_shuffle_i32x4::<0x88>(v[2 * j + 1], v[9 + 2 * j]);
        out[j + 12] = _mm512_shuffle_i32x4::<0xdd>(v[2 * j + 1], v[9 + 2 * j]);
    }
    out
}

/// `a` (m × k) as panels of MR rows holding every pair, word `p * MR + r` of a panel holding row r's pair p.
///
/// # Safety
/// The CPU has AVX-512F.
unsafe fn pack_a(a: MatRef<'_, bf16>, pairs: usize) -> Vec<u32> {
    let mut packed = vec![0u32; a.rows.div_ceil(MR) * pairs * MR];
    packed.par_chunks_mut(pairs * MR).enumerate().for_each(|(panel_index, panel)| {
        // SAFETY: the caller guarantees AVX-512F.
        unsafe { pack_panel(a.t(), 0..pairs, panel_index * MR, MR, panel) };
    });
    packed
}

/// 16 words as the 32 bf16 (16 pairs) `vdpbf16ps` reads.
#[inline(always)]
fn bf16_pairs(words: __m512i) -> __m512bh {
    // SAFETY: both are plain 64-byte vectors, and every bit pattern is a valid `__m512bh`.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(words) }
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
        let (b0, b1) = unsafe {
            let b = b_panel.as_ptr().add(p * NR);
            (_mm512_loadu_si512(b.cast()), _mm512_loadu_si512(b.add(16).cast()))
        };
        let (b0, b1) = (bf16_pairs(b0), bf16_pairs(b1));
        for (r, acc) in acc.iter_mut().enumerate() {
            let a = bf16_pairs(_mm512_set1_epi32(a_panel[p * MR + r] as i32));
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
    // SAFETY: the caller guarantees AVX-512F.
    let packed_a = unsafe { pack_a(a, pairs) };
    let (row_panels, col_panels) = (m.div_ceil(MR), n.div_ceil(NR));
    let panels_per_row_block = (MC / MR).min(row_panels);
    let row_blocks = row_panels.div_ceil(panels_per_row_block);
    let k_blocks = pairs.div_ceil(KC_PAIRS);
    let pairs_per_block = pairs.div_ceil(k_blocks);
    // A task walks its column panels with every block of pairs per panel (the dst tile stays in L1) while its rows
    // of packed `a` fit in L2, so that re-reading them for each panel is cheap; past that (a long inner dimension)
    // it walks the blocks of pairs outermost, reading its rows of `a` once, in few tasks.
    let a_fits_l2 = panels_per_row_block * MR * pairs * 4 <= A_L2_BYTES;
    // Tasks: blocks of at most MC rows × column panels; about 16 per thread to balance the load when `a` fits in
    // L2 (packed `a` is shared, and each `b` panel is packed once per row block however the columns are split).
    let threads = rayon::current_num_threads();
    let target_tasks = if a_fits_l2 { 16 * threads } else { threads };
    let panels_per_col_block = col_panels.div_ceil(target_tasks.div_ceil(row_blocks).clamp(1, col_panels));
    let col_blocks = col_panels.div_ceil(panels_per_col_block);
    let out = SharedDst(dst.as_mut_ptr());
    (0..row_blocks * col_blocks).into_par_iter().for_each_init(
        || vec![0u32; pairs_per_block * NR],
        |b_panel, task| {
            let (row_block, col_block) = (task / col_blocks, task % col_blocks);
            let row_panels_here =
                row_block * panels_per_row_block..row_panels.min((row_block + 1) * panels_per_row_block);
            let col_panels_here =
                col_block * panels_per_col_block..col_panels.min((col_block + 1) * panels_per_col_block);
            let mut run = |col_panel: usize, k_block: usize| {
                let block = k_block * pairs_per_block..pairs.min((k_block + 1) * pairs_per_block);
                // SAFETY: the caller guarantees AVX-512F.
                unsafe { pack_panel(b, block.clone(), col_panel * NR, NR, b_panel) };
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
            };
            if a_fits_l2 {
                col_panels_here.for_each(|col_panel| (0..k_blocks).for_each(|k_block| run(col_panel, k_block)));
            } else {
                (0..k_blocks).for_each(|k_block| col_panels_here.clone().for_each(|col_panel| run(col_panel, k_block)));
            }
        },
    );
}
