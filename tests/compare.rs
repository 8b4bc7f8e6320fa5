//! Batched pairwise comparisons and the selection rule against float64 references: PyTorch fixtures
//! (`tests/reference/compare.py`), f64 Rust loops on fresh random inputs (the Bradley–Terry fit checked by its
//! optimality condition), awkward groups, bad input, and (with the `gpu-tests` feature) CUDA against CPU.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use unireward::ops::compare::{
    compare, select_pairs, BradleyTerryFit, CompareConfig, Comparison, NanPolicy, Pairing, ScoreLink, Selection,
    SelectionConfig, TiePolicy, Verdicts,
};
use unireward::{DType, Device, Error, Tensor};

// ---------------------------------------------------------------------------------------------------------------
// Helpers

/// A fixture array: numbers, or "nan" / "inf" / "-inf".
fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| match x {
            Value::Number(n) => n.as_f64().expect("a number"),
            Value::String(s) => s.parse::<f64>().expect("nan, inf or -inf"),
            other => panic!("unexpected fixture value {other}"),
        })
        .collect()
}

fn values(t: &Tensor) -> Vec<f64> {
    let host = t.to_device(Device::Cpu).unwrap();
    match host.dtype() {
        DType::I32 => host.as_slice::<i32>().unwrap().iter().map(|&v| f64::from(v)).collect(),
        _ => host.to_dtype(DType::F32).unwrap().as_slice::<f32>().unwrap().iter().map(|&v| f64::from(v)).collect(),
    }
}

/// Equal within `tol` (absolute), NaN matching NaN and infinities matching exactly.
fn assert_close(what: &str, got: &[f64], expected: &[f64], tol: f64) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        let ok = (g.is_nan() && e.is_nan()) || g == e || (g - e).abs() <= tol;
        assert!(ok, "{what}[{i}]: got {g}, expected {e} (tolerance {tol})");
    }
}

fn tensor(values: &[f64], shape: &[usize], dtype: DType, device: Device) -> Tensor {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Tensor::from_f32(&v, shape, dtype, device).unwrap()
}

/// The verdict tensor of a kind ("scores" [G,K] or "log_odds" [G,K,K]).
fn verdict_tensor(kind: &str, v: &[f64], g: usize, k: usize, dtype: DType, device: Device) -> Tensor {
    match kind {
        "scores" => tensor(v, &[g, k], dtype, device),
        _ => tensor(v, &[g, k, k], dtype, device),
    }
}

