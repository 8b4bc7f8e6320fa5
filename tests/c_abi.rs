//! The C ABI from C: compiles `tests/c/test_abi.c` and `bindings/c/example.c` with the system C compiler against
//! the freshly built `libunireward.so`, runs them (the test program checks every export's failing paths itself and
//! dumps the inputs and outputs of its successful calls, which are recomputed here with the Rust API and
//! compared), then runs both under valgrind, which must report no error and no leak. The model calls run on the
//! Qwen2 fixture `tests/fixtures/qwen2/gqa_untied`, whose float64 reference gives the greedy tokens to expect.

// Shared with tests/qwen2/ (this test uses only part of it).
#[allow(dead_code)]
#[path = "qwen2/reference.rs"]
mod reference;

// Shared with tests/judge_api.rs (this test uses only part of it).
#[allow(dead_code)]
mod judge_checkpoint;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use judge_checkpoint::parse_codes;
use unireward::ffi::{UR_ABI_VERSION, UR_VERDICT_FIRST, UR_VERDICT_NONE, UR_VERDICT_SECOND, UR_VERDICT_TIE};
use unireward::judge::{
    Candidate, Context, GenerationConfig, Judge, JudgeRequest, JudgeResult, MediaFile, Mode, Reasoning, Task,
    TaskTemplate,
};
use unireward::media::{ImageLayout, ImageProcessor, ImageProcessorConfig, RgbImage};
use unireward::model::llava::{LlavaBatch, LlavaOnevisionModel, MediaInput};
use unireward::model::qwen2::ForwardOptions;
use unireward::model::Qwen2Model;
use unireward::ops::compare::{compare, select_pairs, CompareConfig, SelectionConfig, Verdicts};
use unireward::ops::fused_linear::{
    fused_linear_logprobs, fused_linear_logprobs_backward, FusedLinearConfig, LinearHead,
};
use unireward::ops::heads::{
    scalar_reward, scalar_reward_backward, verdict_head, verdict_head_backward, ScalarHead, VerdictClasses,
    VerdictGrads,
};
use unireward::ops::logprobs::{sequence_logprobs, sequence_logprobs_backward, LogProbsConfig, TokenReduction};
use unireward::ops::preference::{
    bradley_terry_loss, diffusion_dpo_loss, dpo_loss, kwise_loss, BradleyTerryConfig, DiffusionDpoConfig,
    DiffusionDpoInputs, DpoConfig, DpoLossType, KwiseConfig, KwiseMethod, PreferenceLogps,
};
use unireward::train::dpo::DpoRecordTrainer;
use unireward::train::reward::{RewardLoss, RewardRecordTrainer};
use unireward::train::run::StepOptions;
use unireward::train::sft::SftRecordTrainer;
use unireward::{DType, Device, Tensor};

/// `target/<profile>/deps`, where cargo built `libunireward.so` with the rlib this test links (the copy one level
/// up is only refreshed by `cargo build`).
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("target/<profile>/deps").to_path_buf();
    assert!(dir.join("libunireward.so").exists(), "libunireward.so not found in {}", dir.display());
    // A program linked with -lunireward needs the library under its SONAME (as `cmake --install` provides it).
    let soname = dir.join(format!("libunireward.so.{UR_ABI_VERSION}"));
    match std::os::unix::fs::symlink("libunireward.so", &soname) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => panic!("linking {}: {e}", soname.display()),
        _ => {}
    }
    dir
}

/// Compiles C `source` against the library into a fresh executable.
fn compile(source: &str, name: &str) -> PathBuf {
    compile_with(("CC", "cc", "-std=c11"), source, name)
}

/// Compiles `source` with the compiler named by `env` (else `default`) in language standard `std`.
fn compile_with((env, default, std): (&str, &str, &str), source: &str, name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = library_dir();
    let out = std::env::temp_dir().join(format!("unireward-{name}-{}", std::process::id()));
    let status = Command::new(std::env::var(env).unwrap_or_else(|_| default.into()))
        .args([std, "-Wall", "-Wextra", "-Werror", "-pedantic", "-g", "-O1"])
        .arg("-I")
        .arg(root.join("include"))
        .arg(root.join(source))
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lunireward", "-lm", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("could not run the compiler (set {env} or install gcc): {e}"));
    assert!(status.success(), "compiling {source} failed");
    out
}

