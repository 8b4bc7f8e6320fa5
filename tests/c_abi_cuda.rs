//! The C ABI on CUDA (scripts/gpu_check.sh runs it; ignored without `--features gpu-tests`): the exports called
//! with DLTensors in device memory and a caller-created stream agree with the Rust API on the CPU, the in-place
//! logits gradient works on the device, and mixed devices are refused.

use std::ffi::{c_void, CStr};
use std::ptr::{null, null_mut};

use unireward::ffi::*;
use unireward::ops::logprobs::{sequence_logprobs, sequence_logprobs_backward, LogProbsConfig};
use unireward::ops::preference::{dpo_loss, DpoConfig, PreferenceLogps};
use unireward::runtime::cuda;
use unireward::{DType, Device, Tensor};

/// A DLTensor describing `t` (CPU or CUDA), with its shape storage.
struct Dl {
    dl: DLTensor,
    _shape: Box<[i64]>,
}

fn dl(t: &Tensor) -> Dl {
    let mut shape: Box<[i64]> = t.shape().iter().map(|&d| d as i64).collect();
    let (code, bits) = match t.dtype() {
        DType::F32 => (2, 32),
        DType::BF16 => (4, 16),
        DType::F16 => (2, 16),
        DType::I32 => (0, 32),
        DType::I64 => (0, 64),
    };
    let (data, device) = match t.device() {
        Device::Cpu => (cpu_ptr(t), DLDevice { device_type: 1, device_id: 0 }),
        Device::Cuda(n) => (t.cuda_ptr().unwrap().0 as *mut c_void, DLDevice { device_type: 2, device_id: n as i32 }),
    };
    let dl = DLTensor {
        data,
        device,
        ndim: shape.len() as i32,
        dtype: DLDataType { code, bits, lanes: 1 },
        shape: shape.as_mut_ptr(),
        strides: null_mut(),
        byte_offset: 0,
    };
    Dl { dl, _shape: shape }
}

fn cpu_ptr(t: &Tensor) -> *mut c_void {
    match t.dtype() {
        DType::F32 => t.as_slice::<f32>().unwrap().as_ptr() as *mut c_void,
        DType::I64 => t.as_slice::<i64>().unwrap().as_ptr() as *mut c_void,
        _ => unimplemented!("only f32 and i64 CPU tensors in this test"),
    }
}

fn ok(status: ur_status) {
    // SAFETY: the message is a NUL-terminated string.
    let message = unsafe { CStr::from_ptr(ur_last_error_message()) };
    assert_eq!(status, ur_status::UR_OK, "{message:?}");
}