fn verdicts<'a>(kind: &str, t: &'a Tensor) -> Verdicts<'a> {
    if kind == "scores" {
        Verdicts::Scores(t)
    } else {
        Verdicts::LogOdds(t)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// f64 references

/// One group's margins `M[i,j]` formed in f32 as the library does (so signs and exact ties agree).
fn margins(kind: &str, v: &[f32], k: usize) -> Vec<f32> {
    let mut m = vec![0.0f32; k * k];
    for i in 0..k {
        for j in 0..k {
            m[i * k + j] = if kind == "scores" { v[i] - v[j] } else { 0.5 * (v[i * k + j] - v[j * k + i]) };
        }
    }
    m
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn probability(m: f32, hard: bool) -> f64 {
    let m = f64::from(m);
    match (hard, m) {
        (_, m) if m.is_nan() => f64::NAN,
        (false, m) => sigmoid(m),
        (true, m) if m > 0.0 => 1.0,
        (true, m) if m < 0.0 => 0.0,
        _ => 0.5,
    }
}

/// The gradient of the ridge Bradley–Terry objective at θ, in f64.
fn bt_gradient(p: &[f64], theta: &[f64], ridge: f64) -> Vec<f64> {
    let k = theta.len();
    (0..k)
        .map(|i| {
            let mut g = -ridge * theta[i];
            for j in (0..k).filter(|&j| j != i && !p[i * k + j].is_nan()) {
                let x = theta[i] - theta[j];
                g += p[i * k + j] * sigmoid(-x) - p[j * k + i] * sigmoid(x);
            }
            g
        })
        .collect()
}

/// Checks every output of one group against f64 loops; the strengths by optimality (zero gradient) and mean 0.
fn check_group(kind: &str, v: &[f32], k: usize, hard: bool, ridge: f64, out: &GroupView) {
    let m = margins(kind, v, k);
    let p: Vec<f64> = (0..k * k).map(|e| if e / k == e % k { 0.5 } else { probability(m[e], hard) }).collect();
    assert_close("preference", out.preference, &p, 1e-6);
    let off = |i: usize| (0..k).filter(move |&j| j != i);
    let mut cope = vec![0i32; k];
    for i in 0..k {
        let wins: f64 = off(i)
            .map(|j| {
                if m[i * k + j] > 0.0 {
                    1.0
                } else if m[i * k + j] == 0.0 {
                    0.5
                } else {
                    0.0
                }
            })
            .sum();
        cope[i] = off(i).map(|j| i32::from(m[i * k + j] > 0.0) - i32::from(m[i * k + j] < 0.0)).sum();
        assert_eq!(out.wins[i], wins, "wins[{i}]");
        assert_eq!(out.copeland[i], f64::from(cope[i]), "copeland[{i}]");
    }
    for i in 0..k {
        let rank = 1 + (0..k).filter(|&j| cope[j] > cope[i]).count();
        assert_eq!(out.ranks[i], rank as f64, "ranks[{i}]");
    }
    let theta = out.strengths;
    let mean = theta.iter().sum::<f64>() / k as f64;
    assert!(mean.abs() < 1e-5, "strengths have mean {mean}");
    let grad = bt_gradient(&p, theta, ridge);
    let worst = grad.iter().fold(0.0f64, |a, g| a.max(g.abs()));
    // The objective is strictly concave, so a vanishing gradient identifies the optimum; what remains is the f32
    // rounding of the strengths (about 1e-7 per pair term).
    assert!(worst < 1e-6 * k as f64, "BT gradient at the fit is {worst} (k = {k})");
    let s32 = |i: usize| theta[i] as f32;
    let better = |a: usize, b: usize| cope[a] > cope[b] || (cope[a] == cope[b] && s32(a) > s32(b) + 1e-5);
    let best = (0..k).fold(0, |b, i| if better(i, b) { i } else { b });
    let worst_i = (0..k).rev().fold(k - 1, |w, i| if better(w, i) { i } else { w });
    assert_eq!(out.best, best as f64, "best");
    assert_eq!(out.worst, worst_i as f64, "worst");
    if kind == "log_odds" {
        let sign = |x: f32| i32::from(x > 0.0) - i32::from(x < 0.0);
        let pairs: Vec<bool> = (0..k)
            .flat_map(|i| (i + 1..k).map(move |j| (i, j)))
            .filter(|&(i, j)| !v[i * k + j].is_nan() && !v[j * k + i].is_nan())
            .map(|(i, j)| sign(v[i * k + j]) == -sign(v[j * k + i]))
            .collect();
        let rate = pairs.iter().filter(|&&c| c).count() as f64 / pairs.len() as f64;
        assert_close("consistency", &[out.consistency.unwrap()], &[rate], 1e-7);
    }
}

/// One group's outputs, as f64.
struct GroupView<'a> {
    preference: &'a [f64],
    wins: &'a [f64],
    copeland: &'a [f64],
    ranks: &'a [f64],
    strengths: &'a [f64],
    best: f64,
    worst: f64,
    consistency: Option<f64>,
}

/// All outputs of a comparison, on the host as f64.
struct Host {
    preference: Vec<f64>,
    wins: Vec<f64>,
    copeland: Vec<f64>,
    ranks: Vec<f64>,
    strengths: Vec<f64>,
    iterations: Vec<f64>,
    converged: Vec<f64>,
    best: Vec<f64>,
    worst: Vec<f64>,
    consistency: Option<Vec<f64>>,
}

impl Host {
    fn new(c: &Comparison) -> Host {
        Host {
            preference: values(&c.preference),
            wins: values(&c.wins),
            copeland: values(&c.copeland),
            ranks: values(&c.ranks),
            strengths: values(&c.strengths),
            iterations: values(&c.iterations),
            converged: values(&c.converged),
            best: values(&c.best),
            worst: values(&c.worst),
            consistency: c.consistency.as_ref().map(values),
        }
    }

    fn group(&self, g: usize, k: usize) -> GroupView<'_> {
        GroupView {
            preference: &self.preference[g * k * k..(g + 1) * k * k],
            wins: &self.wins[g * k..(g + 1) * k],
            copeland: &self.copeland[g * k..(g + 1) * k],
            ranks: &self.ranks[g * k..(g + 1) * k],
            strengths: &self.strengths[g * k..(g + 1) * k],
            best: self.best[g],
            worst: self.worst[g],
            consistency: self.consistency.as_ref().map(|c| c[g]),
        }
    }
}

fn config(hard: bool) -> CompareConfig {
    CompareConfig { score_link: if hard { ScoreLink::Hard } else { ScoreLink::Sigmoid }, ..Default::default() }
}

// ---------------------------------------------------------------------------------------------------------------
// Comparisons

fn comparison_fixtures() -> Vec<Value> {
    let text = include_str!("fixtures/compare/comparisons.json");
    serde_json::from_str::<Value>(text).unwrap().as_array().unwrap().clone()
}

