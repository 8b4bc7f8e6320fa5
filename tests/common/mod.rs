//! What the trainer tests share: a scratch directory holding a chat checkpoint assembled from fixtures (the Qwen2
//! model `tests/fixtures/qwen2/chat_tied` with the tokenizer and chat template of `tests/fixtures/qwen2/tokenizer`).

// Each test crate that includes this module uses a part of it.
#![allow(dead_code)]

pub mod llava;
pub mod reference;

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

/// The stdout of a successful run of the binary.
pub fn succeed(output: std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "unireward failed: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

/// The error line of a failed run of the binary (its first line on stderr, which must be one).
pub fn fail(output: std::process::Output) -> String {
    assert!(!output.status.success(), "unireward succeeded: {}", String::from_utf8_lossy(&output.stdout));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let first = stderr.lines().next().unwrap_or_default().to_string();
    assert!(first.starts_with("error: "), "an error line first: {stderr}");
    first
}

/// Runs `command` (its output discarded) and kills it once `file` has `lines` complete lines, or lets it finish.
pub fn kill_when_lines(command: &mut std::process::Command, file: &Path, lines: usize) -> std::process::ExitStatus {
    use std::process::Stdio;
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    loop {
        if std::fs::read_to_string(file).map_or(0, |t| t.lines().count()) >= lines {
            child.kill().unwrap();
            return child.wait().unwrap();
        }
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A fresh `root/checkpoint/` holding the files of the checkpoint `dir` (not its `trainer_state/`): what a reference
/// script loads in transformers.
pub fn copy_checkpoint_for_transformers(dir: &Path, root: &Path) {
    std::fs::remove_dir_all(root).ok();
    std::fs::create_dir_all(root.join("checkpoint")).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, root.join("checkpoint").join(path.file_name().unwrap())).unwrap();
        }
    }
}
