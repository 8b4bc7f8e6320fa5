//! Which instruction-set level the CPU products use: the best the CPU has (detected at run time, so one binary runs
//! everywhere), lowered for the whole process by `UNIREWARD_CPU_ISA` or for one thread by [`with_isa`] so that tests
//! and benchmarks can run every path the CPU has, down to the portable one.

use std::cell::Cell;
use std::sync::OnceLock;

use crate::{Error, Result};

/// Instruction-set levels of the CPU products, each including the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// No SIMD assumed (scalar code; what runs on a CPU without AVX2 and FMA, and off x86-64).
    Portable,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512 (F): f32 products in 512-bit registers.
    Avx512,
    /// AVX-512 with AVX512-BF16: bf16 × bf16 products with `vdpbf16ps` instead of widening to f32.
    Avx512Bf16,
}

impl Isa {
    /// Every level, lowest first.
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16];

    /// The name `UNIREWARD_CPU_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512bf16",
        }
    }

    /// Parses a level's name (as [`Isa::name`] writes it).
    pub fn parse(name: &str) -> Result<Isa> {
        Isa::ALL.into_iter().find(|isa| isa.name() == name.trim().to_ascii_lowercase()).ok_or_else(|| {
            let names: Vec<_> = Isa::ALL.iter().map(|isa| isa.name()).collect();
            Error::InvalidArgument(format!("unknown CPU ISA level {name:?}: expected one of {}", names.join(", ")))
        })
    }

    /// Whether this CPU runs this level's instructions.
    pub fn available(self) -> bool {
        self <= detected()
    }
}

/// The best level this CPU has.
pub fn detected() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    use std::arch::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx512bf16") {
        Isa::Avx512Bf16
    } else if has!("avx512f") {
        Isa::Avx512
    } else if has!("avx2") && has!("fma") {
        Isa::Avx2
    } else {
        Isa::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Portable
}

/// The level a name asks for (a value of `UNIREWARD_CPU_ISA`): an error for an unknown name or a level this CPU
/// lacks.
pub fn requested(value: &str) -> Result<Isa> {
    let isa = Isa::parse(value)?;
    if !isa.available() {
        let best = detected().name();
        return Err(Error::InvalidArgument(format!(
            "CPU ISA level {} is not available (this CPU has {best})",
            isa.name()
        )));
    }
    Ok(isa)
}

/// The process-wide level: `UNIREWARD_CPU_ISA` (read once) when it names a level this CPU has, else the detected
/// one. An unknown name or a level the CPU lacks falls back to the detected level with a warning on stderr (never
/// an illegal instruction).
fn process_isa() -> Isa {
    static PROCESS: OnceLock<Isa> = OnceLock::new();
    *PROCESS.get_or_init(|| {
        let Ok(value) = std::env::var("UNIREWARD_CPU_ISA") else { return detected() };
        requested(&value).unwrap_or_else(|e| {
            eprintln!("unireward: ignoring UNIREWARD_CPU_ISA: {e}; using {}", detected().name());
            detected()
        })
    })
}

thread_local! {
    static THREAD_ISA: Cell<Option<Isa>> = const { Cell::new(None) };
}

/// The level the products called from this thread use now.
pub fn active() -> Isa {
    THREAD_ISA.with(Cell::get).unwrap_or_else(process_isa)
}

/// Calls the variant of a function compiled for the active level ([`active`]): `$avx512` at the AVX-512 levels,
/// `$avx2` at AVX2, `$portable` otherwise (and always off x86-64). The two x86-64 variants are `unsafe fn`s
/// compiled with `#[target_feature]` for features their level includes (AVX2 and FMA; AVX-512F), so that
/// `UNIREWARD_CPU_ISA` and [`with_isa`] reach every such function the way they reach the products.
macro_rules! by_isa {
    ($avx512:expr, $avx2:expr, $portable:expr; ($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        let result = match $crate::runtime::cpu::isa::active() {
            $crate::runtime::cpu::isa::Isa::Avx512 | $crate::runtime::cpu::isa::Isa::Avx512Bf16 => {
                // SAFETY: `isa::active` only returns levels this CPU has, and the variant enables no feature
                // beyond its level's.
                unsafe { ($avx512)($($arg),*) }
            }
            // SAFETY: as above.
            $crate::runtime::cpu::isa::Isa::Avx2 => unsafe { ($avx2)($($arg),*) },
            $crate::runtime::cpu::isa::Isa::Portable => ($portable)($($arg),*),
        };
        #[cfg(not(target_arch = "x86_64"))]
        let result = ($portable)($($arg),*);
        result
    }};
}
pub(crate) use by_isa;

/// Runs `f` with the products called from this thread at level `isa` (each product picks its kernels on the thread
/// that calls it, then splits the work over rayon); an error when this CPU lacks it. Products called from other
/// threads, an op's own rayon tasks included, keep the process-wide level.
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> Result<R> {
    requested(isa.name())?;
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            THREAD_ISA.with(|cell| cell.set(self.0));
        }
    }
    let _restore = Restore(THREAD_ISA.with(|cell| cell.replace(Some(isa))));
    Ok(f())
}