#[test]
fn comparisons_match_torch_fixtures() {
    for case in comparison_fixtures() {
        let name = case["name"].as_str().unwrap();
        let kind = case["kind"].as_str().unwrap();
        let (g, k) = (case["g"].as_u64().unwrap() as usize, case["k"].as_u64().unwrap() as usize);
        let hard = case["link"] == "hard";
        let input = verdict_tensor(kind, &floats(&case["values"]), g, k, DType::F32, Device::Cpu);
        let out = Host::new(&compare(verdicts(kind, &input), &config(hard)).unwrap());
        println!("{name}: iterations {:?}", out.iterations);
        assert_close(&format!("{name} preference"), &out.preference, &floats(&case["preference"]), 1e-6);
        assert_close(&format!("{name} wins"), &out.wins, &floats(&case["wins"]), 0.0);
        assert_close(&format!("{name} copeland"), &out.copeland, &floats(&case["copeland"]), 0.0);
        assert_close(&format!("{name} ranks"), &out.ranks, &floats(&case["ranks"]), 0.0);
        let expected = floats(&case["strengths"]);
        let err = out.strengths.iter().zip(&expected).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        println!("{name}: strengths within {err:.2e} of the torch fit");
        assert_close(&format!("{name} strengths"), &out.strengths, &expected, 1e-4);
        assert_close(&format!("{name} best"), &out.best, &floats(&case["best"]), 0.0);
        assert_close(&format!("{name} worst"), &out.worst, &floats(&case["worst"]), 0.0);
        assert!(out.converged.iter().all(|&c| c == 1.0), "{name}: converged {:?}", out.converged);
        match (&out.consistency, kind) {
            (Some(c), "log_odds") => {
                assert_close(&format!("{name} consistency"), c, &floats(&case["consistency"]), 1e-7)
            }
            (None, "scores") => {}
            _ => panic!("{name}: consistency is reported for log-odds only"),
        }
    }
}

/// Random groups: scores or log-odds with a position bias, a few exact ties and NaNs.
fn random_input(rng: &mut StdRng, kind: &str, g: usize, k: usize) -> Vec<f32> {
    let per = if kind == "scores" { k } else { k * k };
    (0..g * per)
        .map(|_| match rng.gen_range(0..50) {
            0 => f32::NAN,
            1..=5 => 1.0,
            _ => rng.gen_range(-4.0f32..4.0) + if kind == "log_odds" { 0.5 } else { 0.0 },
        })
        .collect()
}

