//! `ur_adamw_*` called as C would call them (DLTensor arrays over host memory): the same steps as the Rust API,
//! bit for bit, with the report; bad input as status codes and messages with nothing written.

use std::ffi::{c_char, CStr, CString};
use std::ptr::{null, null_mut};

use unireward::ffi::*;
use unireward::train::optim::{AdamW, AdamWConfig, Schedule, ScheduleKind};
use unireward::{Device, Tensor};

/// A DLTensor over `data` (f32, CPU) with `shape` (kept alive by the caller).
fn dl(data: &mut [f32], shape: &mut [i64]) -> DLTensor {
    dl_as(data, shape, DLDataType { code: 2, bits: 32, lanes: 1 })
}

/// A DLTensor over `data` read as `dtype` (CPU), with `shape` (kept alive by the caller).
fn dl_as<T>(data: &mut [T], shape: &mut [i64], dtype: DLDataType) -> DLTensor {
    DLTensor {
        data: data.as_mut_ptr().cast(),
        device: DLDevice { device_type: 1, device_id: 0 },
        ndim: shape.len() as i32,
        dtype,
        shape: shape.as_mut_ptr(),
        strides: null_mut(),
        byte_offset: 0,
    }
}

const BF16: DLDataType = DLDataType { code: 4, bits: 16, lanes: 1 };

fn last_error() -> String {
    // SAFETY: never NULL, NUL-terminated, valid until the next failing call on this thread.
    unsafe { CStr::from_ptr(ur_last_error_message()) }.to_string_lossy().into_owned()
}

fn expect_status(status: ur_status, want: ur_status, fragment: &str) {
    assert_eq!(status, want, "{}", last_error());
    assert!(last_error().contains(fragment), "`{}` does not mention `{fragment}`", last_error());
}

struct Problem {
    w: Vec<f32>,
    b: Vec<f32>,
    grads: Vec<(Vec<f32>, Vec<f32>)>,
}

fn problem() -> Problem {
    let v = |n: usize, seed: f32| (0..n).map(|i| ((i as f32 + seed) * 0.37).sin()).collect::<Vec<f32>>();
    Problem {
        w: v(6, 0.0),
        b: v(2, 5.0),
        grads: (0..3).map(|k| (v(6, 10.0 + k as f32), v(2, 20.0 + k as f32))).collect(),
    }
}