/// Runs `program args...`, directly or under valgrind, and returns its stdout; fails the test on a nonzero exit.
fn run(program: &Path, args: &[&OsStr], valgrind: bool) -> String {
    let mut cmd = if valgrind {
        let mut c = Command::new("valgrind");
        let suppressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/valgrind.supp");
        c.args(["--error-exitcode=1", "--leak-check=full", "--quiet"])
            .arg(format!("--suppressions={}", suppressions.display()));
        c.arg(program);
        c
    } else {
        Command::new(program)
    };
    let out = cmd.args(args).output().expect("could not run the C program");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} failed{} ({}):\n{stdout}\n{}",
        program.display(),
        if valgrind { " under valgrind" } else { "" },
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn valgrind_present() -> bool {
    Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// The arrays the C program dumped: key -> (dtype, shape, values).
struct Dump(HashMap<String, (String, Vec<usize>, Vec<f64>)>);

impl Dump {
    fn read(path: &Path) -> Dump {
        let text = std::fs::read_to_string(path).expect("dump file");
        let mut map = HashMap::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let key = words.next().expect("key").to_string();
            let dtype = words.next().expect("dtype").to_string();
            let ndim: usize = words.next().expect("ndim").parse().expect("ndim");
            let shape: Vec<usize> = (0..ndim).map(|_| words.next().expect("dim").parse().expect("dim")).collect();
            let values: Vec<f64> = words.map(|w| w.parse().expect("value")).collect();
            assert_eq!(values.len(), shape.iter().product::<usize>(), "{key}: wrong number of values");
            map.insert(key, (dtype, shape, values));
        }
        Dump(map)
    }

    fn get(&self, key: &str) -> &(String, Vec<usize>, Vec<f64>) {
        self.0.get(key).unwrap_or_else(|| panic!("the C program did not dump `{key}`"))
    }

    fn tensor(&self, key: &str) -> Tensor {
        let (dtype, shape, values) = self.get(key);
        match dtype.as_str() {
            "f32" => Tensor::from_slice(&values.iter().map(|&v| v as f32).collect::<Vec<_>>(), shape, Device::Cpu),
            "i32" => Tensor::from_slice(&values.iter().map(|&v| v as i32).collect::<Vec<_>>(), shape, Device::Cpu),
            _ => Tensor::from_slice(&values.iter().map(|&v| v as i64).collect::<Vec<_>>(), shape, Device::Cpu),
        }
        .unwrap()
    }

    fn scalar(&self, key: &str) -> f64 {
        self.get(key).2[0]
    }

    /// The C result `key` equals the Rust API's `expected` (to the last bits: same library, same inputs).
    fn check(&self, key: &str, expected: &Tensor) {
        let (_, shape, values) = self.get(key);
        assert_eq!(shape.as_slice(), expected.shape(), "{key}: shape");
        let expected: Vec<f64> = match expected.dtype() {
            DType::I32 => expected.to_vec::<i32>().unwrap().into_iter().map(f64::from).collect(),
            DType::I64 => expected.to_vec::<i64>().unwrap().into_iter().map(|v| v as f64).collect(),
            _ => expected.to_f32_cow().unwrap().iter().map(|&v| v as f64).collect(),
        };
        for (i, (&c, &r)) in values.iter().zip(&expected).enumerate() {
            assert!(close(c, r), "{key}[{i}]: C gave {c}, the Rust API {r}");
        }
    }

    fn check_scalar(&self, key: &str, expected: f32) {
        let c = self.scalar(key);
        assert!(close(c, expected as f64), "{key}: C gave {c}, the Rust API {expected}");
    }
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-6 * (1.0 + b.abs())
}

fn check_logprobs(d: &Dump) {
    let (logits, labels) = (d.tensor("lp.logits"), d.tensor("lp.labels"));
    let cfg = LogProbsConfig::default();
    let r = sequence_logprobs(&logits, &labels, None, &cfg).unwrap();
    d.check("lp.logps", &r.logps);
    d.check("lp.counts", &r.token_counts);
    d.check("lp.mean_logits", &r.mean_logits);
    d.check("lp.entropy", &r.entropy);
    d.check("lp.lse", &r.lse);
    let grad = sequence_logprobs_backward(&logits, &labels, None, &r, &d.tensor("lp.grad_logps"), &cfg).unwrap();
    d.check("lp.grad", &grad);
    let mean = LogProbsConfig { reduction: TokenReduction::Mean, ..cfg };
    let masked = sequence_logprobs(&logits, &labels, Some(&d.tensor("lpm.mask")), &mean).unwrap();
    d.check("lpm.logps", &masked.logps);
}

fn check_fused_linear(d: &Dump) {
    let (hidden, weight, bias, labels) =
        (d.tensor("fl.hidden"), d.tensor("fl.weight"), d.tensor("fl.bias"), d.tensor("fl.labels"));
    let head = LinearHead { hidden: &hidden, weight: &weight, bias: Some(&bias) };
    let cfg = FusedLinearConfig { chunk_tokens: Some(2), ..Default::default() };
    let r = fused_linear_logprobs(head, &labels, None, &cfg).unwrap();
    d.check("fl.logps", &r.logps);
    d.check("fl.lse", &r.lse);
    let g = fused_linear_logprobs_backward(head, &labels, None, &r, &d.tensor("fl.grad_logps"), &cfg).unwrap();
    d.check("fl.grad_hidden", &g.grad_hidden);
    d.check("fl.grad_weight", &g.grad_weight);
    d.check("fl.grad_bias", g.grad_bias.as_ref().unwrap());
}

