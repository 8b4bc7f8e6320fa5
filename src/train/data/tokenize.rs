//! Conversations to token ids and labels with the checkpoint's chat template, as LLaVA-NeXT's `preprocess_qwen`
//! builds them for UnifiedReward's training: a system turn first, each turn tokenized as the template renders it,
//! labels equal to the ids on assistant turns (their `<|im_start|>assistant\n` header and `<|im_end|>\n` included)
//! and [`IGNORE_INDEX`] elsewhere. Placeholders stay single ids (expanding them into feature rows is the media
//! loader's job): the tokenizer's `<image>` / `<video>` tokens where it has them (LLaVA-OneVision's Hugging Face
//! checkpoints), else LLaVA-NeXT's ids outside the vocabulary, the text split at each marker as its
//! `tokenizer_image_token` splits it (the `llava_qwen` checkpoints UnifiedReward releases). Ids are `i64` for that.

use std::path::Path;

use super::problems::Problem;
use super::record::{IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER};
use crate::judge::media_prompt::{split_at_markers, PromptPiece};
use crate::judge::tokenizer::{DEFAULT_SYSTEM_PROMPT, END_OF_TEXT, IM_END, IM_START};
use crate::judge::{ChatMessage, ChatTemplate, Tokenizer};
use crate::model::llava::config::{LLAVA_IMAGE_PLACEHOLDER, LLAVA_VIDEO_PLACEHOLDER};
use crate::model::llava::packing::PlaceholderTokens;
use crate::{Error, Result};

/// The label of a token the loss ignores (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// Which tokens carry labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LabelMask {
    /// LLaVA-NeXT's `preprocess_qwen`, which UnifiedReward trains with: assistant turns, plus every `<|im_start|>`,
    /// `<|im_end|>` and newline token wherever it stands (its `unmask_tokens_idx`; it names the newline as Qwen2's
    /// id 198, taken here as the tokenizer's id of `"\n"`, the same token for Qwen2).
    #[default]
    LlavaNext,
    /// Assistant turns only.
    AssistantTurns,
}

/// A tokenizer and a chat template turning records into training sequences.
#[derive(Debug)]
pub struct ConversationTokenizer {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    /// The system turn put first when a conversation has none.
    pub system_message: String,
    pub label_mask: LabelMask,
    /// `<|im_start|>`, `<|im_end|>` and `"\n"`: the tokens [`LabelMask::LlavaNext`] always labels.
    always_labelled: Vec<i64>,
    pad_id: u32,
}

impl ConversationTokenizer {
    /// Over a Qwen2 chat tokenizer and a template; LLaVA-NeXT's system message and label mask.
    pub fn new(tokenizer: Tokenizer, template: ChatTemplate) -> Result<ConversationTokenizer> {
        let id = |token: &str| tokenizer.token_to_id(token);
        let newline = match tokenizer.encode("\n")?.as_slice() {
            &[newline] => newline,
            other => {
                return Err(Error::Checkpoint(format!(
                    "the tokenizer encodes \"\\n\" as {} tokens, not one",
                    other.len()
                )))
            }
        };
        let (Some(im_start), Some(im_end)) = (id(IM_START), id(IM_END)) else {
            return Err(Error::Checkpoint(format!("the tokenizer has no `{IM_START}` or `{IM_END}` token")));
        };
        // Qwen2 pads with `<|endoftext|>` (its tokenizer_config's pad_token).
        let pad_id = id(END_OF_TEXT).unwrap_or(im_end);
        Ok(ConversationTokenizer {
            tokenizer,
            template,
            system_message: DEFAULT_SYSTEM_PROMPT.into(),
            label_mask: LabelMask::default(),
            always_labelled: [im_start, im_end, newline].map(i64::from).to_vec(),
            pad_id,
        })
    }

    /// The tokenizer (`tokenizer.json`) and chat template of the checkpoint in `dir`.
    pub fn from_checkpoint_dir(dir: &Path) -> Result<ConversationTokenizer> {
        ConversationTokenizer::new(Tokenizer::from_file(dir)?, ChatTemplate::from_checkpoint_dir(dir)?)
    }

    /// The id padding fills batches with (`<|endoftext|>`, else `<|im_end|>`).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The ids `<image>` and `<video>` stand for in the tokenized text: the tokenizer's where it has them as tokens,
    /// else LLaVA-NeXT's ([`LLAVA_IMAGE_PLACEHOLDER`], [`LLAVA_VIDEO_PLACEHOLDER`]), outside every vocabulary.
    pub fn placeholder_ids(&self) -> PlaceholderTokens {
        let id = |p: &str, fallback: i64| self.tokenizer.token_to_id(p).map_or(fallback, i64::from);
        PlaceholderTokens {
            image: id(IMAGE_PLACEHOLDER, LLAVA_IMAGE_PLACEHOLDER),
            video: id(VIDEO_PLACEHOLDER, LLAVA_VIDEO_PLACEHOLDER),
        }
    }