#[test]
fn c_steps_equal_the_rust_api_and_bad_input_is_refused() {
    let mut ctx = null_mut();
    // SAFETY (whole test): every pointer below is valid for the call (test-owned memory kept alive across it).
    unsafe {
        assert_eq!(ur_context_create(&mut ctx), ur_status::UR_OK);
        let mut cfg = ur_adamw_config_default();
        cfg.lr = 0.05;
        cfg.max_grad_norm = 1.0;
        cfg.schedule = UR_SCHEDULE_COSINE;
        cfg.warmup_steps = 1;
        cfg.total_steps = 3;
        let p = problem();
        let (mut w, mut b) = (p.w.clone(), p.b.clone());
        let (mut ws, mut bs) = ([2i64, 3], [2i64]);
        let names_owned = [CString::new("w").unwrap(), CString::new("b").unwrap()];
        let names: Vec<*const c_char> = names_owned.iter().map(|n| n.as_ptr()).collect();

        // Bad configs: nothing created.
        let mut opt: *mut ur_adamw = null_mut();
        let params = [dl(&mut w, &mut ws), dl(&mut b, &mut bs)];
        let mut bad = cfg;
        bad.beta2 = 1.0;
        let status = ur_adamw_create(ctx, params.as_ptr(), names.as_ptr(), 2, &bad, &mut opt);
        expect_status(status, ur_status::UR_ERROR_INVALID_ARGUMENT, "`betas.1` must be in [0, 1)");
        bad = cfg;
        bad.lr = -1.0;
        let status = ur_adamw_create(ctx, params.as_ptr(), names.as_ptr(), 2, &bad, &mut opt);
        expect_status(status, ur_status::UR_ERROR_INVALID_ARGUMENT, "`lr`");
        bad = cfg;
        bad.schedule = 7;
        let status = ur_adamw_create(ctx, params.as_ptr(), names.as_ptr(), 2, &bad, &mut opt);
        expect_status(status, ur_status::UR_ERROR_INVALID_ARGUMENT, "`schedule` is 7");
        assert!(opt.is_null());
        assert_eq!(ur_adamw_create(ctx, params.as_ptr(), names.as_ptr(), 2, &cfg, &mut opt), ur_status::UR_OK);

        // The Rust API on the same values.
        let mut rust_params = [
            Tensor::from_slice(&p.w, &[2, 3], Device::Cpu).unwrap(),
            Tensor::from_slice(&p.b, &[2], Device::Cpu).unwrap(),
        ];
        let rust_names = ["w".to_string(), "b".to_string()];
        let config = AdamWConfig {
            lr: 0.05,
            max_grad_norm: Some(1.0),
            schedule: Schedule { kind: ScheduleKind::Cosine, warmup_steps: 1, total_steps: 3 },
            ..AdamWConfig::default()
        };
        let named: Vec<(String, &Tensor)> = rust_names.iter().cloned().zip(rust_params.iter()).collect();
        let mut rust_opt = AdamW::new(&named, vec![], config).unwrap();

        for (gw, gb) in &p.grads {
            let (mut gw, mut gb) = (gw.clone(), gb.clone());
            let params = [dl(&mut w, &mut ws), dl(&mut b, &mut bs)];
            let grads = [dl(&mut gw, &mut ws), dl(&mut gb, &mut bs)];
            let mut report = ur_adamw_step_report {
                struct_size: std::mem::size_of::<ur_adamw_step_report>() as u32,
                reserved: 0,
                step: 0,
                lr: 0.0,
                grad_norm: 0.0,
                clip_coef: 0.0,
            };
            let status = ur_adamw_step(ctx, opt, params.as_ptr(), grads.as_ptr(), 2, &mut report, null_mut());
            assert_eq!(status, ur_status::UR_OK, "{}", last_error());
            let g = [
                Tensor::from_slice(&gw, &[2, 3], Device::Cpu).unwrap(),
                Tensor::from_slice(&gb, &[2], Device::Cpu).unwrap(),
            ];
            let named_grads: Vec<(String, &Tensor)> = rust_names.iter().cloned().zip(g.iter()).collect();
            let mut named: Vec<(String, &mut Tensor)> =
                rust_names.iter().cloned().zip(rust_params.iter_mut()).collect();
            let want = rust_opt.step(&mut named, &named_grads).unwrap();
            assert_eq!((report.step, report.lr, report.clip_coef), (want.step, want.lr, want.clip_coef));
            assert_eq!(report.grad_norm, want.grad_norm.unwrap());
        }
        assert_eq!(w, rust_params[0].to_vec::<f32>().unwrap(), "bit for bit the Rust API's step");
        assert_eq!(b, rust_params[1].to_vec::<f32>().unwrap());

        // A step's bad input: a status and a message, nothing written.
        let before = (w.clone(), b.clone());
        let (mut gw, mut gb) = (vec![0.5f32; 6], vec![0.5f32; 2]);
        let mut wrong = [3i64, 2];
        let params = [dl(&mut w, &mut ws), dl(&mut b, &mut bs)];
        let grads = [dl(&mut gw, &mut wrong), dl(&mut gb, &mut bs)];
        let status = ur_adamw_step(ctx, opt, params.as_ptr(), grads.as_ptr(), 2, null_mut(), null_mut());
        expect_status(status, ur_status::UR_ERROR_SHAPE, "gradient `w` has shape [3, 2]");
        let grads = [dl(&mut gw, &mut ws), dl(&mut gb, &mut bs)];
        let status = ur_adamw_step(ctx, opt, params.as_ptr(), grads.as_ptr(), 1, null_mut(), null_mut());
        expect_status(status, ur_status::UR_ERROR_INVALID_ARGUMENT, "`count` is 1");
        let status = ur_adamw_step(ctx, null_mut(), params.as_ptr(), grads.as_ptr(), 2, null_mut(), null_mut());
        expect_status(status, ur_status::UR_ERROR_NULL_POINTER, "`opt` is NULL");
        let status = ur_adamw_step(ctx, opt, params.as_ptr(), null(), 2, null_mut(), null_mut());
        expect_status(status, ur_status::UR_ERROR_NULL_POINTER, "`grads` is NULL");
        // A gradient that is the parameter itself.
        let aliased = [dl(&mut w, &mut ws), dl(&mut gb, &mut bs)];
        let status = ur_adamw_step(ctx, opt, params.as_ptr(), aliased.as_ptr(), 2, null_mut(), null_mut());
        expect_status(status, ur_status::UR_ERROR_INVALID_ARGUMENT, "`params[0]` overlaps `grads[0]`");
        assert_eq!((w.clone(), b.clone()), before);

        ur_adamw_free(opt);
        ur_adamw_free(null_mut());
        ur_context_free(ctx);
    }
}

