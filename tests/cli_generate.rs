//! `unireward generate` (the binary) on a checkpoint directory assembled from fixtures: the Qwen2 model
//! `tests/fixtures/qwen2/chat_tied` (its vocabulary is the tokenizer's, its eos ids the chat stop tokens) and the
//! tokenizer of `tests/fixtures/qwen2/tokenizer`. Its output must be the library's generate + decode.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use unireward::judge::{generate, render_chat, ChatMessage, GenerationConfig, Tokenizer};
use unireward::model::{qwen2_weight_names, save_safetensors, Qwen2Config, Qwen2Model, WeightStore};
use unireward::{DType, Device, Tensor};

/// A temporary model directory, removed on drop.
struct ModelDir(PathBuf);

impl ModelDir {
    fn new(name: &str, with_tokenizer: bool) -> ModelDir {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2");
        let dir = std::env::temp_dir().join(format!("unireward-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = vec![fixtures.join("chat_tied/config.json"), fixtures.join("chat_tied/model.safetensors")];
        if with_tokenizer {
            for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
                files.push(fixtures.join("tokenizer").join(f));
            }
        }
        for f in files {
            std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
        }
        ModelDir(dir)
    }
}

impl Drop for ModelDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn unireward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unireward")).arg("generate").args(args).output().expect("run unireward")
}

/// The library's text for `prompt_text` under `cfg` (stop tokens: the config's eos ids).
fn expected(dir: &Path, prompt_text: &str, mut cfg: GenerationConfig) -> String {
    let tokenizer = Tokenizer::from_file(dir).unwrap();
    let model = Qwen2Model::load(dir, DType::F32, Device::Cpu).unwrap();
    assert_eq!(model.config.vocab_size, tokenizer.vocab_size(), "the fixture model must fit the tokenizer");
    cfg.stop_tokens = model.config.eos_token_ids.clone();
    let prompt = tokenizer.encode(prompt_text).unwrap();
    let tokens = generate(&model, &[prompt], &cfg).unwrap().pop().unwrap();
    format!("{}\n", tokenizer.decode(&tokens, true).unwrap())
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "unireward generate failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn chat_generation_prints_the_library_output() {
    let dir = ModelDir::new("chat", true);
    let path = dir.0.to_str().unwrap();
    let out = unireward(&[
        "--model",
        path,
        "--prompt",
        "Which image is better?",
        "--chat",
        "--system",
        "You are a strict judge.",
        "--max-new-tokens",
        "12",
        "--verbose",
    ]);
    let messages = [ChatMessage::system("You are a strict judge."), ChatMessage::user("Which image is better?")];
    let cfg = GenerationConfig { max_new_tokens: 12, ..Default::default() };
    assert_eq!(stdout(&out), expected(&dir.0, &render_chat(&messages, true), cfg));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("new ids (") && log.contains("tokens/s") && log.contains("KV cache"), "{log}");
}

#[test]
fn raw_sampled_generation_prints_the_library_output() {
    let dir = ModelDir::new("raw", true);
    let path = dir.0.to_str().unwrap();
    let args = ["--model", path, "--prompt", "Hello world", "--max-new-tokens", "9", "--temperature", "0.8"];
    let out = unireward(&[&args[..], &["--top-p", "0.9", "--seed", "11"]].concat());
    let cfg = GenerationConfig {
        max_new_tokens: 9,
        temperature: 0.8,
        top_p: 0.9,
        seed: 11,
        stop_tokens: vec![],
        suppress_tokens: vec![],
    };
    assert_eq!(stdout(&out), expected(&dir.0, "Hello world", cfg));
}

