//! The Bradley–Terry fit of one group on the CPU: ridge-regularised maximum likelihood by damped Newton steps
//! (see [`BradleyTerryFit`](super::BradleyTerryFit)). `fit_bt` in `kernels/compare.cu` is the same algorithm.
//!
//! The log-strengths, gradient and objective are f64; the Newton system is built and solved in f32 (the CUDA kernel
//! keeps it in shared memory). Its rounding only changes the step, not the fixed point, which is where the f64
//! gradient vanishes: near it, steps shrink geometrically at a rate of about cond(H)·2⁻²⁴.
//!
//! Each evaluation (objective, gradient and system together, one exponential per pair) happens at the trial point
//! of the line search, so an accepted step already has the next system; a typical fit takes 3–8 steps.

use super::group::{Group, Link};
use super::BradleyTerryFit;

/// Step halvings tried before a step is taken anyway (it is then 2⁻³⁰ of the Newton step).
pub(crate) const MAX_HALVINGS: u32 = 30;

/// The convergence report of one group.
pub(crate) struct FitReport {
    pub iterations: i32,
    pub converged: bool,
}

/// Reused buffers of one worker thread, sized for K candidates.
pub(crate) struct Workspace {
    /// `P[i,j]` in f64, NaN for void pairs.
    prob: Vec<f64>,
    /// The negated Hessian (f32, K×K) and the right-hand side, overwritten by the solve.
    system: Vec<f32>,
    rhs: Vec<f32>,
    /// The f64 gradient, and the Newton step of the current iteration.
    grad: Vec<f64>,
    step: Vec<f32>,
    theta: Vec<f64>,
    trial: Vec<f64>,
}

impl Workspace {
    pub fn new(k: usize) -> Self {
        Workspace {
            prob: vec![0.0; k * k],
            system: vec![0.0; k * k],
            rhs: vec![0.0; k],
            grad: vec![0.0; k],
            step: vec![0.0; k],
            theta: vec![0.0; k],
            trial: vec![0.0; k],
        }
    }
}

impl Workspace {
    /// `P[i,j]` in f64 as the last fit used it: ½ on the diagonal, NaN for void pairs.
    pub fn probabilities(&self) -> &[f64] {
        &self.prob
    }

    fn fill_probabilities(&mut self, group: Group<'_>, link: Link) {
        let k = self.theta.len();
        for i in 0..k {
            self.prob[i * k + i] = 0.5;
            for j in i + 1..k {
                let m = group.margin(i, j);
                self.prob[i * k + j] = link.probability(m);
                self.prob[j * k + i] = link.probability(-m);
            }
        }
    }
}

/// Evaluates the objective `Σ_{i≠j} P[i,j]·log σ(θ_i − θ_j) − ½·ridge·Σθ²` at `point` and builds the Newton system
/// there: `rhs` = the gradient, `system` = minus the Hessian (SPD thanks to the ridge). One exponential and one
/// logarithm per valid pair.
fn evaluate(ws: &mut Workspace, point: &[f64], ridge: f64) -> f64 {
    let k = point.len();
    let mut value = 0.0;
    ws.system.fill(0.0);
    for (i, (g, &th)) in ws.grad.iter_mut().zip(point).enumerate() {
        *g = -ridge * th;
        value -= 0.5 * ridge * th * th;
        ws.system[i * k + i] = ridge as f32;
    }
    for i in 0..k {
        for j in i + 1..k {
            let (p, q) = (ws.prob[i * k + j], ws.prob[j * k + i]);
            if p.is_nan() {
                continue;
            }
            let pair = Pair::at(point[i] - point[j]);
            value += p * pair.log_sig + q * pair.log_sig_neg;
            // d/dθ_i of the pair's two terms, written without cancellation when P is 0 or 1.
            let g = p * pair.sig_neg - q * pair.sig;
            ws.grad[i] += g;
            ws.grad[j] -= g;
            let w = pair.sig * pair.sig_neg;
            ws.system[i * k + i] += w as f32;
            ws.system[j * k + j] += w as f32;
            ws.system[i * k + j] = -w as f32;
            ws.system[j * k + i] = -w as f32;
        }
    }
    for (r, &g) in ws.rhs.iter_mut().zip(&ws.grad) {
        *r = g as f32;
    }
    value
}

/// σ(±x) and log σ(±x) from one exponential.
struct Pair {
    sig: f64,
    sig_neg: f64,
    log_sig: f64,
    log_sig_neg: f64,
}

impl Pair {
    fn at(x: f64) -> Pair {
        let e = (-x.abs()).exp();
        let big = 1.0 / (1.0 + e);
        let small = e * big;
        let l = e.ln_1p();
        let (sig, sig_neg) = if x >= 0.0 { (big, small) } else { (small, big) };
        Pair { sig, sig_neg, log_sig: x.min(0.0) - l, log_sig_neg: (-x).min(0.0) - l }
    }
}

