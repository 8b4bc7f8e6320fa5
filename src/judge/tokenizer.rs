//! Qwen2's tokenizer (a `tokenizer.json` run by the `tokenizers` crate) and its chat template, rendered in Rust.
//!
//! The template is Qwen2-Instruct's (`chat_template` in its `tokenizer_config.json`):
//!
//! ```jinja
//! {% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}
//! {{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}
//! {{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}
//! {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
//! ```
//!
//! As in transformers, special-token text inside a message (`<|im_end|>` typed by a user) is encoded as the special
//! token itself; callers judging untrusted text should strip such markers first.

use std::path::Path;

use crate::{Error, Result};

/// The system prompt Qwen2's template inserts when the conversation does not start with one.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant.";
/// Opens a message: `<|im_start|>{role}\n{content}<|im_end|>\n`.
pub const IM_START: &str = "<|im_start|>";
/// Closes a message; the end of an assistant turn, so a stop token for generation.
pub const IM_END: &str = "<|im_end|>";
/// The end of a document (Qwen2's padding token); also a stop token.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// One turn of a conversation. Roles are free text, as in the template (`system`, `user`, `assistant`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage::new("assistant", content)
    }
}

/// Renders `messages` with Qwen2's chat template: a default system turn first unless the first message is a
/// system one, then each message, then `<|im_start|>assistant\n` when `add_generation_prompt`.
pub fn render_chat(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut text = String::new();
    let mut push = |role: &str, content: &str| {
        text.extend([IM_START, role, "\n", content, IM_END, "\n"]);
    };
    if messages.first().is_some_and(|m| m.role != "system") {
        push("system", DEFAULT_SYSTEM_PROMPT);
    }
    for message in messages {
        push(&message.role, &message.content);
    }
    if add_generation_prompt {
        text.extend([IM_START, "assistant\n"]);
    }
    text
}

/// A Qwen2 tokenizer: byte-level BPE with the chat special tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    stop_ids: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({} tokens)", self.vocab_size())
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` (the file, or a model directory holding it). The file must define `<|im_start|>` and
    /// `<|im_end|>`: without them the chat template cannot be encoded.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let file = if path.is_dir() { path.join("tokenizer.json") } else { path.to_path_buf() };
        let text = crate::model::files::read_text(&file, crate::model::files::MAX_TOKENIZER_BYTES)?;
        let inner = tokenizers::Tokenizer::from_bytes(text.as_bytes())
            .map_err(|e| Error::Checkpoint(format!("cannot load tokenizer {}: {e}", file.display())))?;
        for token in [IM_START, IM_END] {
            if inner.token_to_id(token).is_none() {
                return Err(Error::Checkpoint(format!(
                    "tokenizer {} has no `{token}` token: not a Qwen2 chat tokenizer",
                    file.display()
                )));
            }
        }
        let stop_ids = [IM_END, END_OF_TEXT].iter().filter_map(|t| inner.token_to_id(t)).collect();
        Ok(Tokenizer { inner, stop_ids })
    }

    /// Token ids of `text`, special-token text included (`<|im_start|>` becomes its one id). Qwen2 adds no BOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding =
            self.inner.encode(text, true).map_err(|e| Error::InvalidArgument(format!("cannot tokenize text: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`; byte-level decoding makes `decode(encode(t)) == t` for any NFC-normalised text. Ids past
    /// the vocabulary are skipped, as transformers' decode does: real checkpoints pad the embedding (Qwen2: 151,936
    /// rows for 151,665 tokens), so a model can emit them; [`Tokenizer::unknown_ids`] lists them.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let known: Vec<u32> = ids.iter().copied().filter(|&id| self.inner.id_to_token(id).is_some()).collect();
        self.inner
            .decode(&known, skip_special_tokens)
            .map_err(|e| Error::InvalidArgument(format!("cannot decode token ids: {e}")))
    }

    /// The ids among `ids` that name no token (skipped by [`Tokenizer::decode`]).
    pub fn unknown_ids(&self, ids: &[u32]) -> Vec<u32> {
        ids.iter().copied().filter(|&id| self.inner.id_to_token(id).is_none()).collect()
    }

    /// The chat template's text for `messages`, tokenized.
    pub fn encode_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<Vec<u32>> {
        self.encode(&render_chat(messages, add_generation_prompt))
    }

    /// The id of `token` (a special token or a vocabulary entry), if any.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The ids that end an assistant turn: `<|im_end|>`, and `<|endoftext|>` when defined.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }
}
