//! The checkpoint's chat template: `chat_template` from its `tokenizer_config.json` (or `chat_template.jinja`),
//! rendered with a Jinja engine configured as transformers' `apply_chat_template` configures Jinja2 (trim_blocks,
//! lstrip_blocks, loop controls, `raise_exception`, `tojson`, Python string methods); Qwen2's built-in template
//! ([`render_chat`]) only when the checkpoint has none.

use std::path::Path;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{context, Environment, ErrorKind, Value};

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
        env.add_filter("tojson", tojson);
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

/// transformers' `tojson` filter: Python's `json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`
/// (Jinja2's and minijinja's own HTML-escape `<`, `>`, `&` and `'`, which chat templates must not). Floats print as
/// Rust's shortest round-trip form, which matches Python's `repr` except in exponent notation (`1e-7` vs `1e-07`).
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, indent, sort_keys.unwrap_or(false), 0)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    out: &mut String,
    value: &Value,
    indent: Option<usize>,
    sort_keys: bool,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    // Python's separators: ", " and ": " without indent; "," and a newline plus indentation with it.
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let item_separator = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
        ValueKind::Number => {
            let x = f64::try_from(value.clone())?;
            out.push_str(&if x.is_finite() {
                format!("{x:?}")
            } else if x.is_nan() {
                "NaN".into()
            } else if x > 0.0 {
                "Infinity".into()
            } else {
                "-Infinity".into()
            });
        }
        ValueKind::String => {
            out.push_str(&serde_json::to_string(value.as_str().unwrap_or_default()).expect("a string serializes"))
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::to_string(&key.to_string()).expect("a string serializes"));
                out.push_str(": ");
                write_json(out, &value.get_item(key)?, indent, sort_keys, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, sort_keys, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        other => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson cannot serialize a {other}"),
            ));
        }
    }
    Ok(())
}