/// Adds `c/k` to every entry of the K×K `system`, c its mean diagonal. The pair terms are blind to a common shift of
/// θ, so their Hessian is singular along the all-ones vector and only the ridge kept the system invertible — and a
/// tiny ridge vanishes in f32 next to the pair weights (1e-8 + 0.25 rounds to 0.25), leaving a zero pivot and a NaN
/// step. θ starts centred and the gradient of the pair terms sums to zero, so gradient and steps are orthogonal to
/// the all-ones vector, where the added term is zero: the Newton step is unchanged, only its conditioning is.
fn pin_common_shift(system: &mut [f32], k: usize) {
    let shift = (0..k).map(|i| f64::from(system[i * k + i])).sum::<f64>() / (k * k) as f64;
    for x in system.iter_mut() {
        *x += shift as f32;
    }
}

/// Solves `system · x = rhs` in place (x in `rhs`) by Gaussian elimination without pivoting (the system is SPD),
/// in the order of the kernel's parallel version.
fn solve(system: &mut [f32], rhs: &mut [f32]) {
    let k = rhs.len();
    for p in 0..k {
        let (above, below) = system.split_at_mut((p + 1) * k);
        let pivot_row = &above[p * k + p..];
        for (r, row) in below.chunks_exact_mut(k).enumerate() {
            let f = row[p] / pivot_row[0];
            for (x, &y) in row[p + 1..].iter_mut().zip(&pivot_row[1..]) {
                *x -= f * y;
            }
            rhs[p + 1 + r] -= f * rhs[p];
        }
    }
    for p in (0..k).rev() {
        rhs[p] /= system[p * k + p];
        for i in 0..p {
            rhs[i] -= system[i * k + p] * rhs[p];
        }
    }
}

/// Where the fit starts: for the sigmoid link, the row means of the margins clamped to ±[`START_CLAMP`] (the
/// least-squares fit of θ_i − θ_j ≈ M[i,j], exact up to the ridge for consistent scores), else 0.
pub(crate) const START_CLAMP: f32 = 8.0;

fn start(group: Group<'_>, link: Link, theta: &mut [f64]) {
    let k = theta.len();
    // Centred, as the fit's steps keep it (see `pin_common_shift`); margins need not be antisymmetric.
    for (i, th) in theta.iter_mut().enumerate() {
        *th = match link {
            Link::Hard => 0.0,
            Link::Sigmoid => {
                let sum: f64 = (0..k)
                    .map(|j| group.margin(i, j))
                    .filter(|m| !m.is_nan())
                    .map(|m| f64::from(m.clamp(-START_CLAMP, START_CLAMP)))
                    .sum();
                sum / k as f64
            }
        };
    }
    let mean = theta.iter().sum::<f64>() / k as f64;
    theta.iter_mut().for_each(|th| *th -= mean);
}

/// Fits one group's log-strengths into `strengths` (mean 0) and reports convergence.
pub(crate) fn fit(
    group: Group<'_>,
    link: Link,
    cfg: &BradleyTerryFit,
    ws: &mut Workspace,
    strengths: &mut [f32],
) -> FitReport {
    let k = strengths.len();
    let ridge = f64::from(cfg.ridge);
    ws.fill_probabilities(group, link);
    start(group, link, &mut ws.theta);
    let theta = std::mem::take(&mut ws.theta);
    let mut current = evaluate(ws, &theta, ridge);
    ws.theta = theta;
    let mut report = FitReport { iterations: 0, converged: false };
    while report.iterations < cfg.max_iterations as i32 && !report.converged {
        report.iterations += 1;
        pin_common_shift(&mut ws.system, k);
        solve(&mut ws.system, &mut ws.rhs);
        ws.step.copy_from_slice(&ws.rhs);
        if ws.step.iter().any(|d| !d.is_finite()) {
            // A system f32 cannot solve (a comparison graph in pieces that only a tiny ridge joins): stop at the
            // last finite point, not converged. Every entry is tested: the max below would skip a NaN (f64::max
            // returns the other argument), and an all-NaN step would pass as converged with NaN strengths.
            break;
        }
        let full = ws.step.iter().fold(0.0f64, |m, &d| m.max(f64::from(d).abs()));
        let tolerance = f64::from(cfg.tolerance);
        if full <= tolerance {
            // Converged: take the step (it cannot matter) without evaluating the objective there.
            for (th, &d) in ws.theta.iter_mut().zip(&ws.step) {
                *th += f64::from(d);
            }
            report.converged = true;
            break;
        }
        // Damped step: halve until the objective does not decrease; the accepted point's system is already built.
        let mut t = 1.0f64;
        let mut accepted = false;
        for halving in 0..=MAX_HALVINGS {
            for i in 0..k {
                ws.trial[i] = ws.theta[i] + t * f64::from(ws.step[i]);
            }
            let trial = std::mem::take(&mut ws.trial);
            let value = evaluate(ws, &trial, ridge);
            ws.trial = trial;
            if value.is_finite() && (value >= current - 1e-12 * (1.0 + current.abs()) || halving == MAX_HALVINGS) {
                current = value;
                accepted = true;
                break;
            }
            t *= 0.5;
        }
        if !accepted {
            break;
        }
        std::mem::swap(&mut ws.theta, &mut ws.trial);
        report.converged = t * full <= tolerance;
    }
    let mean = ws.theta.iter().sum::<f64>() / k as f64;
    for (s, &th) in strengths.iter_mut().zip(&ws.theta) {
        *s = (th - mean) as f32;
    }
    report
}
