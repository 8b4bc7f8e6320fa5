//! The checkpoint's chat template: `chat_template` from its `tokenizer_config.json` (or `chat_template.jinja`),
//! rendered with a Jinja engine configured as transformers' `apply_chat_template` configures Jinja2 (trim_blocks,
//! lstrip_blocks, loop controls, `raise_exception`, `tojson`, Python string methods); Qwen2's built-in template
//! ([`render_chat`]) only when the checkpoint has none.

use std::path::Path;

use minijinja::{context, Environment, ErrorKind};

use super::tokenizer::{render_chat, ChatMessage};
use crate::{Error, Result};

/// The name the template is registered under inside its Jinja environment.
const TEMPLATE_NAME: &str = "chat_template";
/// Bounds the files read for a template.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A chat template: the checkpoint's Jinja source, or Qwen2's, built in.
#[derive(Debug, Clone)]
pub enum ChatTemplate {
    /// Qwen2-Instruct's template, rendered by [`render_chat`].
    Qwen2BuiltIn,
    /// A checkpoint's Jinja template, compiled.
    Jinja(Box<Environment<'static>>),
}

impl ChatTemplate {
    /// Compiles a Jinja chat template; a syntax error names its line.
    pub fn jinja(source: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| Error::Checkpoint(format!("chat template does not compile: {e:#}")))?;
        Ok(ChatTemplate::Jinja(Box::new(env)))
    }

    /// The template of the checkpoint in `dir`: `chat_template` in `tokenizer_config.json`, else the file
    /// `chat_template.jinja`, else Qwen2's built-in one.
    pub fn from_checkpoint_dir(dir: &Path) -> Result<ChatTemplate> {
        let config = dir.join("tokenizer_config.json");
        if config.is_file() {
            if let Some(source) = chat_template_in_config(&read_bounded(&config)?, &config)? {
                return ChatTemplate::jinja(&source);
            }
        }
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            return ChatTemplate::jinja(&read_bounded(&jinja)?);
        }
        Ok(ChatTemplate::Qwen2BuiltIn)
    }

    /// Renders a conversation, as `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        match self {
            ChatTemplate::Qwen2BuiltIn => Ok(render_chat(messages, add_generation_prompt)),
            ChatTemplate::Jinja(env) => {
                let messages: Vec<_> = messages
                    .iter()
                    .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
                    .collect();
                let template =
                    env.get_template(TEMPLATE_NAME).map_err(|e| Error::Checkpoint(format!("chat template: {e:#}")))?;
                template
                    .render(context! { messages => messages, add_generation_prompt => add_generation_prompt })
                    .map_err(|e| Error::InvalidArgument(format!("chat template failed to render: {e:#}")))
            }
        }
    }
}

fn read_bounded(path: &Path) -> Result<String> {
    let name = path.display();
    let len = std::fs::metadata(path).map_err(|e| Error::Checkpoint(format!("{name}: {e}")))?.len();
    if len > MAX_CONFIG_BYTES {
        return Err(Error::Checkpoint(format!("{name}: {len} bytes, more than the {MAX_CONFIG_BYTES} allowed")));
    }
    std::fs::read_to_string(path).map_err(|e| Error::Checkpoint(format!("{name}: {e}")))
}

/// `chat_template` of a tokenizer config: a string, or a list of `{name, template}` of which `default` is taken.
fn chat_template_in_config(text: &str, path: &Path) -> Result<Option<String>> {
    let name = path.display();
    let config: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Error::Checkpoint(format!("{name}: {e}")))?;
    match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(source)) => Ok(Some(source.clone())),
        Some(serde_json::Value::Array(named)) => named
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string))
            .map(Some)
            .ok_or_else(|| Error::Checkpoint(format!("{name}: `chat_template` is a list with no `default` template"))),
        Some(_) => Err(Error::Checkpoint(format!("{name}: `chat_template` is neither a string nor a list"))),
    }
}
