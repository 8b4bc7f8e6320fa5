//! What the trainer tests share: a scratch directory holding a chat checkpoint assembled from fixtures (the Qwen2
//! model `tests/fixtures/qwen2/chat_tied` with the tokenizer and chat template of `tests/fixtures/qwen2/tokenizer`).

// Each test crate that includes this module uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A temporary directory, removed on drop, with the checkpoint in `model/`.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("unireward-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(dir.join("model")).unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2");
        let mut files = vec![fixtures.join("chat_tied/config.json"), fixtures.join("chat_tied/model.safetensors")];
        for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
            files.push(fixtures.join("tokenizer").join(f));
        }
        for f in files {
            std::fs::copy(&f, dir.join("model").join(f.file_name().unwrap())).unwrap();
        }
        Scratch(dir)
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// `n` short preference pairs (they fit the fixture's 64 positions with the chat template).
pub fn pairs(n: usize) -> String {
    (0..n)
        .map(|i| {
            let (chosen, rejected) = (format!("{}.", i % 3), if i % 2 == 0 { "No idea." } else { "Maybe 7." });
            format!(r#"{{"prompt": "Best {i}?", "chosen": "{chosen}", "rejected": "{rejected}"}}"#) + "\n"
        })
        .collect()
}