fn check_losses(d: &Dump) {
    let [pc, pr, rc, rr, lc, lr] = ["pc", "pr", "rc", "rr", "lc", "lr"].map(|k| d.tensor(&format!("dpo.{k}")));
    let logps = PreferenceLogps::new(&pc, &pr).with_reference(&rc, &rr).with_lengths(&lc, &lr);
    // The C program's loss types by their UR_DPO_* codes (the index in DpoLossType::ALL).
    for code in [0, 2, 10, 8] {
        let cfg = DpoConfig {
            loss_type: DpoLossType::ALL[code],
            beta: 0.5,
            rpo_alpha: (code == 0).then_some(0.25),
            ..Default::default()
        };
        let r = dpo_loss(&logps, &cfg).unwrap();
        d.check_scalar(&format!("dpo{code}.loss"), r.loss);
        d.check(&format!("dpo{code}.gc"), &r.grad_policy_chosen);
        d.check(&format!("dpo{code}.gr"), &r.grad_policy_rejected);
        d.check_scalar(&format!("dpo{code}.margins"), r.metrics.rewards_margins);
        d.check_scalar(&format!("dpo{code}.accuracies"), r.metrics.rewards_accuracies);
    }

    let cfg = BradleyTerryConfig { center_rewards_coefficient: Some(0.01), grad_output: 1.0 };
    let bt = bradley_terry_loss(&d.tensor("bt.chosen"), &d.tensor("bt.rejected"), Some(&d.tensor("bt.margin")), &cfg)
        .unwrap();
    d.check_scalar("bt.loss", bt.loss);
    d.check("bt.gc", &bt.grad_chosen);
    d.check("bt.gr", &bt.grad_rejected);
    d.check_scalar("bt.accuracy", bt.metrics.accuracy);

    let cfg = KwiseConfig { method: KwiseMethod::PlackettLuce, grad_output: 1.0 };
    let kw = kwise_loss(&d.tensor("kw.rewards"), Some(&d.tensor("kw.order")), &cfg).unwrap();
    d.check_scalar("kw.loss", kw.loss);
    d.check("kw.grad", &kw.grad);
    d.check_scalar("kw.accuracy", kw.accuracy);

    let [mw, ml, rw, rl, tw, tl] = ["mw", "ml", "rw", "rl", "tw", "tl"].map(|k| d.tensor(&format!("dd.{k}")));
    let inputs = DiffusionDpoInputs {
        model_winner: &mw,
        model_loser: &ml,
        ref_winner: &rw,
        ref_loser: &rl,
        target_winner: &tw,
        target_loser: &tl,
    };
    let dd = diffusion_dpo_loss(&inputs, &DiffusionDpoConfig { beta: 5.0, grad_output: 1.0 }).unwrap();
    d.check_scalar("dd.loss", dd.loss);
    d.check("dd.gw", &dd.grad_model_winner);
    d.check("dd.gl", &dd.grad_model_loser);
    d.check_scalar("dd.model_mse_winner", dd.metrics.model_mse_winner);
}

fn check_heads(d: &Dump) {
    let [hidden, ends, weight, bias] = ["hidden", "ends", "weight", "bias"].map(|k| d.tensor(&format!("sh.{k}")));
    let head = ScalarHead { hidden: &hidden, ends: &ends, weight: &weight, bias: Some(&bias) };
    d.check("sh.rewards", &scalar_reward(head).unwrap());
    let g = scalar_reward_backward(head, &d.tensor("sh.grad_rewards")).unwrap();
    d.check("sh.gh", &g.grad_hidden);
    d.check("sh.gw", &g.grad_weight);
    d.check("sh.gb", g.grad_bias.as_ref().unwrap());

    let classes = VerdictClasses::from_sets(&[&[0, 1], &[3], &[5]]).unwrap().with_values(&[1.0, 2.0, 3.0]).unwrap();
    let logits = d.tensor("vh.logits");
    let v = verdict_head(&logits, &classes).unwrap();
    d.check("vh.probs", &v.probs);
    d.check("vh.log_probs", &v.log_probs);
    d.check("vh.expected", v.expected_score.as_ref().unwrap());
    let (g_lp, g_es) = (d.tensor("vh.g_lp"), d.tensor("vh.g_es"));
    let grads = VerdictGrads { log_probs: Some(&g_lp), expected_score: Some(&g_es) };
    d.check("vh.grad", &verdict_head_backward(&logits, &classes, grads).unwrap());
}

fn check_compare(d: &Dump) {
    let scores = d.tensor("cmp.scores");
    let c = compare(Verdicts::Scores(&scores), &CompareConfig::default()).unwrap();
    d.check("cmp.pref", &c.preference);
    d.check("cmp.wins", &c.wins);
    d.check("cmp.copeland", &c.copeland);
    d.check("cmp.ranks", &c.ranks);
    d.check("cmp.strengths", &c.strengths);
    d.check("cmp.best", &c.best);
    d.check("cmp.worst", &c.worst);
    let log_odds = d.tensor("cmpl.log_odds");
    let l = compare(Verdicts::LogOdds(&log_odds), &CompareConfig::default()).unwrap();
    d.check("cmpl.pref", &l.preference);
    d.check("cmpl.consistency", l.consistency.as_ref().unwrap());
    let verdicts = d.tensor("sel.verdicts");
    let s = select_pairs(Verdicts::Scores(&verdicts), &d.tensor("sel.pointwise"), &SelectionConfig::default()).unwrap();
    d.check("sel.chosen", &s.chosen);
    d.check("sel.rejected", &s.rejected);
    d.check("sel.chosen_score", &s.chosen_score);
    d.check("sel.kept", &s.kept);
}

/// The model's logits and gradients from the C calls equal the Rust API's on the same ids, mask and logits gradient.
fn check_model(d: &Dump) {
    let model = Qwen2Model::load(&reference::model_dir(MODEL), DType::F32, Device::Cpu).unwrap();
    let pass = model.forward(&d.tensor("model.ids"), &d.tensor("model.mask"), ForwardOptions::default()).unwrap();
    d.check("model.logits", &model.logits(&pass).unwrap());
    let grads = model.backward_from_logits(pass, &d.tensor("model.grad_logits")).unwrap();
    for (name, grad) in grads.weights.named() {
        d.check(&format!("grad.{name}"), grad);
    }
    d.check("grad.inputs_embeds", &grads.inputs_embeds);
}

