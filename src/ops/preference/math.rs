//! Numerically safe scalar functions in f64, shared by the CPU paths of the family.

/// log σ(±x) and σ(±x), exact for |x| in the thousands.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sigmoid {
    /// log σ(x)
    pub log_pos: f64,
    /// log σ(-x)
    pub log_neg: f64,
    /// σ(x)
    pub pos: f64,
    /// σ(-x)
    pub neg: f64,
}

/// [`Sigmoid`] of `x` from one exponential and one logarithm (e^{-|x|} never overflows).
pub(crate) fn sigmoid(x: f64) -> Sigmoid {
    let e = (-x.abs()).exp();
    let l = e.ln_1p();
    let (small, large) = (e / (1.0 + e), 1.0 / (1.0 + e));
    if x >= 0.0 {
        Sigmoid { log_pos: -l, log_neg: -x - l, pos: large, neg: small }
    } else {
        Sigmoid { log_pos: x - l, log_neg: -l, pos: small, neg: large }
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
