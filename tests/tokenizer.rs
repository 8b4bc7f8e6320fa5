//! Qwen2's tokenizer and chat template against the Python `tokenizers` and transformers' `apply_chat_template`
//! (fixtures by `tests/reference/qwen2_checkpoint.py`: a small byte-level BPE with Qwen2's pre-tokenizer, special
//! tokens and template).

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use unireward::judge::tokenizer::{END_OF_TEXT, IM_END, IM_START};
use unireward::judge::{render_chat, ChatMessage, Tokenizer};
use unireward::Error;

const QWEN2_CHAT_TEMPLATE: &str =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}\
    {{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}\
    {{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}\
    {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2/tokenizer")
}

#[derive(serde::Deserialize)]
struct Cases {
    special_tokens: std::collections::BTreeMap<String, u32>,
    vocab_size: usize,
    encode: Vec<EncodeCase>,
    chat: Vec<ChatCase>,
}

#[derive(serde::Deserialize)]
struct EncodeCase {
    text: String,
    ids: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct ChatCase {
    messages: Vec<Message>,
    add_generation_prompt: bool,
    text: String,
    ids: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct Message {
    role: String,
    content: String,
}

fn cases() -> Cases {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("cases.json")).unwrap()).unwrap()
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(&fixture_dir()).unwrap()
}

#[test]
fn vocabulary_and_special_tokens_match_python() {
    let (tok, cases) = (tokenizer(), cases());
    assert_eq!(tok.vocab_size(), cases.vocab_size);
    for (token, id) in &cases.special_tokens {
        assert_eq!(tok.token_to_id(token), Some(*id), "{token}");
    }
    let id = |t: &str| cases.special_tokens[t];
    assert_eq!(tok.stop_ids(), &[id(IM_END), id(END_OF_TEXT)]);
    // The file itself or its directory.
    assert_eq!(Tokenizer::from_file(&fixture_dir().join("tokenizer.json")).unwrap().vocab_size(), cases.vocab_size);
}

#[test]
fn ids_equal_python_and_decode_round_trips() {
    let tok = tokenizer();
    for case in cases().encode {
        assert_eq!(tok.encode(&case.text).unwrap(), case.ids, "{:?}", case.text);
        assert_eq!(tok.decode(&case.ids, false).unwrap(), case.text);
    }
}

#[test]
fn skipping_special_tokens_drops_only_them() {
    let tok = tokenizer();
    let ids = tok.encode("<|im_start|>user\nhello<|im_end|>\n").unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nhello\n");
}

#[test]
fn decode_of_encode_is_the_identity_on_random_text() {
    // NFC-stable characters (the tokenizer normalises to NFC, as Qwen2's does): ASCII, whitespace, precomposed
    // Latin, Cyrillic, CJK, emoji with modifiers, and the special-token markers.
    let pieces = [
        "a",
        "Z",
        "0",
        "9",
        " ",
        "  ",
        "\n",
        "\t",
        "\r\n",
        ".",
        ",",
        "'s",
        "'ll",
        "!?",
        "é",
        "ß",
        "Ø",
        "ж",
        "Я",
        "東",
        "京",
        "語",
        "🙂",
        "👍🏽",
        "€",
        "—",
        "“",
        "”",
        "image",
        " better",
        "12345",
        IM_START,
        IM_END,
        END_OF_TEXT,
    ];
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tok = tokenizer();
    for _ in 0..200 {
        let len = rng.gen_range(0..40);
        let text: String = (0..len).map(|_| pieces[rng.gen_range(0..pieces.len())]).collect();
        let ids = tok.encode(&text).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "seed {seed}");
    }
}

fn messages(case: &ChatCase) -> Vec<ChatMessage> {
    case.messages.iter().map(|m| ChatMessage::new(&m.role, &m.content)).collect()
}

#[test]
fn chat_template_equals_transformers() {
    let tok = tokenizer();
    for case in cases().chat {
        let msgs = messages(&case);
        assert_eq!(render_chat(&msgs, case.add_generation_prompt), case.text);
        assert_eq!(tok.encode_chat(&msgs, case.add_generation_prompt).unwrap(), case.ids, "{:?}", case.text);
    }
}

#[test]
fn chat_template_is_qwen2s() {
    // The fixture was rendered by exactly this template (Qwen2-Instruct's tokenizer_config.json `chat_template`).
    let template = std::fs::read_to_string(fixture_dir().join("chat_template.jinja")).unwrap();
    assert_eq!(template, QWEN2_CHAT_TEMPLATE);
    let user = [ChatMessage::user("Hi")];
    assert_eq!(
        render_chat(&user, true),
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    let with_system = [ChatMessage::system("Judge."), ChatMessage::user("Hi"), ChatMessage::assistant("Hello")];
    assert_eq!(
        render_chat(&with_system, false),
        "<|im_start|>system\nJudge.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
    );
    // No messages: the template's loop never runs, so only the generation prompt.
    assert_eq!(render_chat(&[], true), "<|im_start|>assistant\n");
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let missing = fixture_dir().join("nope.json");
    match Tokenizer::from_file(&missing) {
        Err(Error::Checkpoint(msg)) => assert!(msg.contains("nope.json"), "{msg}"),
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
    // A tokenizer without Qwen's chat tokens cannot encode the template.
    let dir = std::env::temp_dir().join(format!("unireward-tokenizer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = std::fs::read_to_string(fixture_dir().join("tokenizer.json")).unwrap().replace("<|im_start|>", "<|x|>");
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json).unwrap();
    let result = Tokenizer::from_file(&path);
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Err(Error::Checkpoint(msg)) => assert!(msg.contains("no `<|im_start|>` token"), "{msg}"),
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
    let tok = tokenizer();
    // Ids past the vocabulary (a padded embedding's rows) are skipped, as transformers' decode skips them.
    let past = tok.vocab_size() as u32;
    assert_eq!(tok.decode(&[1, past, 100_000, 2], false).unwrap(), tok.decode(&[1, 2], false).unwrap());
    assert_eq!(tok.unknown_ids(&[1, past, 100_000, 2]), vec![past, 100_000]);
    assert!(tok.unknown_ids(&[0, past - 1]).is_empty());
}