/// The Qwen2 fixture the C program loads.
const MODEL: &str = "gqa_untied";

/// The C program's arguments after the dump file: the model directory, a greedy prompt and its expected tokens.
/// The preprocessing config the C program's image test runs under (16x16 tiles, grids up to 3x3).
const MEDIA_CONFIG: &str = "tests/fixtures/media/tiny_bicubic.json";

fn check_image_processor(d: &Dump) {
    let (_, shape, values) = d.get("img.pixels");
    let image = RgbImage::new(shape[1], shape[0], values.iter().map(|&v| v as u8).collect()).unwrap();
    let config = ImageProcessorConfig::from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join(MEDIA_CONFIG)).unwrap();
    let pixels = ImageProcessor::new(config).unwrap().preprocess(&image, ImageLayout::Anyres).unwrap();
    d.check("img.pixel_values", &pixels.pixel_values);
}

/// The LLaVA fixtures the C program's multimodal test runs on.
const LLAVA: &str = "tests/fixtures/llava";

/// The LLaVA batch's logits, every gradient and the greedy tokens from the C calls equal the Rust model's on the
/// same ids, mask, pixel values, files and logits gradient.
fn check_llava(d: &Dump) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(LLAVA);
    let model = LlavaOnevisionModel::load(&root.join("hf"), DType::F32, Device::Cpu).unwrap();
    let processor = ImageProcessor::for_checkpoint(&root.join("hf")).unwrap();
    let from_file = processor.preprocess_file(&root.join("images/anyres_0.png"), ImageLayout::Anyres).unwrap();
    let video = processor.preprocess_video(&root.join("video"), 4).unwrap();
    let pixels = d.tensor("llava.pixel_values");
    let media = [
        MediaInput::Image { pixel_values: &pixels, size: (7, 13) },
        MediaInput::image(&from_file),
        MediaInput::Video { frames: &video },
    ];
    let (ids, mask) = (d.tensor("llava.ids"), d.tensor("llava.mask"));
    let pass = model.forward(&LlavaBatch { ids: &ids, mask: &mask, media: &media }, ForwardOptions::default()).unwrap();
    d.check("llava.logits", &model.logits(&pass).unwrap());
    let grads = model.backward_from_logits(pass, &d.tensor("llava.grad_logits")).unwrap();
    for (name, grad) in model.named_gradients(&grads) {
        d.check(&format!("llava.grad.{name}"), grad);
    }
    let prompt: Vec<i64> = d.get("llava.prompt").2.iter().map(|&v| v as i64).collect();
    let cfg = GenerationConfig { max_new_tokens: 8, ..GenerationConfig::default() };
    let tokens = model.generate(&prompt, &[media[0], media[2]], &cfg).unwrap();
    let tokens: Vec<i32> = tokens.into_iter().map(|t| t as i32).collect();
    d.check("llava.tokens", &Tensor::from_slice(&tokens, &[tokens.len()], Device::Cpu).unwrap());
}

/// The judge calls of the C program against the Rust `Judge` on the same checkpoint and inputs, the templated one
/// with the template file the C program wrote.
fn check_judge(d: &Dump, dir: &Path, template: &Path) {
    let mut judge = Judge::load(dir, DType::F32, Device::Cpu).unwrap();
    let image = |name: &str| Candidate::Media(MediaFile::Image(judge_checkpoint::image(name)));
    let caption = Context::with_field("caption", "a red square");
    let pair = judge.pairwise(Task::ImageGeneration, &caption, image("two_images_0.png"), image("two_images_1.png"));
    let mut question = Context::with_field("question", "What color is the square?");
    question.media = vec![MediaFile::Image(judge_checkpoint::image("anyres_0.png"))];
    let point = judge.pointwise(Task::ImageUnderstanding, &question, Candidate::Text("It is red.".into()));
    let scored = JudgeRequest {
        task: Task::ImageGeneration,
        mode: Mode::Pointwise,
        context: caption.clone(),
        candidates: vec![image("anyres_0.png")],
    };
    let reasoned = judge.reasoned(&scored, &GenerationConfig { max_new_tokens: 4, ..Default::default() }).unwrap();
    check_reasoning(d, "judge.reasoned", reasoned.reasoning.as_ref().unwrap());
    judge.set_template(TaskTemplate::from_file(template).unwrap());
    let templated = judge.pointwise(Task::ImageGeneration, &caption, image("anyres_0.png"));
    for (key, r) in [
        ("judge.pair", pair.unwrap()),
        ("judge.point", point.unwrap()),
        ("judge.reasoned", reasoned),
        ("judge.templated", templated.unwrap()),
    ] {
        check_judgment(d, key, &r);
    }
}

/// The C program's reasoned answer (its bytes and NUL) and parse equal the Rust judge's.
fn check_reasoning(d: &Dump, key: &str, r: &Reasoning) {
    let bytes: Vec<i32> = r.text.bytes().chain([0]).map(i32::from).collect();
    d.check(&format!("{key}.text"), &Tensor::from_slice(&bytes, &[bytes.len()], Device::Cpu).unwrap());
    let (status, verdict, score) = parse_codes(&r.parsed);
    d.check_scalar(&format!("{key}.parse_status"), status as f32);
    d.check_scalar(&format!("{key}.parsed_verdict"), verdict as f32);
    d.check_scalar(&format!("{key}.parsed_score"), score as f32);
    d.check_scalar(&format!("{key}.generated_tokens"), r.generated_tokens as f32);
    d.check_scalar(&format!("{key}.reasoning_tokens"), r.reasoning_tokens as f32);
}