fn check_random(kind: &str, g: usize, k: usize, hard: bool, seed: u64) {
    println!("{kind} g={g} k={k} hard={hard} seed={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let v = random_input(&mut rng, kind, g, k);
    let input =
        verdict_tensor(kind, &v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(), g, k, DType::F32, Device::Cpu);
    let cfg = config(hard);
    let out = Host::new(&compare(verdicts(kind, &input), &cfg).unwrap());
    let per = v.len() / g;
    for gi in 0..g {
        check_group(kind, &v[gi * per..(gi + 1) * per], k, hard, f64::from(cfg.fit.ridge), &out.group(gi, k));
        assert_eq!(out.converged[gi], 1.0, "group {gi} did not converge");
    }
}

#[test]
fn random_groups_match_f64_loops() {
    let base: u64 = rand::thread_rng().gen();
    for (n, &k) in [1usize, 2, 3, 5, 10, 33, 64].iter().enumerate() {
        let seed = base.wrapping_add(n as u64);
        check_random("scores", 7, k, false, seed);
        check_random("scores", 5, k, true, seed ^ 1);
        check_random("log_odds", 5, k, false, seed ^ 2);
    }
}

#[test]
fn half_types_read_the_same_values() {
    let seed: u64 = rand::thread_rng().gen();
    println!("seed={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    for kind in ["scores", "log_odds"] {
        let (g, k) = (6, 9);
        let v: Vec<f64> = random_input(&mut rng, kind, g, k).into_iter().map(f64::from).collect();
        for dtype in [DType::BF16, DType::F16] {
            let half = verdict_tensor(kind, &v, g, k, dtype, Device::Cpu);
            // The same values, already rounded to the half type, as f32: results must be identical.
            let widened = half.to_dtype(DType::F32).unwrap();
            let a = Host::new(&compare(verdicts(kind, &half), &config(false)).unwrap());
            let b = Host::new(&compare(verdicts(kind, &widened), &config(false)).unwrap());
            assert_close("preference", &a.preference, &b.preference, 0.0);
            assert_close("strengths", &a.strengths, &b.strengths, 0.0);
            assert_close("ranks", &a.ranks, &b.ranks, 0.0);
        }
    }
}

#[test]
fn one_candidate_beating_all_converges_thanks_to_the_ridge() {
    let k = 64;
    let mut scores = vec![0.0f64; k];
    scores[17] = 1.0;
    let input = tensor(&scores, &[1, k], DType::F32, Device::Cpu);
    let out = Host::new(&compare(Verdicts::Scores(&input), &config(true)).unwrap());
    assert_eq!(out.converged, vec![1.0]);
    assert!(out.iterations[0] < 30.0, "{} iterations", out.iterations[0]);
    assert_eq!((out.best[0], out.ranks[17], out.copeland[17]), (17.0, 1.0, 63.0));
    let p: Vec<f64> = (0..k * k)
        .map(|e| {
            let (i, j) = (e / k, e % k);
            if i == j {
                0.5
            } else if i == 17 {
                1.0
            } else if j == 17 {
                0.0
            } else {
                0.5
            }
        })
        .collect();
    let grad = bt_gradient(&p, &out.strengths, 1e-2);
    assert!(grad.iter().all(|g| g.abs() < 1e-4), "{grad:?}");
    assert!(out.strengths[17] > 4.0, "the dominant candidate's strength is finite and large: {}", out.strengths[17]);
}

/// Tiny ridges used to leave the f32 Newton system singular (1e-8 vanishes next to 0.25): NaN strengths reported as
/// converged. Over K = 2…64, both links and ridges 1e-8…1, on separable groups (distinct scores under the hard link,
/// widely spread scores under the sigmoid) and random ones, the strengths must be finite, and a fit that says it
/// converged must sit where the f64 gradient of the penalised objective vanishes (relative to the pair weights).
#[test]
fn tiny_ridges_give_finite_strengths_and_honest_convergence() {
    let mut rng = StdRng::seed_from_u64(rand::thread_rng().gen());
    let mut converged = 0;
    let mut fits = 0;
    for k in [2usize, 3, 4, 5, 8, 13, 33, 64] {
        for hard in [true, false] {
            for ridge in [1e-8f32, 1e-7, 1e-6, 1e-4, 1e-2, 1.0] {
                for case in 0..3 {
                    let scores: Vec<f64> = match case {
                        0 => (0..k).map(|i| i as f64).collect(),
                        1 => (0..k).map(|i| 30.0 * i as f64 - 10.0).collect(),
                        _ => (0..k).map(|_| rng.gen_range(-4.0..4.0)).collect(),
                    };
                    let input = tensor(&scores, &[1, k], DType::F32, Device::Cpu);
                    let cfg = CompareConfig { fit: BradleyTerryFit { ridge, ..Default::default() }, ..config(hard) };
                    let out = Host::new(&compare(Verdicts::Scores(&input), &cfg).unwrap());
                    let what = format!("k={k} hard={hard} ridge={ridge} case={case}");
                    assert!(out.strengths.iter().all(|s| s.is_finite()), "{what}: {:?}", out.strengths);
                    fits += 1;
                    if out.converged[0] == 1.0 {
                        converged += 1;
                        let m: Vec<f32> = (0..k * k).map(|e| (scores[e / k] - scores[e % k]) as f32).collect();
                        let p: Vec<f64> =
                            (0..k * k).map(|e| if e / k == e % k { 0.5 } else { probability(m[e], hard) }).collect();
                        let grad = bt_gradient(&p, &out.strengths, f64::from(ridge));
                        let worst = grad.iter().fold(0.0f64, |a, g| a.max(g.abs()));
                        assert!(worst < 1e-5 * k as f64, "{what}: converged, but the gradient is {worst}");
                    }
                }
            }
        }
    }
    // Most of these fits must converge (the optimum is finite for every ridge > 0).
    assert!(converged * 10 >= fits * 9, "{converged} of {fits} fits converged");
}

#[test]
fn all_ties_and_single_candidates() {
    let ties = tensor(&[2.0; 10], &[2, 5], DType::F32, Device::Cpu);
    for hard in [false, true] {
        let out = Host::new(&compare(Verdicts::Scores(&ties), &config(hard)).unwrap());
        assert!(out.preference.iter().all(|&p| p == 0.5));
        assert!(out.wins.iter().all(|&w| w == 2.0) && out.ranks.iter().all(|&r| r == 1.0));
        assert!(out.strengths.iter().all(|&s| s == 0.0));
        assert_eq!((out.best.clone(), out.worst.clone()), (vec![0.0, 0.0], vec![4.0, 4.0]));
        assert_eq!(out.iterations, vec![1.0, 1.0]);
    }
    let one = tensor(&[0.7, -0.2], &[2, 1, 1], DType::F32, Device::Cpu);
    let out = Host::new(&compare(Verdicts::LogOdds(&one), &CompareConfig::default()).unwrap());
    assert_eq!(
        (out.preference.clone(), out.wins.clone(), out.ranks.clone()),
        (vec![0.5; 2], vec![0.0; 2], vec![1.0; 2])
    );
    assert_eq!(
        (out.best.clone(), out.worst.clone(), out.strengths.clone()),
        (vec![0.0; 2], vec![0.0; 2], vec![0.0; 2])
    );
    assert!(out.consistency.unwrap().iter().all(|c| c.is_nan()), "no pairs: consistency is NaN");
}

#[test]
fn a_group_of_void_pairs_has_no_winner() {
    let nan = tensor(&[f64::NAN; 3], &[1, 3], DType::F32, Device::Cpu);
    let out = Host::new(&compare(Verdicts::Scores(&nan), &CompareConfig::default()).unwrap());
    let off_diagonal = out.preference.iter().enumerate().filter(|(e, _)| e / 3 != e % 3);
    assert!(off_diagonal.map(|(_, p)| p).all(|p| p.is_nan()), "void pairs have P = NaN: {:?}", out.preference);
    assert_eq!((out.wins.clone(), out.copeland.clone(), out.ranks.clone()), (vec![0.0; 3], vec![0.0; 3], vec![1.0; 3]));
    assert_eq!((out.strengths.clone(), out.converged.clone()), (vec![0.0; 3], vec![1.0]));
    let skip = SelectionConfig { pairing: Pairing::AllPairs, nans: NanPolicy::Skip, ..Default::default() };
    let got = selection_host(&select_pairs(Verdicts::Scores(&nan), &nan, &skip).unwrap());
    assert_eq!((got[0][0], got[1][0], got[4][0]), (-1.0, -1.0, 0.0));
}

/// Two components of tied candidates with no verdict between them (NaN log-odds), joined only by ridge 1e-8, which
/// vanishes in f32 next to the pair weights: the Newton system is singular, its solve gives NaN (0/0), and the fit
/// stops at its last point, finite and not converged (it once took the NaN step as converged).
#[test]
fn a_step_f32_cannot_solve_ends_the_fit_unconverged() {
    let k = 4;
    let lo: Vec<f64> = (0..k * k).map(|e| if (e / k < 2) == (e % k < 2) { 0.0 } else { f64::NAN }).collect();
    let input = tensor(&lo, &[1, k, k], DType::F32, Device::Cpu);
    let cfg = CompareConfig { fit: BradleyTerryFit { ridge: 1e-8, ..Default::default() }, ..Default::default() };
    let out = Host::new(&compare(Verdicts::LogOdds(&input), &cfg).unwrap());
    assert_eq!((out.strengths.clone(), out.converged[0]), (vec![0.0; 4], 0.0), "iterations {:?}", out.iterations);
}

#[test]
fn iteration_cap_is_reported() {
    let scores = tensor(&[3.0, -1.0, 0.5, 2.0], &[1, 4], DType::F32, Device::Cpu);
    let cfg = CompareConfig { fit: BradleyTerryFit { max_iterations: 1, ..Default::default() }, ..Default::default() };
    let out = Host::new(&compare(Verdicts::Scores(&scores), &cfg).unwrap());
    assert_eq!((out.iterations[0], out.converged[0]), (1.0, 0.0));
    let out = Host::new(&compare(Verdicts::Scores(&scores), &CompareConfig::default()).unwrap());
    assert_eq!(out.converged[0], 1.0);
    assert!(out.iterations[0] > 1.0 && out.iterations[0] < 20.0, "{} iterations", out.iterations[0]);
}

fn shape_error<T: std::fmt::Debug>(r: unireward::Result<T>, needle: &str) {
    match r {
        Err(Error::Shape(msg)) => assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}"),
        other => panic!("expected a shape error mentioning {needle:?}, got {other:?}"),
    }
}

