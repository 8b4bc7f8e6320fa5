//! A tiny LLaVA-OneVision judge checkpoint for the Judge API and CLI tests, assembled in a temporary directory from
//! fixtures: the random model of tests/fixtures/llava/hf with its vocabulary widened to the Qwen2 tokenizer fixture's
//! 363 tokens plus the image and video placeholders (363, 364; the new embedding and head rows deterministic), room
//! for judge prompts (4,096 positions), and the tokenizer of tests/fixtures/qwen2/tokenizer.

use std::path::{Path, PathBuf};

use safetensors::{serialize, Dtype, SafeTensors};
use unireward::ffi::{
    UR_PARSE_OK, UR_PARSE_OUT_OF_SCALE, UR_PARSE_SCALE_MISMATCH, UR_PARSE_UNPARSABLE, UR_VERDICT_FIRST,
    UR_VERDICT_NONE, UR_VERDICT_SECOND, UR_VERDICT_TIE,
};
use unireward::judge::answer::{AnswerError, Judgment, Verdict};

pub const VOCAB: usize = 365;

/// A temporary checkpoint directory, removed on drop.
pub struct JudgeDir(pub PathBuf);

impl Drop for JudgeDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn judge_dir(name: &str) -> JudgeDir {
    let dir = std::env::temp_dir().join(format!("unireward-judge-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let llava = fixtures().join("llava/hf");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(llava.join("config.json")).unwrap()).unwrap();
    config["text_config"]["vocab_size"] = VOCAB.into();
    config["text_config"]["max_position_embeddings"] = 4096.into();
    config["image_token_index"] = (VOCAB - 2).into();
    config["video_token_index"] = (VOCAB - 1).into();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();

    let bytes = std::fs::read(llava.join("model.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in file.tensors() {
        assert_eq!(view.dtype(), Dtype::F32, "{name}");
        let (mut shape, mut data) = (view.shape().to_vec(), view.data().to_vec());
        if name.ends_with("embed_tokens.weight") || name.ends_with("lm_head.weight") {
            let width = shape[1];
            for i in shape[0] * width..VOCAB * width {
                data.extend_from_slice(&(0.5 * ((i as f32) * 0.37).sin()).to_le_bytes());
            }
            shape[0] = VOCAB;
        }
        tensors.push((name, shape, data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, d)| (n.clone(), safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), d).unwrap()))
        .collect();
    std::fs::write(dir.join("model.safetensors"), serialize(views, None).unwrap()).unwrap();

    std::fs::copy(llava.join("preprocessor_config.json"), dir.join("preprocessor_config.json")).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        std::fs::copy(fixtures().join("qwen2/tokenizer").join(f), dir.join(f)).unwrap();
    }
    JudgeDir(dir)
}

/// A fixture image.
pub fn image(name: &str) -> PathBuf {
    fixtures().join("llava/images").join(name)
}

/// The C codes of a parse: `UR_PARSE_*`, the verdict stated (`UR_VERDICT_*`), the score read (NaN when none).
#[allow(dead_code)] // the C ABI tests' (tests/c_abi.rs, tests/ffi_judge.rs)
pub fn parse_codes(parsed: &Result<Judgment, AnswerError>) -> (i32, i32, f64) {
    let verdict = |v: Verdict| [UR_VERDICT_FIRST, UR_VERDICT_SECOND, UR_VERDICT_TIE][v as usize];
    match parsed {
        Ok(Judgment::Verdict(v)) => (UR_PARSE_OK, verdict(*v), f64::NAN),
        Ok(Judgment::Score(s)) => (UR_PARSE_OK, UR_VERDICT_NONE, *s),
        Err(AnswerError::Unparsable(_)) => (UR_PARSE_UNPARSABLE, UR_VERDICT_NONE, f64::NAN),
        Err(AnswerError::OutOfScale { score, .. }) => (UR_PARSE_OUT_OF_SCALE, UR_VERDICT_NONE, *score),
        Err(AnswerError::ScaleMismatch { score, .. }) => (UR_PARSE_SCALE_MISMATCH, UR_VERDICT_NONE, *score),
    }
}