/// The C program's two SFT steps (the same records, the second in micro-batches of one) with the Rust API: the
/// same losses and norms, bit for bit.
fn check_sft(d: &Dump, dir: &Path) {
    let records = [
        r#"{"conversations": [{"from": "human", "value": "Is the square red?"}, {"from": "gpt", "value": "Yes, it is red."}]}"#,
        r#"{"id": 7, "conversations": [{"from": "human", "value": "Better?"}, {"from": "gpt", "value": "No."}]}"#,
    ];
    let options = StepOptions { lr: 1e-3, total_steps: 2, ..StepOptions::default() };
    let mut trainer = SftRecordTrainer::new(dir, &options).unwrap();
    let first = trainer.step(&[records.to_vec()]).unwrap();
    let second = trainer.step(&[vec![records[0]], vec![records[1]]]).unwrap();
    let (loss, norm, tokens) = (&d.get("sft.loss").2, &d.get("sft.grad_norm").2, &d.get("sft.tokens").2);
    for (k, m) in [first, second].iter().enumerate() {
        assert_eq!(loss[k].to_bits(), m.loss.to_bits(), "step {k}: C loss {} vs {}", loss[k], m.loss);
        assert_eq!(norm[k].to_bits(), m.grad_norm.unwrap().to_bits(), "step {k}: grad norm");
        assert_eq!(tokens[k], m.tokens as f64, "step {k}: tokens");
    }
    let c = &d.get("sft.task_loss").2;
    for (k, loss) in tasked_sft_losses(dir, &records).iter().enumerate() {
        assert_eq!(c[k].to_bits(), loss.to_bits(), "task {k}: C loss {} vs {loss}", c[k]);
    }
}