fn invalid_argument<T: std::fmt::Debug>(r: unireward::Result<T>, needle: &str) {
    match r {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}"),
        other => panic!("expected an invalid-argument error mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let cpu = Device::Cpu;
    let cfg = CompareConfig::default();
    let empty_groups = Tensor::zeros(&[0, 4], DType::F32, cpu).unwrap();
    shape_error(compare(Verdicts::Scores(&empty_groups), &cfg), "scores (G)");
    let empty_candidates = Tensor::zeros(&[3, 0], DType::F32, cpu).unwrap();
    shape_error(compare(Verdicts::Scores(&empty_candidates), &cfg), "scores (K)");
    let empty_log_odds = Tensor::zeros(&[2, 0, 0], DType::F32, cpu).unwrap();
    shape_error(compare(Verdicts::LogOdds(&empty_log_odds), &cfg), "log_odds (K)");
    let flat = Tensor::zeros(&[4], DType::F32, cpu).unwrap();
    shape_error(compare(Verdicts::Scores(&flat), &cfg), "rank 2");
    let not_square = Tensor::zeros(&[2, 3, 4], DType::F32, cpu).unwrap();
    shape_error(compare(Verdicts::LogOdds(&not_square), &cfg), "[G, K, K]");
    let ints = Tensor::zeros(&[2, 3], DType::I32, cpu).unwrap();
    assert!(matches!(compare(Verdicts::Scores(&ints), &cfg), Err(Error::DType { arg: "scores", .. })));

    let scores = Tensor::zeros(&[2, 3], DType::F32, cpu).unwrap();
    let fit = |f: BradleyTerryFit| CompareConfig { fit: f, ..Default::default() };
    let d = BradleyTerryFit::default();
    invalid_argument(compare(Verdicts::Scores(&scores), &fit(BradleyTerryFit { ridge: 0.0, ..d })), "fit.ridge");
    invalid_argument(compare(Verdicts::Scores(&scores), &fit(BradleyTerryFit { ridge: f32::NAN, ..d })), "fit.ridge");
    invalid_argument(
        compare(Verdicts::Scores(&scores), &fit(BradleyTerryFit { tolerance: -1.0, ..d })),
        "fit.tolerance",
    );
    invalid_argument(
        compare(Verdicts::Scores(&scores), &fit(BradleyTerryFit { max_iterations: 0, ..d })),
        "fit.max_iterations",
    );

    let sel = SelectionConfig::default();
    let wrong = Tensor::zeros(&[2, 4], DType::F32, cpu).unwrap();
    shape_error(select_pairs(Verdicts::Scores(&scores), &wrong, &sel), "`pointwise`");
    let half = Tensor::zeros(&[2, 3], DType::BF16, cpu).unwrap();
    assert!(matches!(select_pairs(Verdicts::Scores(&scores), &half, &sel), Err(Error::DType { arg: "pointwise", .. })));
    shape_error(select_pairs(Verdicts::Scores(&empty_groups), &empty_groups, &sel), "scores (G)");
}

// ---------------------------------------------------------------------------------------------------------------
// Selection

fn selection_config(pairing: &str, ties: &str, nans: &str) -> SelectionConfig {
    SelectionConfig {
        pairing: if pairing == "adjacent" { Pairing::Adjacent } else { Pairing::AllPairs },
        ties: match ties {
            "skip" => TiePolicy::Skip,
            "first_wins" => TiePolicy::FirstWins,
            _ => TiePolicy::DropGroup,
        },
        nans: if nans == "error" { NanPolicy::Error } else { NanPolicy::Skip },
    }
}

/// (chosen, rejected, chosen score, rejected score, kept) per group, as f64.
fn selection_host(s: &Selection) -> [Vec<f64>; 5] {
    [values(&s.chosen), values(&s.rejected), values(&s.chosen_score), values(&s.rejected_score), values(&s.kept)]
}

#[test]
fn selections_match_torch_fixtures() {
    let text = include_str!("fixtures/compare/selections.json");
    for case in serde_json::from_str::<Value>(text).unwrap().as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let kind = case["kind"].as_str().unwrap();
        let (g, k) = (case["g"].as_u64().unwrap() as usize, case["k"].as_u64().unwrap() as usize);
        let cfg = selection_config(
            case["pairing"].as_str().unwrap(),
            case["ties"].as_str().unwrap(),
            case["nans"].as_str().unwrap(),
        );
        let input = verdict_tensor(kind, &floats(&case["values"]), g, k, DType::F32, Device::Cpu);
        let scores = tensor(&floats(&case["scores"]), &[g, k], DType::F32, Device::Cpu);
        let result = select_pairs(verdicts(kind, &input), &scores, &cfg);
        if let Some(group) = case["error_group"].as_u64() {
            invalid_argument(result, &format!("group {group}:"));
            continue;
        }
        let got = selection_host(&result.unwrap());
        for (n, key) in ["chosen", "rejected", "chosen_score", "rejected_score", "kept"].iter().enumerate() {
            // serde_json may parse a float one ulp off: scores to 1e-9, indices and flags exactly.
            let tol = if key.ends_with("score") { 1e-9 } else { 0.0 };
            assert_close(&format!("{name} {key}"), &got[n], &floats(&case[*key]), tol);
        }
    }
}