fn close(a: &[f32], b: &[f32]) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "[{i}]: CUDA {x}, CPU {y}");
    }
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn exports_on_cuda_tensors_and_a_caller_stream_agree_with_the_cpu() {
    let gpu = Device::Cuda(0);
    let backend = cuda::backend(0).unwrap();
    let stream = backend.context().new_stream().unwrap();
    let cu_stream = stream.cu_stream() as *mut c_void;
    let (n, t, v) = (3, 17, 1000);
    let logits: Vec<f32> = (0..n * t * v).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect();
    let labels: Vec<i64> = (0..n * t).map(|i| if i % 5 == 0 { -100 } else { (i * 31 % v) as i64 }).collect();
    let cpu_logits = Tensor::from_slice(&logits, &[n, t, v], Device::Cpu).unwrap();
    let cpu_labels = Tensor::from_slice(&labels, &[n, t], Device::Cpu).unwrap();
    let cfg = LogProbsConfig::default();
    let expected = sequence_logprobs(&cpu_logits, &cpu_labels, None, &cfg).unwrap();
    let grad_logps = Tensor::from_slice(&[1.0f32, -0.5, 2.0], &[n], Device::Cpu).unwrap();
    let expected_grad =
        sequence_logprobs_backward(&cpu_logits, &cpu_labels, None, &expected, &grad_logps, &cfg).unwrap();

    let mut ctx = null_mut();
    // SAFETY: a valid out-pointer.
    ok(unsafe { ur_context_create(&mut ctx) });
    let (d_logits, d_labels) = (cpu_logits.to_device(gpu).unwrap(), cpu_labels.to_device(gpu).unwrap());
    let d_grad_logps = grad_logps.to_device(gpu).unwrap();
    let outs = [[n].as_slice(), &[n], &[n, t]].map(|s| Tensor::zeros(s, DType::F32, gpu).unwrap());
    backend.synchronize().unwrap(); // the inputs were written on the library's stream, the calls use another
    let (l, lab, g) = (dl(&d_logits), dl(&d_labels), dl(&d_grad_logps));
    let [logps, counts, lse] = outs.each_ref().map(dl);
    // SAFETY: every descriptor describes live device memory of device 0; the stream belongs to its context.
    unsafe {
        ok(ur_logprobs_forward(
            ctx,
            &l.dl,
            &lab.dl,
            null(),
            null(),
            &logps.dl,
            &counts.dl,
            null(),
            null(),
            &lse.dl,
            cu_stream,
        ));
        // In place: the logits become their gradient.
        ok(ur_logprobs_backward(ctx, &l.dl, &lab.dl, null(), &lse.dl, &counts.dl, &g.dl, null(), &l.dl, cu_stream));
    }
    stream.synchronize().unwrap();
    close(&outs[0].to_vec::<f32>().unwrap(), &expected.logps.to_vec::<f32>().unwrap());
    close(&outs[2].to_vec::<f32>().unwrap(), &expected.lse.to_vec::<f32>().unwrap());
    close(&d_logits.to_vec::<f32>().unwrap(), &expected_grad.to_vec::<f32>().unwrap());

    // A loss writes host memory: the call waits for its work.
    let (pc, pr, rc, rr) = ([-3.0f32, -5.5], [-4.0f32, -5.0], [-3.5f32, -5.0], [-3.75f32, -5.25]);
    let cpu = [pc, pr, rc, rr].map(|x| Tensor::from_slice(&x, &[2], Device::Cpu).unwrap());
    let expected =
        dpo_loss(&PreferenceLogps::new(&cpu[0], &cpu[1]).with_reference(&cpu[2], &cpu[3]), &DpoConfig::default())
            .unwrap();
    let dev = cpu.each_ref().map(|x| x.to_device(gpu).unwrap());
    let grads = [0, 1].map(|_| Tensor::zeros(&[2], DType::F32, gpu).unwrap());
    backend.synchronize().unwrap();
    let [a, b, c, d] = dev.each_ref().map(dl);
    let [ga, gb] = grads.each_ref().map(dl);
    let mut loss = 0f32;
    // SAFETY: as above; `loss` is host memory.
    ok(unsafe {
        ur_dpo_loss(
            ctx,
            &a.dl,
            &b.dl,
            &c.dl,
            &d.dl,
            null(),
            null(),
            null(),
            &mut loss,
            &ga.dl,
            &gb.dl,
            null_mut(),
            cu_stream,
        )
    });
    assert!((loss - expected.loss).abs() <= 1e-6 * (1.0 + expected.loss.abs()), "{loss} vs {}", expected.loss);
    stream.synchronize().unwrap();
    close(&grads[0].to_vec::<f32>().unwrap(), &expected.grad_policy_chosen.to_vec::<f32>().unwrap());

    // One tensor on the host, the rest on the device: refused before any work.
    let host = dl(&cpu[1]);
    // SAFETY: as above; the host tensor is live CPU memory.
    let status = unsafe {
        ur_dpo_loss(
            ctx,
            &a.dl,
            &host.dl,
            &c.dl,
            &d.dl,
            null(),
            null(),
            null(),
            &mut loss,
            &ga.dl,
            &gb.dl,
            null_mut(),
            cu_stream,
        )
    };
    assert_eq!(status, ur_status::UR_ERROR_DEVICE);
    // SAFETY: created above.
    unsafe { ur_context_free(ctx) };
}

