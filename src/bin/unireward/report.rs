//! Formatting of sizes, times and side-by-side rows.

use std::time::Duration;

pub fn bytes(b: usize) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = b as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

pub fn seconds(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// One measured path: its name, wall time and peak extra heap.
pub struct Measured {
    pub name: &'static str,
    pub time: Duration,
    pub peak_bytes: usize,
}

/// Prints the paths side by side, with ratios against the last one (the baseline).
pub fn table(rows: &[Measured]) {
    let baseline = rows.last().expect("at least one row");
    println!("{:<28} {:>10} {:>14} {:>12} {:>12}", "path", "time", "peak extra", "time ratio", "memory ratio");
    for r in rows {
        let memory_ratio = r.peak_bytes as f64 / baseline.peak_bytes.max(1) as f64;
        println!(
            "{:<28} {:>10} {:>14} {:>12.3} {:>12}",
            r.name,
            seconds(r.time),
            bytes(r.peak_bytes),
            r.time.as_secs_f64() / baseline.time.as_secs_f64(),
            if memory_ratio >= 0.01 { format!("{memory_ratio:.3}") } else { format!("{memory_ratio:.1e}") }
        );
    }
}