#[test]
fn scores_are_compared_as_numbers_not_strings() {
    // UnifiedReward's scripts compare the parsed scores as text, where "10" < "9".
    assert!("10" < "9");
    let verdict = tensor(&[2.0, 1.0], &[1, 2], DType::F32, Device::Cpu);
    let scores = tensor(&[10.0, 9.0], &[1, 2], DType::F32, Device::Cpu);
    let got = selection_host(&select_pairs(Verdicts::Scores(&verdict), &scores, &SelectionConfig::default()).unwrap());
    assert_eq!(got, [vec![0.0], vec![1.0], vec![10.0], vec![9.0], vec![1.0]]);
}

#[test]
fn odd_k_and_single_candidates() {
    // K = 5 with adjacent pairing: candidate 4 is in no pair, so its top score cannot be chosen.
    let v = tensor(&[1.0, 2.0, 3.0, 4.0, 100.0], &[1, 5], DType::F32, Device::Cpu);
    let got = selection_host(&select_pairs(Verdicts::Scores(&v), &v, &SelectionConfig::default()).unwrap());
    assert_eq!(got, [vec![3.0], vec![0.0], vec![4.0], vec![1.0], vec![1.0]]);
    // All pairs: it is.
    let cfg = SelectionConfig { pairing: Pairing::AllPairs, ..Default::default() };
    let got = selection_host(&select_pairs(Verdicts::Scores(&v), &v, &cfg).unwrap());
    assert_eq!((got[0][0], got[1][0], got[4][0]), (4.0, 0.0, 1.0));
    // K = 1: no pair, never kept.
    let one = tensor(&[3.0, 4.0], &[2, 1], DType::F32, Device::Cpu);
    for pairing in [Pairing::Adjacent, Pairing::AllPairs] {
        let cfg = SelectionConfig { pairing, ..Default::default() };
        let got = selection_host(&select_pairs(Verdicts::Scores(&one), &one, &cfg).unwrap());
        assert_eq!((got[0].clone(), got[1].clone(), got[4].clone()), (vec![-1.0; 2], vec![-1.0; 2], vec![0.0; 2]));
        assert!(got[2].iter().chain(&got[3]).all(|s| s.is_nan()));
    }
}