/// The moments and masters of `opt` through `ur_adamw_get_state`, with its step.
///
/// # Safety
/// `ctx` and `opt` are live.
unsafe fn get_state(ctx: *mut ur_context, opt: *mut ur_adamw) -> (Vec<f32>, Vec<f32>, Vec<f32>, u64) {
    let (mut moments, mut masters, mut step) = (0u64, 0u64, 0u64);
    // SAFETY: this function's contract; the outputs are live locals.
    unsafe {
        assert_eq!(ur_adamw_state_numel(ctx, opt, &mut moments, &mut masters, &mut step), ur_status::UR_OK);
        let (mut m, mut v, mut w) =
            (vec![f32::NAN; moments as usize], vec![f32::NAN; moments as usize], vec![f32::NAN; masters as usize]);
        let (mut ms, mut vs, mut ws) = ([moments as i64], [moments as i64], [masters as i64]);
        let (dm, dv, dw) = (dl(&mut m, &mut ms), dl(&mut v, &mut vs), dl(&mut w, &mut ws));
        let mut got_step = u64::MAX;
        let status = ur_adamw_get_state(ctx, opt, &dm, &dv, &dw, &mut got_step, null_mut());
        assert_eq!(status, ur_status::UR_OK, "{}", last_error());
        assert_eq!(got_step, step);
        (m, v, w, step)
    }
}