/// max |got − want| / max |want|.
fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    diff / want.iter().map(|x| x.abs()).fold(f32::MIN_POSITIVE, f32::max)
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn model_on_cuda_with_a_caller_stream_agrees_with_the_cpu() {
    use unireward::judge::{generate, GenerationConfig};
    use unireward::model::{ForwardOptions, Qwen2Model};

    let gpu = Device::Cuda(0);
    let backend = cuda::backend(0).unwrap();
    let stream = backend.context().new_stream().unwrap();
    let cu_stream = stream.cu_stream() as *mut c_void;
    let dir = format!("{}/tests/fixtures/qwen2/gqa_untied", env!("CARGO_MANIFEST_DIR"));
    let cpu_model = Qwen2Model::load(std::path::Path::new(&dir), DType::F32, Device::Cpu).unwrap();
    let (n, t, v) = (2, 6, cpu_model.config.vocab_size);
    let ids: Vec<i64> = (0..n * t).map(|i| (i * 37 % v) as i64).collect();
    let mask: Vec<i64> = (0..n * t).map(|i| i64::from(i != n * t - 1)).collect();
    let (ids, mask) = (
        Tensor::from_slice(&ids, &[n, t], Device::Cpu).unwrap(),
        Tensor::from_slice(&mask, &[n, t], Device::Cpu).unwrap(),
    );
    let grad: Vec<f32> = (0..n * t * v).map(|i| ((i * 7) % 11) as f32 * 0.01 - 0.05).collect();
    let grad = Tensor::from_slice(&grad, &[n, t, v], Device::Cpu).unwrap();
    let pass = cpu_model.forward(&ids, &mask, ForwardOptions::default()).unwrap();
    let expected_logits = cpu_model.logits(&pass).unwrap();
    let expected = cpu_model.backward_from_logits(pass, &grad).unwrap();

    let mut ctx = null_mut();
    let mut model = null_mut();
    let path = std::ffi::CString::new(dir).unwrap();
    // SAFETY: valid out-pointers and a NUL-terminated path.
    unsafe {
        ok(ur_context_create(&mut ctx));
        let f32_dtype = DLDataType { code: 2, bits: 32, lanes: 1 };
        ok(ur_model_load(ctx, path.as_ptr(), f32_dtype, DLDevice { device_type: 2, device_id: 0 }, &mut model));
    }
    let (d_ids, d_mask, d_grad) =
        (ids.to_device(gpu).unwrap(), mask.to_device(gpu).unwrap(), grad.to_device(gpu).unwrap());
    let logits = Tensor::zeros(&[n, t, v], DType::F32, gpu).unwrap();
    backend.synchronize().unwrap(); // the inputs were written on the library's stream, the calls use another
    let (i, m, l, g) = (dl(&d_ids), dl(&d_mask), dl(&logits), dl(&d_grad));
    // SAFETY: every descriptor describes live device memory of device 0; the stream belongs to its context.
    unsafe {
        ok(ur_model_forward(ctx, model, &i.dl, &m.dl, &l.dl, cu_stream));
        ok(ur_model_backward(ctx, model, &g.dl, cu_stream));
    }
    stream.synchronize().unwrap();
    let err = relative_error(&logits.to_vec::<f32>().unwrap(), &expected_logits.to_vec::<f32>().unwrap());
    assert!(err < 1e-4, "logits: CUDA vs CPU {err:.3e}");
    let mut wanted: Vec<(String, &Tensor)> = expected.weights.named();
    wanted.push(("inputs_embeds".into(), &expected.inputs_embeds));
    for (name, want) in wanted {
        let out = Tensor::zeros(want.shape(), DType::F32, gpu).unwrap();
        backend.synchronize().unwrap();
        let (o, c_name) = (dl(&out), std::ffi::CString::new(name.clone()).unwrap());
        // SAFETY: as above.
        ok(unsafe { ur_model_gradient(ctx, model, c_name.as_ptr(), &o.dl, cu_stream) });
        stream.synchronize().unwrap();
        let err = relative_error(&out.to_vec::<f32>().unwrap(), &want.to_vec::<f32>().unwrap());
        assert!(err < 1e-4, "{name}: CUDA vs CPU {err:.3e}");
    }

    let prompt = [54i32, 72, 78, 77, 54];
    let cfg = GenerationConfig { max_new_tokens: 12, ..Default::default() };
    let cpu_tokens = generate(&cpu_model, &[prompt.iter().map(|&p| p as u32).collect()], &cfg).unwrap();
    let mut gen = ur_generation_config_default();
    gen.max_new_tokens = 12;
    let (mut out, mut len) = ([0i32; 12], 0usize);
    // SAFETY: host arrays of the stated lengths.
    ok(unsafe { ur_model_generate(ctx, model, prompt.as_ptr(), prompt.len(), &gen, out.as_mut_ptr(), 12, &mut len) });
    assert_eq!(out[..len].iter().map(|&x| x as u32).collect::<Vec<_>>(), cpu_tokens[0]);

    // Host logits for a CUDA model: refused before any work.
    let host = Tensor::zeros(&[n, t, v], DType::F32, Device::Cpu).unwrap();
    let h = dl(&host);
    // SAFETY: as above; the host tensor is live CPU memory.
    let status = unsafe { ur_model_forward(ctx, model, &i.dl, &m.dl, &h.dl, cu_stream) };
    assert_eq!(status, ur_status::UR_ERROR_DEVICE);
    // SAFETY: created above.
    unsafe {
        ur_model_free(model);
        ur_context_free(ctx);
    }
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn llava_on_cuda_with_media_agrees_with_the_cpu() {
    use unireward::judge::GenerationConfig;
    use unireward::media::{ImageLayout, ImageProcessor};
    use unireward::model::llava::{LlavaBatch, LlavaOnevisionModel, MediaInput};
    use unireward::model::ForwardOptions;

    let gpu = Device::Cuda(0);
    let backend = cuda::backend(0).unwrap();
    let stream = backend.context().new_stream().unwrap();
    let cu_stream = stream.cu_stream() as *mut c_void;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava");
    let cpu_model = LlavaOnevisionModel::load(&root.join("hf"), DType::F32, Device::Cpu).unwrap();
    let processor = ImageProcessor::for_checkpoint(&root.join("hf")).unwrap();
    let image = processor.preprocess_file(&root.join("images/anyres_0.png"), ImageLayout::Anyres).unwrap();
    let video = processor.preprocess_video(&root.join("video"), 4).unwrap();
    let media = [MediaInput::image(&image), MediaInput::Video { frames: &video }];
    let counts = cpu_model.placeholder_counts(&media).unwrap();
    let p = cpu_model.placeholders();
    let mut ids = vec![5i64];
    ids.extend(std::iter::repeat_n(p.image, counts[0]));
    ids.push(7);
    ids.extend(std::iter::repeat_n(p.video, counts[1]));
    ids.push(8);
    let (t, v) = (ids.len(), cpu_model.config.text.vocab_size);
    let ids = Tensor::from_slice(&ids, &[1, t], Device::Cpu).unwrap();
    let mask = Tensor::from_slice(&vec![1i64; t], &[1, t], Device::Cpu).unwrap();
    let grad: Vec<f32> = (0..t * v).map(|i| ((i * 5) % 13) as f32 * 0.01 - 0.06).collect();
    let grad = Tensor::from_slice(&grad, &[1, t, v], Device::Cpu).unwrap();
    let pass =
        cpu_model.forward(&LlavaBatch { ids: &ids, mask: &mask, media: &media }, ForwardOptions::default()).unwrap();
    let expected_logits = cpu_model.logits(&pass).unwrap();
    let expected = cpu_model.backward_from_logits(pass, &grad).unwrap();

    let (mut ctx, mut model) = (null_mut(), null_mut());
    let path = std::ffi::CString::new(root.join("hf").to_str().unwrap()).unwrap();
    let video_path = std::ffi::CString::new(root.join("video").to_str().unwrap()).unwrap();
    // SAFETY: valid out-pointers and a NUL-terminated path.
    unsafe {
        ok(ur_context_create(&mut ctx));
        let f32_dtype = DLDataType { code: 2, bits: 32, lanes: 1 };
        ok(ur_model_load(ctx, path.as_ptr(), f32_dtype, DLDevice { device_type: 2, device_id: 0 }, &mut model));
    }
    let (d_ids, d_grad, d_pixels) =
        (ids.to_device(gpu).unwrap(), grad.to_device(gpu).unwrap(), image.pixel_values.to_device(gpu).unwrap());
    let logits = Tensor::zeros(&[1, t, v], DType::F32, gpu).unwrap();
    backend.synchronize().unwrap(); // the inputs were written on the library's stream, the calls use another
    let (i, l, g, px) = (dl(&d_ids), dl(&logits), dl(&d_grad), dl(&d_pixels));
    let mut items = [ur_media_default(), ur_media_default()];
    items[0].pixel_values = &px.dl;
    (items[0].height, items[0].width) = (image.image_size.0 as u64, image.image_size.1 as u64);
    items[1].kind = UR_MEDIA_VIDEO;
    items[1].path = video_path.as_ptr();
    items[1].num_frames = 4;
    // SAFETY: every descriptor describes live device memory of device 0; the stream belongs to its context.
    unsafe {
        ok(ur_model_forward_ex(ctx, model, &i.dl, null(), items.as_ptr(), 2, &l.dl, cu_stream));
        ok(ur_model_backward(ctx, model, &g.dl, cu_stream));
    }
    stream.synchronize().unwrap();
    let err = relative_error(&logits.to_vec::<f32>().unwrap(), &expected_logits.to_vec::<f32>().unwrap());
    assert!(err < 1e-4, "logits: CUDA vs CPU {err:.3e}");
    for (name, want) in cpu_model.named_gradients(&expected) {
        let out = Tensor::zeros(want.shape(), DType::F32, gpu).unwrap();
        backend.synchronize().unwrap();
        let (o, c_name) = (dl(&out), std::ffi::CString::new(name.clone()).unwrap());
        // SAFETY: as above.
        ok(unsafe { ur_model_gradient(ctx, model, c_name.as_ptr(), &o.dl, cu_stream) });
        stream.synchronize().unwrap();
        let (got, want) = (out.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
        // A vision key bias's gradient is zero in exact arithmetic: rounding noise on both devices.
        if name.contains("k_proj.bias") && name.contains("vision") {
            assert!(got.iter().chain(&want).all(|x| x.abs() < 1e-4), "{name}");
        } else {
            let err = relative_error(&got, &want);
            assert!(err < 1e-4, "{name}: CUDA vs CPU {err:.3e}");
        }
    }

    let prompt: Vec<i32> = ids.to_vec::<i64>().unwrap().into_iter().map(|id| id as i32).collect();
    let prompt64: Vec<i64> = prompt.iter().map(|&id| id.into()).collect();
    let cfg = GenerationConfig { max_new_tokens: 6, ..Default::default() };
    let cpu_tokens = cpu_model.generate(&prompt64, &media, &cfg).unwrap();
    let mut gen = ur_generation_config_default();
    gen.max_new_tokens = 6;
    let mut out = [0i32; 6];
    let mut result = ur_generation_result {
        struct_size: size_of::<ur_generation_result>() as u32,
        finish_reason: -1,
        num_tokens: 0,
    };
    backend.synchronize().unwrap();
    // SAFETY: host arrays of the stated lengths; the pixels are complete on the device.
    ok(unsafe {
        ur_model_generate_ex(
            ctx,
            model,
            prompt.as_ptr(),
            prompt.len(),
            items.as_ptr(),
            2,
            &gen,
            out.as_mut_ptr(),
            6,
            &mut result,
        )
    });
    assert_eq!(out[..result.num_tokens as usize].iter().map(|&x| x as u32).collect::<Vec<_>>(), cpu_tokens);
    assert_eq!(result.finish_reason, UR_FINISH_MAX_NEW_TOKENS);
    // SAFETY: created above.
    unsafe {
        ur_model_free(model);
        ur_context_free(ctx);
    }
}