#[test]
fn nan_policies() {
    let cpu = Device::Cpu;
    let verdict = tensor(&[1.0, f64::NAN, 2.0, 1.0], &[1, 4], DType::F32, cpu);
    let scores = tensor(&[1.0, 2.0, 3.0, 4.0], &[1, 4], DType::F32, cpu);
    invalid_argument(
        select_pairs(Verdicts::Scores(&verdict), &scores, &SelectionConfig::default()),
        "group 0: a pair verdict is NaN (the NaN policy is `error`; the `skip` policy leaves NaN verdicts out: \
         UR_NANS_SKIP in C, nans=\"skip\" in Python, NanPolicy::Skip in Rust)",
    );
    let skip = SelectionConfig { nans: NanPolicy::Skip, ..Default::default() };
    let got = selection_host(&select_pairs(Verdicts::Scores(&verdict), &scores, &skip).unwrap());
    assert_eq!(got, [vec![2.0], vec![3.0], vec![3.0], vec![4.0], vec![0.0]]);
    let bad_score = tensor(&[1.0, 2.0, f64::NAN, 4.0], &[1, 4], DType::F32, cpu);
    let ok = tensor(&[1.0, 2.0, 3.0, 4.0], &[1, 4], DType::F32, cpu);
    invalid_argument(select_pairs(Verdicts::Scores(&ok), &bad_score, &SelectionConfig::default()), "pointwise score");
}

/// The rule as UnifiedReward states it, with explicit lists, in f64.
fn reference_selection(m: &[f32], s: &[f32], k: usize, cfg: &SelectionConfig) -> Option<(i32, i32, f64)> {
    let pairs: Vec<(usize, usize)> = match cfg.pairing {
        Pairing::Adjacent => (0..k / 2).map(|j| (2 * j, 2 * j + 1)).collect(),
        Pairing::AllPairs => (0..k).flat_map(|a| (a + 1..k).map(move |b| (a, b))).collect(),
    };
    let (mut chosen, mut rejected) = (vec![], vec![]);
    for (a, b) in pairs {
        let v = m[a * k + b];
        if v > 0.0 || (v == 0.0 && cfg.ties == TiePolicy::FirstWins) {
            chosen.push(a);
            rejected.push(b);
        } else if v < 0.0 {
            chosen.push(b);
            rejected.push(a);
        } else if v == 0.0 && cfg.ties == TiePolicy::DropGroup {
            return None;
        }
    }
    let best =
        chosen.iter().copied().filter(|&c| !s[c].is_nan()).min_by(|&x, &y| s[y].total_cmp(&s[x]).then(x.cmp(&y)));
    let worst =
        rejected.iter().copied().filter(|&c| !s[c].is_nan()).min_by(|&x, &y| s[x].total_cmp(&s[y]).then(x.cmp(&y)));
    let (c, r) = (best.map_or(-1, |c| c as i32), worst.map_or(-1, |r| r as i32));
    let kept = matches!((best, worst), (Some(c), Some(r)) if s[c] > s[r]);
    Some((c, r, f64::from(u8::from(kept))))
}