/// A trainer of the tasks chat and qa, one step on `records` (the first qa, the second chat): its task losses, as
/// the C and C++ programs take that step.
fn tasked_sft_losses(dir: &Path, records: &[&str; 2]) -> Vec<f64> {
    let tasked = [("qa", records[0]), ("chat", records[1])]
        .map(|(task, r)| r.replacen('{', &format!(r#"{{"task": "{task}", "#), 1));
    let options = StepOptions { lr: 1e-3, total_steps: 1, ..StepOptions::default() };
    let mut trainer = SftRecordTrainer::new(dir, &options).unwrap();
    trainer.set_tasks(&["chat", "qa"]).unwrap();
    let m = trainer.step(&[tasked.iter().map(String::as_str).collect()]).unwrap();
    m.task_loss.iter().map(|l| l.expect("both tasks have tokens")).collect()
}

/// The C program's two DPO steps (the same pairs, the second in micro-batches of one) with the Rust API: the same
/// losses and norms, bit for bit.
fn check_dpo_trainer(d: &Dump, dir: &Path) {
    let records = [
        r#"{"prompt": "Is the square red?", "chosen": "Yes, it is red.", "rejected": "No."}"#,
        r#"{"prompt": "Better?", "chosen": "The first.", "rejected": "Neither of them, really."}"#,
    ];
    let options = StepOptions { lr: 1e-3, total_steps: 2, ..StepOptions::default() };
    let loss = DpoConfig { beta: 0.5, ..DpoConfig::default() };
    let mut trainer = DpoRecordTrainer::new(dir, None, loss, &options).unwrap();
    let first = trainer.step(&[records.to_vec()]).unwrap();
    let second = trainer.step(&[vec![records[0]], vec![records[1]]]).unwrap();
    let (loss, norm) = (&d.get("dpo_trainer.loss").2, &d.get("dpo_trainer.grad_norm").2);
    let margins = &d.get("dpo_trainer.rewards_margins").2;
    for (k, m) in [first, second].iter().enumerate() {
        assert_eq!(loss[k].to_bits(), m.loss.to_bits(), "step {k}: C loss {} vs {}", loss[k], m.loss);
        assert_eq!(norm[k].to_bits(), m.grad_norm.unwrap().to_bits(), "step {k}: grad norm");
        assert_eq!(margins[k] as f32, m.metrics.rewards_margins, "step {k}: rewards/margins");
    }
}

/// The C program's two reward-model steps (Bradley–Terry with TRL's centring term, the same pairs, the second in
/// micro-batches of one) with
/// the Rust API: the same losses, norms and margins, bit for bit.
fn check_reward_trainer(d: &Dump, dir: &Path) {
    let records = [
        r#"{"prompt": "Is the square red?", "chosen": "Yes, it is red.", "rejected": "No.", "margin": 0.5}"#,
        r#"{"prompt": "Better?", "chosen": "The first.", "rejected": "Neither of them, really."}"#,
    ];
    let options = StepOptions { lr: 1e-3, total_steps: 2, ..StepOptions::default() };
    let loss = RewardLoss::BradleyTerry { center_rewards_coefficient: Some(0.01) };
    let mut trainer = RewardRecordTrainer::new(dir, loss, &options).unwrap();
    let first = trainer.step(&[records.to_vec()]).unwrap();
    let second = trainer.step(&[vec![records[0]], vec![records[1]]]).unwrap();
    let (loss, norm) = (&d.get("reward_trainer.loss").2, &d.get("reward_trainer.grad_norm").2);
    let margin = &d.get("reward_trainer.margin").2;
    for (k, m) in [first, second].iter().enumerate() {
        assert_eq!(loss[k].to_bits(), m.metrics.loss.to_bits(), "step {k}: C loss {} vs {}", loss[k], m.metrics.loss);
        assert_eq!(norm[k].to_bits(), m.grad_norm.unwrap().to_bits(), "step {k}: grad norm");
        assert_eq!(margin[k].to_bits(), m.metrics.margin.to_bits(), "step {k}: margin");
    }
}

fn check_judgment(d: &Dump, key: &str, r: &JudgeResult) {
    d.check(&format!("{key}.probs"), &Tensor::from_slice(&r.probs, &[r.probs.len()], Device::Cpu).unwrap());
    let verdict =
        r.verdict.map_or(UR_VERDICT_NONE, |v| [UR_VERDICT_FIRST, UR_VERDICT_SECOND, UR_VERDICT_TIE][v as usize]);
    d.check_scalar(&format!("{key}.verdict"), verdict as f32);
    d.check_scalar(&format!("{key}.score"), r.score.unwrap_or(f32::NAN));
    d.check_scalar(&format!("{key}.argmax_score"), r.argmax_score.unwrap_or(f32::NAN));
    let consistent = r.pair.as_ref().map_or(-1, |p| i32::from(p.position_consistent));
    d.check_scalar(&format!("{key}.position_consistent"), consistent as f32);
    d.check_scalar(&format!("{key}.prompt_tokens"), r.prompt_tokens as f32);
}

fn model_args() -> [String; 3] {
    let r = reference::Reference::load(MODEL);
    let list = |key: &str| r.ids(key).iter().map(|id| id.to_string()).collect::<Vec<_>>().join(",");
    [reference::model_dir(MODEL).display().to_string(), list("generate.0.prompt"), list("generate.0.tokens")]
}

#[test]
#[cfg_attr(feature = "gpu-tests", ignore = "runs where the library is built (C compiler, valgrind, libunireward.so)")]
fn c_program_calls_every_export_and_agrees_with_the_rust_api() {
    let program = compile("tests/c/test_abi.c", "test_abi");
    let dump_path = program.with_extension("dump");
    let [dir, prompt, tokens] = model_args();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join(MEDIA_CONFIG);
    let llava = Path::new(env!("CARGO_MANIFEST_DIR")).join(LLAVA);
    let judge = judge_checkpoint::judge_dir("c-abi");
    let args = [
        dump_path.as_os_str(),
        dir.as_ref(),
        prompt.as_ref(),
        tokens.as_ref(),
        config.as_os_str(),
        llava.as_os_str(),
        judge.0.as_os_str(),
    ];
    let stdout = run(&program, &args, false);
    println!("{stdout}");
    let dump = Dump::read(&dump_path);
    check_logprobs(&dump);
    check_fused_linear(&dump);
    check_losses(&dump);
    check_heads(&dump);
    check_compare(&dump);
    check_model(&dump);
    check_image_processor(&dump);
    check_llava(&dump);
    let template = PathBuf::from(format!("{}.template.json", dump_path.display()));
    check_judge(&dump, &judge.0, &template);
    check_sft(&dump, &judge.0);
    check_dpo_trainer(&dump, &judge.0);
    check_reward_trainer(&dump, &judge.0);

    assert!(
        valgrind_present(),
        "valgrind is not installed: the C ABI must be checked under it (apt-get install -y valgrind; \
         scripts/test.sh installs it)"
    );
    run(&program, &args, true);
    std::fs::remove_file(&dump_path).ok();
    std::fs::remove_file(&template).ok();
    std::fs::remove_dir_all(dump_path.with_extension("dump.sft")).ok();
    std::fs::remove_dir_all(dump_path.with_extension("dump.dpo")).ok();
    std::fs::remove_dir_all(dump_path.with_extension("dump.reward")).ok();
    std::fs::remove_file(&program).ok();
}

#[test]
#[cfg_attr(feature = "gpu-tests", ignore = "runs where the library is built (C compiler, valgrind, libunireward.so)")]
fn readme_c_example_runs_cleanly_under_valgrind() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("bindings/c/example.c")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains(&format!("```c\n{example}```")), "README.md's C example differs from bindings/c/example.c");
    let program = compile("bindings/c/example.c", "example");
    let stdout = run(&program, &[], false);
    assert!(stdout.contains("loss"), "unexpected output:\n{stdout}");
    assert!(valgrind_present(), "valgrind is not installed (apt-get install -y valgrind; scripts/test.sh does)");
    run(&program, &[], true);
    std::fs::remove_file(&program).ok();
}

#[test]
#[cfg_attr(feature = "gpu-tests", ignore = "runs where the library is built (C++ compiler, valgrind, libunireward.so)")]
fn cpp_judge_equals_the_rust_judge_under_valgrind() {
    let program = compile_with(("CXX", "c++", "-std=c++17"), "tests/c/judge.cpp", "judge_cpp");
    let judge = judge_checkpoint::judge_dir("cpp");
    let llava = Path::new(env!("CARGO_MANIFEST_DIR")).join(LLAVA);
    let args = [judge.0.as_os_str(), llava.as_os_str()];
    let stdout = run(&program, &args, false);
    let mut rust = Judge::load(&judge.0, DType::F32, Device::Cpu).unwrap();
    let image = |name: &str| Candidate::Media(MediaFile::Image(judge_checkpoint::image(name)));
    let caption = Context::with_field("caption", "a red square");
    let pair = rust.pairwise(Task::ImageGeneration, &caption, image("two_images_0.png"), image("two_images_1.png"));
    let mut question = Context::with_field("question", "What color is the square?");
    question.media = vec![MediaFile::Image(judge_checkpoint::image("anyres_0.png"))];
    let point = rust.pointwise(Task::ImageUnderstanding, &question, Candidate::Text("It is red.".into()));
    let (pair, point) = (pair.unwrap(), point.unwrap());
    // The C++ program's pixels: three 10 x 14 frames, byte i of frame k = (13 i + 71 k) mod 256.
    let frames: Vec<RgbImage> = (0..3)
        .map(|k| RgbImage::new(14, 10, (0..10 * 14 * 3).map(|i| ((13 * i + 71 * k) % 256) as u8).collect()).unwrap())
        .collect();
    let image = Candidate::Media(MediaFile::ImagePixels(frames[0].clone().into()));
    let image_pixels = rust.pointwise(Task::ImageGeneration, &caption, image);
    let video_pixels =
        rust.pointwise(Task::VideoGeneration, &caption, Candidate::Media(MediaFile::VideoFrames(frames.into())));
    let (image_pixels, video_pixels) = (image_pixels.unwrap(), video_pixels.unwrap());
    // Reasoned, greedy and sampled, then with the template the C++ program wrote.
    let scored = JudgeRequest {
        task: Task::ImageGeneration,
        mode: Mode::Pointwise,
        context: caption.clone(),
        candidates: vec![Candidate::Media(MediaFile::Image(judge_checkpoint::image("anyres_0.png")))],
    };
    let greedy = GenerationConfig { max_new_tokens: 4, ..Default::default() };
    let sampled = GenerationConfig { temperature: 1.5, top_p: 0.9, seed: 3, ..greedy.clone() };
    let reasoned = rust.reasoned(&scored, &greedy).unwrap();
    let reasoned_sampled = rust.reasoned(&scored, &sampled).unwrap();
    rust.set_template(TaskTemplate::from_file(&judge.0.join("mine.template.json")).unwrap());
    let templated = rust.pointwise(Task::ImageGeneration, &caption, scored.candidates[0].clone()).unwrap();
    let lines: HashMap<&str, Vec<f64>> = stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(key, rest)| (key, rest.split_whitespace().map(|v| v.parse().expect("a number")).collect()))
        .collect();
    let judgments = [
        ("pair", &pair),
        ("many.0", &pair),
        ("point", &point),
        ("many.1", &point),
        ("image_pixels", &image_pixels),
        ("video_pixels", &video_pixels),
        ("reasoned", &reasoned),
        ("reasoned_sampled", &reasoned_sampled),
        ("templated", &templated),
        ("templated_file", &templated),
    ];
    for (key, expected) in judgments {
        let got = lines.get(key).unwrap_or_else(|| panic!("the C++ program printed no `{key}`:\n{stdout}"));
        let verdict = expected
            .verdict
            .map_or(UR_VERDICT_NONE, |v| [UR_VERDICT_FIRST, UR_VERDICT_SECOND, UR_VERDICT_TIE][v as usize]);
        let consistent = expected.pair.as_ref().map_or(-1, |p| i32::from(p.position_consistent));
        let head = [
            verdict as f64,
            expected.score.unwrap_or(f32::NAN) as f64,
            expected.argmax_score.unwrap_or(f32::NAN) as f64,
            consistent as f64,
            expected.prompt_tokens as f64,
        ];
        let want: Vec<f64> = head.into_iter().chain(expected.probs.iter().map(|&p| p as f64)).collect();
        assert_eq!(got.len(), want.len(), "{key}: {got:?} vs {want:?}");
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(close(g, w), "{key}[{i}]: C++ gave {g}, the Rust Judge {w}");
        }
    }
    for (key, expected) in [("reasoned", &reasoned), ("reasoned_sampled", &reasoned_sampled)] {
        let r = expected.reasoning.as_ref().unwrap();
        let (status, verdict, score) = parse_codes(&r.parsed);
        let want = [status as f64, verdict as f64, score, r.generated_tokens as f64, r.reasoning_tokens as f64];
        let got = &lines[format!("{key}.parse").as_str()];
        assert!(got.len() == 5 && got.iter().zip(want).all(|(&g, w)| close(g, w)), "{key}: {got:?} vs {want:?}");
        let text: Vec<f64> = r.text.bytes().chain([0]).map(f64::from).collect();
        assert_eq!(lines[format!("{key}.text").as_str()], text, "{key}: C++ answer vs {:?}", r.text);
    }
    assert!(valgrind_present(), "valgrind is not installed (apt-get install -y valgrind; scripts/test.sh does)");
    run(&program, &args, true);
    std::fs::remove_file(&program).ok();
}

