//! Numerically safe scalar functions in f64, shared by the CPU paths of the family.

/// log σ(x) = -softplus(-x), exact for |x| in the thousands.
pub(crate) fn log_sigmoid(x: f64) -> f64 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

/// σ(x) without overflow for either sign.
pub(crate) fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// log(1 - e^x) for x < 0 (NaN for x > 0, -inf at 0), accurate at both ends (Mächler's log1mexp).
pub(crate) fn log1mexp(x: f64) -> f64 {
    if x > -std::f64::consts::LN_2 {
        (-x.exp_m1()).ln()
    } else {
        (-x.exp()).ln_1p()
    }
}

/// (log σ(x), σ(-x)) from one exponential: the loss and the derivative magnitude of `-log σ(x)`.
pub(crate) fn log_sigmoid_and_complement(x: f64) -> (f64, f64) {
    let e = (-x.abs()).exp();
    let complement = if x >= 0.0 { e / (1.0 + e) } else { 1.0 / (1.0 + e) };
    (x.min(0.0) - e.ln_1p(), complement)
}