    /// The ids of `text`, each `<image>` / `<video>` marker one id of [`ConversationTokenizer::placeholder_ids`]
    /// and the text between markers tokenized on its own (as tokenizers split at special tokens).
    fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let markers = self.placeholder_ids();
        let mut ids = Vec::new();
        for piece in split_at_markers(text) {
            match piece {
                PromptPiece::Text(text) => ids.extend(self.tokenizer.encode(text)?.into_iter().map(i64::from)),
                PromptPiece::Image => ids.push(markers.image),
                PromptPiece::Video => ids.push(markers.video),
            }
        }
        Ok(ids)
    }

    /// The template's text for each of `messages`, as the differences between the renderings of successive
    /// prefixes (a template whose rendering of a prefix is not a prefix of the whole is refused).
    fn segments(&self, messages: &[ChatMessage]) -> Result<Vec<String>> {
        let mut segments = Vec::with_capacity(messages.len());
        let mut before = String::new();
        for end in 1..=messages.len() {
            let text = self.template.render(&messages[..end], false)?;
            let Some(segment) = text.strip_prefix(before.as_str()) else {
                return Err(Error::InvalidArgument(
                    "the chat template renders a conversation's first turns differently from the whole: its turns \
                     cannot be told apart for the labels"
                        .into(),
                ));
            };
            segments.push(segment.to_string());
            before = text;
        }
        Ok(segments)
    }

    /// Token ids and labels (aligned with the ids; the loss shifts them) of a conversation. A leading `system` turn
    /// replaces the system message; other leading non-user turns are dropped, as LLaVA-NeXT drops them. What only
    /// this record gets wrong (a template that raises on it, text that does not tokenize) is its [`Problem`].
    pub(crate) fn conversation(&self, turns: &[ChatMessage]) -> Result<std::result::Result<Labelled, Problem>> {
        let (system, mut rest) = match turns.split_first() {
            Some((first, rest)) if first.role == "system" => (first.content.clone(), rest),
            _ => (self.system_message.clone(), turns),
        };
        if rest.first().is_some_and(|t| t.role != "user") {
            rest = &rest[1..];
        }
        if !rest.iter().any(|t| t.role == "assistant") {
            return Ok(Err(Problem::NoAssistantTurn));
        }
        let mut messages = vec![ChatMessage::system(system)];
        messages.extend_from_slice(rest);
        Ok(self.labelled(&messages).map_err(|e| Problem::Invalid(e.to_string())))
    }

    fn labelled(&self, messages: &[ChatMessage]) -> Result<Labelled> {
        let (mut ids, mut labels) = (Vec::new(), Vec::new());
        for (message, segment) in messages.iter().zip(self.segments(messages)?) {
            let segment_ids = self.encode(&segment)?;
            let learn = message.role == "assistant";
            labels.extend(segment_ids.iter().map(|&id| if learn { id } else { IGNORE_INDEX }));
            ids.extend(segment_ids);
        }
        if self.label_mask == LabelMask::LlavaNext {
            for (label, &id) in labels.iter_mut().zip(&ids) {
                if self.always_labelled.contains(&id) {
                    *label = id;
                }
            }
        }
        Ok(Labelled { ids, labels })
    }

    /// The prompt's ids (system and user turns, then the assistant header) and the ids of each completion (the
    /// assistant turn's text after its header, its end marker included), each tokenized on its own. Errors as for
    /// [`ConversationTokenizer::conversation`].
    pub(crate) fn prompt_and_completions(
        &self,
        prompt: &str,
        completions: &[&str],
    ) -> Result<std::result::Result<PromptTokens, Problem>> {
        let messages = vec![ChatMessage::system(self.system_message.clone()), ChatMessage::user(prompt)];
        let encode = || -> Result<PromptTokens> {
            let prompt_text = self.template.render(&messages, true)?;
            let completion = |answer: &str| -> Result<Vec<u32>> {
                let mut full = messages.clone();
                full.push(ChatMessage::assistant(answer));
                let text = self.template.render(&full, false)?;
                let tail = text.strip_prefix(prompt_text.as_str()).ok_or_else(|| {
                    Error::InvalidArgument(
                        "the chat template's prompt with its generation prompt is not the start of the conversation \
                         with the answer: the completion cannot be cut out"
                            .into(),
                    )
                })?;
                self.tokenizer.encode(tail)
            };
            Ok(PromptTokens {
                prompt: self.encode(&prompt_text)?,
                completions: completions.iter().map(|c| completion(c)).collect::<Result<_>>()?,
            })
        };
        Ok(encode().map_err(|e| Problem::Invalid(e.to_string())))
    }
}

/// A tokenized prompt and its completions, in their order.
pub(crate) struct PromptTokens {
    pub prompt: Vec<i64>,
    pub completions: Vec<Vec<u32>>,
}

/// A tokenized conversation.
pub(crate) struct Labelled {
    pub ids: Vec<i64>,
    pub labels: Vec<i64>,
}