/// The C++ trainers' two SFT, two DPO and two reward-model steps (tests/c/trainers.cpp: the records of `check_sft` and
/// `check_dpo_trainer`) equal the Rust trainers' bit for bit, and so do their saved weights; its AdamW checks are its
/// own (against float64), all of it also under valgrind.
#[test]
#[cfg_attr(feature = "gpu-tests", ignore = "runs where the library is built (C++ compiler, valgrind, libunireward.so)")]
fn cpp_trainers_equal_the_rust_trainers_under_valgrind() {
    let program = compile_with(("CXX", "c++", "-std=c++17"), "tests/c/trainers.cpp", "trainers_cpp");
    let judge = judge_checkpoint::judge_dir("cpp-trainers");
    let scratch = std::env::temp_dir().join(format!("unireward-cpp-trainers-{}", std::process::id()));
    let (out, rust) = (scratch.join("cpp"), scratch.join("rust"));
    let stdout = run(&program, &[judge.0.as_os_str(), out.as_os_str()], false);
    assert!(stdout.contains("adamw ok"), "{stdout}");
    let lines: HashMap<&str, Vec<f64>> = stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(key, _)| key.contains('.'))
        .map(|(key, rest)| (key, rest.split_whitespace().map(|v| v.parse().expect("a number")).collect()))
        .collect();
    let check = |key: &str, step: u64, loss: f64, grad_norm: Option<f64>, lr: f64, extra: f64| {
        let got = lines.get(key).unwrap_or_else(|| panic!("the C++ program printed no `{key}`:\n{stdout}"));
        let want = [step as f64, loss, grad_norm.unwrap(), lr, extra];
        let same = got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits());
        assert!(same, "{key}: C++ {got:?}, Rust {want:?}");
    };
    let options = StepOptions { lr: 1e-3, total_steps: 2, ..StepOptions::default() };
    let conversations = [
        r#"{"conversations": [{"from": "human", "value": "Is the square red?"}, {"from": "gpt", "value": "Yes, it is red."}]}"#,
        r#"{"id": 7, "conversations": [{"from": "human", "value": "Better?"}, {"from": "gpt", "value": "No."}]}"#,
    ];
    let mut sft = SftRecordTrainer::new(&judge.0, &options).unwrap();
    let m = sft.step(&[conversations.to_vec()]).unwrap();
    check("sft.0", m.step, m.loss, m.grad_norm, m.lr, 0.0);
    let m = sft.step(&[vec![conversations[0]], vec![conversations[1]]]).unwrap();
    check("sft.1", m.step, m.loss, m.grad_norm, m.lr, m.tokens as f64);
    let got = lines.get("sft.tasks").unwrap_or_else(|| panic!("the C++ program printed no `sft.tasks`:\n{stdout}"));
    let want = tasked_sft_losses(&judge.0, &conversations);
    assert_eq!(
        got.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|l| l.to_bits()).collect::<Vec<_>>()
    );
    let pairs = [
        r#"{"prompt": "Is the square red?", "chosen": "Yes, it is red.", "rejected": "No."}"#,
        r#"{"prompt": "Better?", "chosen": "The first.", "rejected": "Neither of them, really."}"#,
    ];
    let loss = DpoConfig { beta: 0.5, ..DpoConfig::default() };
    let mut dpo = DpoRecordTrainer::new(&judge.0, None, loss, &options).unwrap();
    let m = dpo.step(&[pairs.to_vec()]).unwrap();
    check("dpo.0", m.step, m.loss, m.grad_norm, m.lr, 0.0);
    let m = dpo.step(&[vec![pairs[0]], vec![pairs[1]]]).unwrap();
    check("dpo.1", m.step, m.loss, m.grad_norm, m.lr, m.metrics.rewards_margins as f64);
    let loss = RewardLoss::BradleyTerry { center_rewards_coefficient: Some(0.01) };
    let mut reward = RewardRecordTrainer::new(&judge.0, loss, &options).unwrap();
    let m = reward.step(&[pairs.to_vec()]).unwrap();
    check("reward.0", m.step, m.metrics.loss, m.grad_norm, m.lr, 0.0);
    let m = reward.step(&[vec![pairs[0]], vec![pairs[1]]]).unwrap();
    check("reward.1", m.step, m.metrics.loss, m.grad_norm, m.lr, m.metrics.margin);
    let saved = [
        ("sft", sft.save(&rust.join("sft")).unwrap()),
        ("dpo", dpo.save(&rust.join("dpo")).unwrap()),
        ("reward", reward.save(&rust.join("reward")).unwrap()),
    ];
    for (name, saved) in saved {
        let weights = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
        let from_cpp = out.join(name).join("checkpoint-2");
        assert!(weights(&from_cpp) == weights(&saved), "{name}: the C++ trainer saved other weights than Rust's");
    }
    assert!(valgrind_present(), "valgrind is not installed (apt-get install -y valgrind; scripts/test.sh does)");
    run(&program, &[judge.0.as_os_str(), scratch.join("valgrind").as_os_str()], true);
    std::fs::remove_dir_all(&scratch).ok();
    std::fs::remove_file(&program).ok();
}

#[test]
fn c_program_calls_every_function_of_the_header() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header = std::fs::read_to_string(root.join("include/unireward.h")).unwrap();
    let program = std::fs::read_to_string(root.join("tests/c/test_abi.c")).unwrap();
    // Declarations look like `<return type> ur_name(` at the start of a line.
    let functions: Vec<&str> = header
        .lines()
        .filter(|l| l.contains('(') && !l.starts_with("//") && !l.starts_with(' '))
        .filter_map(|l| l.split('(').next()?.split_whitespace().last())
        .map(|name| name.trim_start_matches('*'))
        .filter(|name| name.starts_with("ur_"))
        .collect();
    assert!(functions.len() >= 28, "found only {functions:?} in include/unireward.h");
    let missing: Vec<_> = functions.iter().filter(|f| !program.contains(&format!("{f}("))).collect();
    assert!(missing.is_empty(), "tests/c/test_abi.c does not call {missing:?}");
}
