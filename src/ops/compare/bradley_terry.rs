//! The Bradley–Terry fit of one group on the CPU: ridge-regularised maximum likelihood by damped Newton steps
//! (see [`BradleyTerryFit`](super::BradleyTerryFit)). `fit_bt` in `kernels/compare.cu` is the same algorithm.
//!
//! The log-strengths, gradient and objective are f64; the Newton system is built and solved in f32 (the CUDA kernel
//! keeps it in shared memory). Its rounding only changes the step, not the fixed point, which is where the f64
//! gradient vanishes: near it, steps shrink geometrically at a rate of about cond(H)·2⁻²⁴.

use super::group::{log_sigmoid, sigmoid, Group, Link};
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
    theta: Vec<f64>,
    trial: Vec<f64>,
}

impl Workspace {
    pub fn new(k: usize) -> Self {
        Workspace {
            prob: vec![0.0; k * k],
            system: vec![0.0; k * k],
            rhs: vec![0.0; k],
            theta: vec![0.0; k],
            trial: vec![0.0; k],
        }
    }
}

/// `Σ_{i≠j} P[i,j]·log σ(θ_i − θ_j) − ½·ridge·Σθ²` over valid pairs.
fn objective(prob: &[f64], theta: &[f64], ridge: f64) -> f64 {
    let k = theta.len();
    (0..k)
        .map(|i| {
            let row: f64 = (0..k)
                .filter(|&j| j != i && !prob[i * k + j].is_nan())
                .map(|j| prob[i * k + j] * log_sigmoid(theta[i] - theta[j]))
                .sum();
            row - 0.5 * ridge * theta[i] * theta[i]
        })
        .sum()
}

/// Builds the Newton system at θ: `rhs` = the gradient, `system` = minus the Hessian (SPD thanks to the ridge).
fn newton_system(ws: &mut Workspace, ridge: f64) {
    let k = ws.theta.len();
    for i in 0..k {
        let (mut grad, mut diag) = (-ridge * ws.theta[i], ridge);
        for j in (0..k).filter(|&j| j != i) {
            let p = ws.prob[i * k + j];
            if p.is_nan() {
                ws.system[i * k + j] = 0.0;
                continue;
            }
            let x = ws.theta[i] - ws.theta[j];
            let (s, r) = (sigmoid(x), sigmoid(-x));
            // d/dθ_i of P[i,j]·log σ(x) + P[j,i]·log σ(−x), written without cancellation when P is 0 or 1.
            grad += p * r - ws.prob[j * k + i] * s;
            diag += s * r;
            ws.system[i * k + j] = -(s * r) as f32;
        }
        ws.system[i * k + i] = diag as f32;
        ws.rhs[i] = grad as f32;
    }
}

/// Solves `system · x = rhs` in place (x in `rhs`) by Gaussian elimination without pivoting (the system is SPD),
/// in the order of the kernel's parallel version.
fn solve(system: &mut [f32], rhs: &mut [f32]) {
    let k = rhs.len();
    for p in 0..k {
        let pivot = system[p * k + p];
        for i in p + 1..k {
            let f = system[i * k + p] / pivot;
            for j in p + 1..k {
                system[i * k + j] -= f * system[p * k + j];
            }
            rhs[i] -= f * rhs[p];
        }
    }
    for p in (0..k).rev() {
        rhs[p] /= system[p * k + p];
        for i in 0..p {
            rhs[i] -= system[i * k + p] * rhs[p];
        }
    }
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
    for i in 0..k {
        for j in 0..k {
            ws.prob[i * k + j] = if i == j { f64::NAN } else { link.probability(group.margin(i, j)) };
        }
    }
    ws.theta.fill(0.0);
    let mut current = objective(&ws.prob, &ws.theta, ridge);
    let mut report = FitReport { iterations: 0, converged: false };
    while report.iterations < cfg.max_iterations as i32 && !report.converged {
        report.iterations += 1;
        newton_system(ws, ridge);
        solve(&mut ws.system, &mut ws.rhs);
        let mut t = 1.0f64;
        for halving in 0..=MAX_HALVINGS {
            for i in 0..k {
                ws.trial[i] = ws.theta[i] + t * f64::from(ws.rhs[i]);
            }
            let value = objective(&ws.prob, &ws.trial, ridge);
            if value >= current - 1e-12 * (1.0 + current.abs()) || halving == MAX_HALVINGS {
                current = value;
                break;
            }
            t *= 0.5;
        }
        let moved = ws.rhs.iter().fold(0.0f64, |m, &d| m.max((t * f64::from(d)).abs()));
        std::mem::swap(&mut ws.theta, &mut ws.trial);
        report.converged = moved <= f64::from(cfg.tolerance);
    }
    let mean = ws.theta.iter().sum::<f64>() / k as f64;
    for (s, &th) in strengths.iter_mut().zip(&ws.theta) {
        *s = (th - mean) as f32;
    }
    report
}