#[test]
fn random_selections_match_the_list_rule() {
    let seed: u64 = rand::thread_rng().gen();
    println!("seed={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    for kind in ["scores", "log_odds"] {
        for k in [1usize, 2, 3, 6, 9, 64] {
            let g = 20;
            let per = if kind == "scores" { k } else { k * k };
            let v: Vec<f32> = (0..g * per)
                .map(|_| rng.gen_range(0..4) as f32 + if rng.gen_bool(0.02) { f32::NAN } else { 0.0 })
                .collect();
            let s: Vec<f32> =
                (0..g * k).map(|_| if rng.gen_bool(0.03) { f32::NAN } else { rng.gen_range(1..=10) as f32 }).collect();
            let input = verdict_tensor(
                kind,
                &v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
                g,
                k,
                DType::F32,
                Device::Cpu,
            );
            let scores = tensor(&s.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(), &[g, k], DType::F32, Device::Cpu);
            for pairing in [Pairing::Adjacent, Pairing::AllPairs] {
                for ties in [TiePolicy::Skip, TiePolicy::FirstWins, TiePolicy::DropGroup] {
                    let cfg = SelectionConfig { pairing, ties, nans: NanPolicy::Skip };
                    let got = selection_host(&select_pairs(verdicts(kind, &input), &scores, &cfg).unwrap());
                    for gi in 0..g {
                        let m = margins(kind, &v[gi * per..(gi + 1) * per], k);
                        let expected =
                            reference_selection(&m, &s[gi * k..(gi + 1) * k], k, &cfg).unwrap_or((-1, -1, 0.0));
                        let have = (got[0][gi] as i32, got[1][gi] as i32, got[4][gi]);
                        assert_eq!(have, expected, "{kind} k={k} {cfg:?} group {gi}");
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// CUDA against CPU

fn assert_same_comparison(what: &str, a: &Host, b: &Host, tol: f64) {
    assert_close(&format!("{what} preference"), &a.preference, &b.preference, tol);
    assert_close(&format!("{what} wins"), &a.wins, &b.wins, 0.0);
    assert_close(&format!("{what} copeland"), &a.copeland, &b.copeland, 0.0);
    assert_close(&format!("{what} ranks"), &a.ranks, &b.ranks, 0.0);
    assert_close(&format!("{what} strengths"), &a.strengths, &b.strengths, 1e-4);
    assert_close(&format!("{what} converged"), &a.converged, &b.converged, 0.0);
    match (&a.consistency, &b.consistency) {
        (Some(x), Some(y)) => assert_close(&format!("{what} consistency"), x, y, 1e-7),
        (None, None) => {}
        _ => panic!("{what}: consistency on one device only"),
    }
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_matches_cpu() {
    let seed: u64 = rand::thread_rng().gen();
    println!("seed={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let gpu = Device::Cuda(0);
    for kind in ["scores", "log_odds"] {
        for k in [1usize, 2, 7, 10, 33, 64, 96] {
            let g = 37;
            let v: Vec<f64> = random_input(&mut rng, kind, g, k).into_iter().map(f64::from).collect();
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                for hard in [false, true] {
                    let cpu_in = verdict_tensor(kind, &v, g, k, dtype, Device::Cpu);
                    let gpu_in = cpu_in.to_device(gpu).unwrap();
                    let a = Host::new(&compare(verdicts(kind, &cpu_in), &config(hard)).unwrap());
                    let b = Host::new(&compare(verdicts(kind, &gpu_in), &config(hard)).unwrap());
                    assert_same_comparison(&format!("{kind} k={k} {dtype} hard={hard}"), &a, &b, 1e-6);
                    // Best and worst may differ only between candidates of equal Copeland score and strength.
                    for gi in 0..g {
                        for (x, y) in [(a.best[gi], b.best[gi]), (a.worst[gi], b.worst[gi])] {
                            let (x, y) = (gi * k + x as usize, gi * k + y as usize);
                            assert_eq!(a.copeland[x], a.copeland[y]);
                            assert!((a.strengths[x] - a.strengths[y]).abs() < 1e-4);
                        }
                    }
                }
            }
        }
    }
    let too_wide = Tensor::zeros(&[1, 97], DType::F32, gpu).unwrap();
    shape_error(compare(Verdicts::Scores(&too_wide), &CompareConfig::default()), "at most 96");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_selection_matches_cpu() {
    let seed: u64 = rand::thread_rng().gen();
    println!("seed={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let gpu = Device::Cuda(0);
    for kind in ["scores", "log_odds"] {
        for k in [1usize, 2, 5, 10, 64, 130] {
            let g = 300;
            let per = if kind == "scores" { k } else { k * k };
            let v: Vec<f64> = (0..g * per).map(|_| f64::from(rng.gen_range(0..4))).collect();
            let s: Vec<f64> =
                (0..g * k).map(|_| if rng.gen_bool(0.02) { f64::NAN } else { rng.gen_range(-3.0..3.0) }).collect();
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let (cv, cs) =
                    (verdict_tensor(kind, &v, g, k, dtype, Device::Cpu), tensor(&s, &[g, k], dtype, Device::Cpu));
                let (gv, gs) = (cv.to_device(gpu).unwrap(), cs.to_device(gpu).unwrap());
                for pairing in [Pairing::Adjacent, Pairing::AllPairs] {
                    for ties in [TiePolicy::Skip, TiePolicy::FirstWins, TiePolicy::DropGroup] {
                        let cfg = SelectionConfig { pairing, ties, nans: NanPolicy::Skip };
                        let a = selection_host(&select_pairs(verdicts(kind, &cv), &cs, &cfg).unwrap());
                        let b = selection_host(&select_pairs(verdicts(kind, &gv), &gs, &cfg).unwrap());
                        for n in 0..5 {
                            assert_close(&format!("{kind} k={k} {dtype} {cfg:?} output {n}"), &b[n], &a[n], 0.0);
                        }
                    }
                }
                let strict = SelectionConfig::default();
                let (a, b) =
                    (select_pairs(verdicts(kind, &cv), &cs, &strict), select_pairs(verdicts(kind, &gv), &gs, &strict));
                assert_eq!(a.err().map(|e| e.to_string()), b.err().map(|e| e.to_string()));
            }
        }
    }
}