#[test]
fn state_round_trips_through_c_and_a_resumed_optimizer_steps_bitwise() {
    let mut ctx = null_mut();
    // SAFETY (whole test): every pointer below is valid for the call (test-owned memory kept alive across it).
    unsafe {
        assert_eq!(ur_context_create(&mut ctx), ur_status::UR_OK);
        let mut cfg = ur_adamw_config_default();
        cfg.lr = 0.05;
        cfg.max_grad_norm = 0.5;
        cfg.schedule = UR_SCHEDULE_LINEAR;
        cfg.warmup_steps = 1;
        cfg.total_steps = 6;
        let p = problem();
        // A bf16 weight (it has an fp32 master) and an f32 bias.
        let bf16_bits = |x: &f32| half::bf16::from_f32(*x).to_bits();
        let mut w: Vec<u16> = p.w.iter().map(bf16_bits).collect();
        let mut b = p.b.clone();
        let (mut ws, mut bs) = ([2i64, 3], [2i64]);
        let create = |w: &mut Vec<u16>, b: &mut Vec<f32>, ws: &mut [i64; 2], bs: &mut [i64; 1]| {
            let params = [dl_as(w, ws, BF16), dl(b, bs)];
            let mut opt = null_mut();
            assert_eq!(ur_adamw_create(ctx, params.as_ptr(), null(), 2, &cfg, &mut opt), ur_status::UR_OK);
            opt
        };
        let step = |opt, w: &mut Vec<u16>, b: &mut Vec<f32>, k: usize| {
            let (mut gw, mut gb) = (p.grads[k].0.clone(), p.grads[k].1.clone());
            let (mut ws, mut bs, mut gws, mut gbs) = ([2i64, 3], [2i64], [2i64, 3], [2i64]);
            let params = [dl_as(w, &mut ws, BF16), dl(b, &mut bs)];
            let grads = [dl(&mut gw, &mut gws), dl(&mut gb, &mut gbs)];
            let status = ur_adamw_step(ctx, opt, params.as_ptr(), grads.as_ptr(), 2, null_mut(), null_mut());
            assert_eq!(status, ur_status::UR_OK, "{}", last_error());
        };
        let original = create(&mut w, &mut b, &mut ws, &mut bs);
        step(original, &mut w, &mut b, 0);
        step(original, &mut w, &mut b, 1);
        let (m, v, masters, done) = get_state(ctx, original);
        assert_eq!((m.len(), masters.len(), done), (8, 6, 2));
        assert!(m.iter().chain(&v).chain(&masters).all(|x| x.is_finite()) && v.iter().all(|&x| x > 0.0));
        // The masters round to the bf16 weights the optimizer wrote.
        assert_eq!(masters.iter().map(bf16_bits).collect::<Vec<_>>(), w, "masters vs weights");

        let (mut w2, mut b2) = (w.clone(), b.clone());
        let resumed = create(&mut w2, &mut b2, &mut ws, &mut bs);
        let (mut m_in, mut v_in, mut w_in) = (m.clone(), v.clone(), masters.clone());
        let (mut ms, mut vs, mut mws) = ([8i64], [8i64], [6i64]);
        // Refusals, each leaving the fresh optimizer as it was.
        let mut short = [7i64];
        let (dm_short, dv, dw) = (dl(&mut m_in, &mut short), dl(&mut v_in, &mut vs), dl(&mut w_in, &mut mws));
        let status = ur_adamw_set_state(ctx, resumed, &dm_short, &dv, &dw, done, null_mut());
        expect_status(status, ur_status::UR_ERROR_INVALID_ARGUMENT, "`exp_avg` is a [7] f32 tensor");
        let dm = dl(&mut m_in, &mut ms);
        let status = ur_adamw_set_state(ctx, resumed, &dm, &dv, null(), done, null_mut());
        expect_status(status, ur_status::UR_ERROR_NULL_POINTER, "`master`");
        let (mut junk, mut junk_shape) = (vec![-1.0f32; 8], [8i64]);
        let d_junk = dl(&mut junk, &mut junk_shape);
        let status = ur_adamw_get_state(ctx, original, &d_junk, &d_junk, &dw, null_mut(), null_mut());
        expect_status(status, ur_status::UR_ERROR_INVALID_ARGUMENT, "`exp_avg_out` overlaps `exp_avg_sq_out`");
        assert_eq!(junk, vec![-1.0; 8], "a refused get_state wrote its outputs");
        let status = ur_adamw_set_state(ctx, null_mut(), &dm, &dv, &dw, done, null_mut());
        expect_status(status, ur_status::UR_ERROR_NULL_POINTER, "`opt`");
        assert_eq!(get_state(ctx, resumed).3, 0, "a refused set_state changed the optimizer");

        assert_eq!(ur_adamw_set_state(ctx, resumed, &dm, &dv, &dw, done, null_mut()), ur_status::UR_OK);
        assert_eq!(get_state(ctx, resumed), (m, v, masters, done), "the state reads back as it was set");
        for k in 2..4 {
            step(original, &mut w, &mut b, k % 3);
            step(resumed, &mut w2, &mut b2, k % 3);
        }
        assert_eq!((w2, b2), (w, b), "a resumed optimizer steps bit for bit as the uninterrupted one");

        ur_adamw_free(original);
        ur_adamw_free(resumed);
        ur_context_free(ctx);
    }
}