#[test]
fn a_missing_tokenizer_or_a_bad_option_is_an_error() {
    let dir = ModelDir::new("no-tokenizer", false);
    let out = unireward(&["--model", dir.0.to_str().unwrap(), "--prompt", "hi"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokenizer.json"), "{out:?}");
    let out = unireward(&["--model", dir.0.to_str().unwrap(), "--prompt", "hi", "--system", "judge"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--chat"), "{out:?}");
}

/// A user error is one line and exit status 1, also when the environment asks Rust for backtraces.
#[test]
fn user_errors_are_one_line_even_with_rust_backtrace_set() {
    let missing = std::env::temp_dir().join("unireward-no-such-model-dir");
    for backtrace in ["1", "full"] {
        let out = Command::new(env!("CARGO_BIN_EXE_unireward"))
            .env("RUST_BACKTRACE", backtrace)
            .args(["generate", "--model", missing.to_str().unwrap(), "--prompt", "hi"])
            .output()
            .expect("run unireward");
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line expected, got:\n{stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains("unireward-no-such-model-dir"), "{stderr}");
        assert!(!stderr.contains("backtrace") && !stderr.contains("Stack"), "{stderr}");
    }
}

#[test]
fn lenient_and_check_finite_flags_reach_the_loader() {
    let dir = ModelDir::new("flags", true);
    // The fixture's weights plus a tensor the model does not use.
    let config = Qwen2Config::from_file(&dir.0.join("config.json")).unwrap();
    let store = WeightStore::open(&dir.0).unwrap();
    let mut tensors: Vec<(String, Tensor)> =
        qwen2_weight_names(&config).into_iter().map(|(n, shape)| (n.clone(), store.get(&n, &shape).unwrap())).collect();
    drop(store);
    tensors.push(("extra.weight".into(), Tensor::from_slice(&[1f32], &[1], Device::Cpu).unwrap()));
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save_safetensors(&dir.0.join("model.safetensors"), &refs).unwrap();

    let model = dir.0.to_str().unwrap();
    let strict = unireward(&["--model", model, "--prompt", "hi", "--max-new-tokens", "2"]);
    assert!(!strict.status.success() && String::from_utf8_lossy(&strict.stderr).contains("extra.weight"), "{strict:?}");
    let lenient =
        unireward(&["--model", model, "--prompt", "hi", "--max-new-tokens", "2", "--lenient", "--check-finite"]);
    assert!(lenient.status.success(), "{lenient:?}");
    let stderr = String::from_utf8_lossy(&lenient.stderr);
    assert!(stderr.contains("ignored 1 unused tensors: extra.weight"), "{stderr}");
}

/// The tiny LLaVA-OneVision fixture (with the chat tokenizer of tests/reference/llava_tokenizer.py).
fn llava(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava").join(path).display().to_string()
}

/// The float64 reference's generation prompt (tests/fixtures/llava/reference.safetensors' generate.input_ids:
/// three tokens, the anyres image's 49 placeholders, five tokens) as text for the fixture's tokenizer.
const REFERENCE_PROMPT: &str = "<unused85><unused56><unused61><image><unused80><unused52><unused70><unused75>z";

#[test]
fn llava_generation_with_an_image_file_gives_the_reference_tokens() {
    let (model, image) = (llava("hf"), llava("images/anyres_0.png"));
    let out = unireward(&[
        "--model",
        &model,
        "--image",
        &image,
        "--prompt",
        REFERENCE_PROMPT,
        "--max-new-tokens",
        "6",
        "--verbose",
    ]);
    // transformers' greedy tokens [39, 65, 65, 65, 65, 65]: "," then `<unused65>` five times.
    assert_eq!(stdout(&out), format!(",{}\n", "<unused65>".repeat(5)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let placeholders = vec!["90"; 49].join(", ");
    assert!(stderr.contains(&format!("prompt ids (57): [85, 56, 61, {placeholders}, 80, 52, 70, 75, 27]")), "{stderr}");
    assert!(
        stderr.contains("new ids (6): [39, 65, 65, 65, 65, 65]") && stderr.contains("finish reason: max_new_tokens")
    );
}

#[test]
fn llava_markers_are_inserted_when_the_prompt_has_none() {
    let (model, image, video) = (llava("hf"), llava("images/two_images_0.png"), llava("video"));
    let common = ["--model", &model, "--image", &image, "--video", &video, "--frames", "4", "--max-new-tokens", "5"];
    let implicit = unireward(&[&common[..], &["--prompt", "is it red?", "--chat"]].concat());
    let explicit = unireward(&[&common[..], &["--prompt", "<image>\n<video>\nis it red?", "--chat"]].concat());
    assert_eq!(stdout(&implicit), stdout(&explicit));
    let verbose = unireward(&[&common[..], &["--prompt", "<video> then <image>", "--verbose"]].concat());
    let stderr = String::from_utf8_lossy(&verbose.stderr);
    // The video's 4 frames pooled to 2x2 patches each plus a newline: 17 placeholders, then the image's.
    let video_ids = vec!["91"; 17].join(", ");
    assert!(stderr.contains(&format!("[{video_ids}, 1, 21, 9, 6, 15, 1, 90")), "{stderr}");
}

#[test]
fn llava_input_errors_are_one_clear_line() {
    let (model, image) = (llava("hf"), llava("images/anyres_0.png"));
    let cases: [(&[&str], &str); 5] = [
        (
            &["--model", &model, "--image", &image, "--prompt", "<image><image>"],
            "the prompt has 2 <image> and 0 <video>, but 1 --image",
        ),
        (&["--model", &model, "--image", "/no/such.png", "--prompt", "x"], "--image /no/such.png"),
        (&["--model", &model, "--video", "/no/such/video", "--prompt", "x"], "--video /no/such/video"),
        (
            &[
                "--model",
                &model,
                "--image",
                &llava("video/frame_0.png"),
                "--image",
                &image,
                "--prompt",
                "<image> <image> <video>",
            ],
            "0 --video",
        ),
        (&["--model", &model, "--prompt", "<image> x"], "but 0 --image and 0 --video"),
    ];
    for (args, needle) in cases {
        let out = unireward(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.lines().count() == 1 && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn images_need_a_llava_checkpoint() {
    let dir = ModelDir::new("qwen2-image", true);
    let out =
        unireward(&["--model", dir.0.to_str().unwrap(), "--image", &llava("images/anyres_0.png"), "--prompt", "x"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--image and --video need a LLaVA-OneVision checkpoint"),
        "{stderr}"
    );
}
