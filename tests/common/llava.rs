//! A tiny chat-capable LLaVA-OneVision checkpoint for the trainer tests, assembled from fixtures in a scratch
//! directory with the fixture images beside it.

use std::path::{Path, PathBuf};

use unireward::model::{save_safetensors, WeightStore};
use unireward::{DType, Device, Tensor};

use super::reference::fixture;

/// A tiny LLaVA-OneVision checkpoint that can tokenize conversations: the fixture's model with its vocabulary
/// widened to the Qwen2 fixture tokenizer's (plus `<image>` and `<video>`), and that tokenizer's chat template.
pub struct ChatCheckpoint {
    pub dir: PathBuf,
}

impl ChatCheckpoint {
    /// In transformers' layout: `<image>` and `<video>` are tokens of the tokenizer and placeholder ids of the model.
    pub fn new(name: &str) -> ChatCheckpoint {
        ChatCheckpoint::build(name, "hf")
    }

    /// The same model in LLaVA-NeXT's `llava_qwen` layout, as UnifiedReward releases its checkpoints: the tokenizer
    /// has no `<image>` / `<video>` token and the placeholders are ids outside the vocabulary. The vocabulary is
    /// as wide as the Hugging Face twin's (its last two rows never looked up), so both compute the same.
    pub fn llava_qwen(name: &str) -> ChatCheckpoint {
        ChatCheckpoint::build(name, "llava_qwen")
    }

    fn build(name: &str, layout: &str) -> ChatCheckpoint {
        let dir = std::env::temp_dir().join(format!("unireward-llava-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        let model = dir.join("model");
        std::fs::create_dir_all(&model).unwrap();
        let tokenizer_dir = fixture("qwen2/tokenizer");
        let mut tokenizer: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tokenizer_dir.join("tokenizer.json")).unwrap()).unwrap();
        let added = tokenizer["added_tokens"].as_array_mut().unwrap();
        let next = added.iter().map(|t| t["id"].as_u64().unwrap()).max().unwrap() + 1;
        if layout == "hf" {
            for (i, content) in ["<image>", "<video>"].into_iter().enumerate() {
                added.push(serde_json::json!({"id": next + i as u64, "content": content, "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
            }
        }
        std::fs::write(model.join("tokenizer.json"), tokenizer.to_string()).unwrap();
        for f in ["tokenizer_config.json", "chat_template.jinja"] {
            std::fs::copy(tokenizer_dir.join(f), model.join(f)).unwrap();
        }
        let vocab = next as usize + 2;
        let source = fixture("llava").join(layout);
        std::fs::copy(fixture("llava/hf/preprocessor_config.json"), model.join("preprocessor_config.json")).unwrap();
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap()).unwrap();
        if layout == "hf" {
            config["text_config"]["vocab_size"] = vocab.into();
            config["image_token_index"] = next.into();
            config["video_token_index"] = (next + 1).into();
        } else {
            config["vocab_size"] = vocab.into();
            copy_folder(&source.join("siglip"), &model.join("siglip"));
        }
        std::fs::write(model.join("config.json"), config.to_string()).unwrap();
        let store = WeightStore::open(&source).unwrap();
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for name in store.names() {
            let shape = store.shape(name).unwrap().to_vec();
            let tensor = if name.ends_with("embed_tokens.weight") || name.ends_with("lm_head.weight") {
                let width = shape[1];
                let data: Vec<f32> =
                    (0..vocab * width).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.5).collect();
                Tensor::from_f32(&data, &[vocab, width], DType::F32, Device::Cpu).unwrap()
            } else {
                store.get(name, &shape).unwrap()
            };
            tensors.push((name.to_string(), tensor));
        }
        let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        save_safetensors(&model.join("model.safetensors"), &named).unwrap();
        std::fs::create_dir_all(dir.join("data/images")).unwrap();
        for f in ["anyres_0.png", "downsampled_0.png", "two_images_0.png", "two_images_1.png"] {
            std::fs::copy(fixture("llava/images").join(f), dir.join("data/images").join(f)).unwrap();
        }
        copy_folder(&fixture("llava/video"), &dir.join("data/video"));
        std::fs::write(dir.join("data/images/corrupt.png"), b"\x89PNG\r\n\x1a\nnot really a png").unwrap();
        ChatCheckpoint { dir }
    }

    pub fn model(&self) -> PathBuf {
        self.dir.join("model")
    }

    /// A conversation file in `data/`: one record per `(images, question, answer, task)`.
    pub fn data(&self, name: &str, records: &[(&[&str], &str, &str, &str)]) -> PathBuf {
        let mut lines = String::new();
        for (images, q, a, task) in records {
            let record = serde_json::json!({
                "image": images.iter().map(|i| format!("images/{i}")).collect::<Vec<_>>(),
                "task": task,
                "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}],
            });
            lines += &format!("{record}\n");
        }
        let path = self.dir.join("data").join(name);
        std::fs::write(&path, lines).unwrap();
        path
    }
}

impl Drop for ChatCheckpoint {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}
