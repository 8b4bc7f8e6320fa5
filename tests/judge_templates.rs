//! UnifiedReward's task templates against the released scripts' prompts (fixtures by
//! `tests/reference/judge_prompts.py`, which copies each script's `question = ...` line and LLaVA's `qwen_1_5`
//! conversation code), through the built-in Qwen2 chat template and through the Jinja path with the Qwen2 template
//! of `tests/fixtures/qwen2/tokenizer` (whose renderings by transformers' `apply_chat_template` are in its cases.json).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use unireward::judge::{
    render_chat, AnswerGrammar, ChatMessage, ChatTemplate, MediaInput, Mode, Task, TaskTemplate, Variant,
};
use unireward::Error;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[derive(serde::Deserialize)]
struct PromptCase {
    task: String,
    mode: String,
    fields: BTreeMap<String, String>,
    frames: Vec<usize>,
    prompt: String,
}

fn prompt_cases() -> Vec<PromptCase> {
    let text = std::fs::read_to_string(fixtures().join("judge/prompts.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn media(template: &TaskTemplate, frames: &[usize]) -> MediaInput<'static> {
    match template.media {
        unireward::judge::MediaSpec::Image { count } => MediaInput::Images(count),
        unireward::judge::MediaSpec::Video { .. } => MediaInput::Videos(Vec::leak(frames.to_vec())),
    }
}

fn qwen2_jinja() -> ChatTemplate {
    let template = ChatTemplate::from_checkpoint_dir(&fixtures().join("qwen2/tokenizer")).unwrap();
    assert!(matches!(template, ChatTemplate::Jinja(_)), "the fixture's chat_template.jinja was not picked up");
    template
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn every_template_renders_the_released_scripts_prompt_byte_for_byte() {
    let jinja = qwen2_jinja();
    let cases = prompt_cases();
    let mut covered = std::collections::BTreeSet::new();
    for case in &cases {
        let (variant, task) = match case.task.strip_prefix("think/") {
            Some(task) => (Variant::Think, task),
            None => (Variant::UnifiedReward, case.task.as_str()),
        };
        let task: Task = task.parse().unwrap();
        let mode: Mode = case.mode.parse().unwrap();
        covered.insert((variant, task, mode));
        let template = TaskTemplate::built_in_variant(variant, task, mode).unwrap();
        let media = media(&template, &case.frames);
        for chat in [&ChatTemplate::Qwen2BuiltIn, &jinja] {
            let prompt = template.render_prompt(chat, &case.fields, media).unwrap();
            assert_eq!(prompt, case.prompt, "{task}.{mode} with fields {:?}, frames {:?}", case.fields, case.frames);
        }
    }
    assert_eq!(covered.len(), 12, "the fixture covers every task × mode, and Think's four pairwise templates");
}

#[test]
fn jinja_path_renders_qwen2_as_transformers_and_render_chat_do() {
    #[derive(serde::Deserialize)]
    struct Cases {
        chat: Vec<ChatCase>,
    }
    #[derive(serde::Deserialize)]
    struct ChatCase {
        messages: Vec<BTreeMap<String, String>>,
        add_generation_prompt: bool,
        text: String,
    }
    let dir = fixtures().join("qwen2/tokenizer");
    let cases: Cases = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    assert!(cases.chat.len() >= 4);
    let source = std::fs::read_to_string(dir.join("chat_template.jinja")).unwrap();
    // The same source through tokenizer_config.json, which takes precedence over chat_template.jinja.
    let config_dir = std::env::temp_dir().join(format!("unireward-chat-template-{}", std::process::id()));
    std::fs::create_dir_all(&config_dir).unwrap();
    let config = serde_json::json!({ "chat_template": source, "model_max_length": 32768 });
    std::fs::write(config_dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    std::fs::write(config_dir.join("chat_template.jinja"), "not {{ used").unwrap();
    let from_config = ChatTemplate::from_checkpoint_dir(&config_dir).unwrap();
    for template in [qwen2_jinja(), from_config] {
        for case in &cases.chat {
            let messages: Vec<ChatMessage> =
                case.messages.iter().map(|m| ChatMessage::new(&m["role"], &m["content"])).collect();
            let text = template.render(&messages, case.add_generation_prompt).unwrap();
            assert_eq!(text, case.text, "{messages:?}");
            assert_eq!(text, render_chat(&messages, case.add_generation_prompt));
        }
    }
    std::fs::remove_dir_all(&config_dir).unwrap();
}

#[test]
fn jinja_path_renders_checkpoint_style_templates_as_transformers_does() {
    // Fixture by tests/reference/judge_chat_templates.py: transformers' render_jinja_template on three templates
    // (Qwen2's, Qwen2.5's without tools, and one using namespace, string methods, filters and loop variables).
    #[derive(serde::Deserialize)]
    struct Template {
        name: String,
        template: String,
        cases: Vec<Case>,
    }
    #[derive(serde::Deserialize)]
    struct Case {
        messages: Vec<BTreeMap<String, String>>,
        add_generation_prompt: bool,
        text: String,
    }
    let text = std::fs::read_to_string(fixtures().join("judge/chat_templates.json")).unwrap();
    let templates: Vec<Template> = serde_json::from_str(&text).unwrap();
    assert_eq!(templates.len(), 3);
    for t in &templates {
        let template = ChatTemplate::jinja(&t.template).unwrap();
        for case in &t.cases {
            let messages: Vec<ChatMessage> =
                case.messages.iter().map(|m| ChatMessage::new(&m["role"], &m["content"])).collect();
            let rendered = template.render(&messages, case.add_generation_prompt).unwrap();
            assert_eq!(rendered, case.text, "{} on {messages:?}", t.name);
        }
    }
    // The feature template refuses roles it does not know, through raise_exception.
    let features = ChatTemplate::jinja(&templates[2].template).unwrap();
    let err = features.render(&[ChatMessage::new("tool", "x")], true).unwrap_err();
    assert!(err.to_string().contains("unknown role tool"), "{err}");
}

#[test]
fn checkpoint_without_a_template_falls_back_to_the_built_in_one() {
    let dir = std::env::temp_dir().join(format!("unireward-no-chat-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"model_max_length": 8}"#).unwrap();
    assert!(matches!(ChatTemplate::from_checkpoint_dir(&dir).unwrap(), ChatTemplate::Qwen2BuiltIn));
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"chat_template": 3}"#).unwrap();
    assert!(matches!(ChatTemplate::from_checkpoint_dir(&dir), Err(Error::Checkpoint(_))));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn jinja_templates_get_transformers_whitespace_control_and_helpers() {
    // trim_blocks + lstrip_blocks, loop controls, Python string methods, tojson, raise_exception; the expected text
    // is what transformers 4.57's `render_jinja_template` gives for the same source and messages.
    let source = "{% for m in messages %}\n  {% if m.role == 'skip' %}{% continue %}{% endif %}\n\
                  [{{ m.role | upper }}]{{ m.content.strip() }}|{{ m.content | tojson }}\n{% endfor %}\n\
                  {% if not add_generation_prompt %}{{ raise_exception('needs a generation prompt') }}{% endif %}";
    let template = ChatTemplate::jinja(source).unwrap();
    let messages = [ChatMessage::user("  hi \"x\" "), ChatMessage::new("skip", "no"), ChatMessage::assistant("ok")];
    assert_eq!(template.render(&messages, true).unwrap(), "[USER]hi \"x\"|\"  hi \\\"x\\\" \"\n[ASSISTANT]ok|\"ok\"\n");
    let err = template.render(&messages, false).unwrap_err();
    assert!(err.to_string().contains("needs a generation prompt"), "{err}");
    assert!(matches!(ChatTemplate::jinja("{% for %}"), Err(Error::Checkpoint(_))));
}

#[test]
fn built_in_templates_name_their_source_fields_media_and_grammar() {
    for task in Task::ALL {
        for mode in Mode::ALL {
            let t = TaskTemplate::built_in(task, mode).unwrap();
            assert_eq!((t.task, t.mode), (task, mode));
            assert_eq!(t.source.repo, "CodeGoat24/UnifiedReward");
            assert_eq!(t.source.commit.len(), 40);
            assert!(t.source.path.starts_with("inference_llava/"), "{}", t.source.path);
            let expected: &[&str] = match (task, mode) {
                (Task::ImageGeneration | Task::VideoGeneration, _) => &["caption"],
                (_, Mode::Pairwise) => &["question", "first_response", "second_response"],
                (_, Mode::Pointwise) => &["question", "response"],
            };
            assert_eq!(t.fields(), expected, "{task}.{mode}");
            match (&t.answer, mode) {
                (AnswerGrammar::Verdict(v), Mode::Pairwise) => assert!(!v.first.is_empty() && !v.second.is_empty()),
                (AnswerGrammar::Score(s), Mode::Pointwise) => assert_eq!(s.prefix, "Final Score:"),
                other => panic!("{task}.{mode}: {other:?}"),
            }
        }
    }
    for task in Task::ALL {
        let t = TaskTemplate::built_in_variant(Variant::Think, task, Mode::Pairwise).unwrap();
        assert!(t.source.path.starts_with("UnifiedReward-Think/inference_llava/"), "{}", t.source.path);
        match &t.answer {
            AnswerGrammar::Verdict(v) => assert!(v.prefix == "<answer>" && v.tie.is_empty()),
            other => panic!("{other:?}"),
        }
        let err = TaskTemplate::built_in_variant(Variant::Think, task, Mode::Pointwise).unwrap_err();
        assert!(err.to_string().contains("Think has no released pointwise template"), "{err}");
    }
    let scale = |task| match TaskTemplate::built_in(task, Mode::Pointwise).unwrap().answer {
        AnswerGrammar::Score(s) => (s.min, s.max),
        AnswerGrammar::Verdict(_) => unreachable!(),
    };
    assert_eq!(scale(Task::ImageGeneration), (1, 5));
    assert_eq!(scale(Task::ImageUnderstanding), (0, 100));
    assert_eq!(scale(Task::VideoGeneration), (1, 10));
    assert_eq!(scale(Task::VideoUnderstanding), (1, 5));
}

fn invalid_argument(result: Result<String, Error>) -> String {
    match result {
        Err(Error::InvalidArgument(message)) => message,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn bad_requests_are_errors_naming_what_is_wrong() {
    let pair = TaskTemplate::built_in(Task::ImageGeneration, Mode::Pairwise).unwrap();
    let caption = fields(&[("caption", "a cat")]);
    let chat = ChatTemplate::Qwen2BuiltIn;
    let message = invalid_argument(pair.render_prompt(&chat, &BTreeMap::new(), MediaInput::Images(2)));
    assert!(message.contains("`caption`") && message.contains("image_generation.pairwise"), "{message}");
    let extra = fields(&[("caption", "a cat"), ("question", "why?")]);
    assert!(invalid_argument(pair.render_prompt(&chat, &extra, MediaInput::Images(2))).contains("no field `question`"));
    assert!(
        invalid_argument(pair.render_prompt(&chat, &caption, MediaInput::Images(3))).contains("takes 2 image(s), 3")
    );
    assert!(
        invalid_argument(pair.render_prompt(&chat, &caption, MediaInput::Images(1))).contains("takes 2 image(s), 1")
    );
    assert!(invalid_argument(pair.render_prompt(&chat, &caption, MediaInput::Videos(&[8, 8]))).contains("takes images"));
    let video = TaskTemplate::built_in(Task::VideoGeneration, Mode::Pairwise).unwrap();
    assert!(invalid_argument(video.render_prompt(&chat, &caption, MediaInput::Videos(&[8])))
        .contains("takes 2 video(s), 1"));
    assert!(invalid_argument(video.render_prompt(&chat, &caption, MediaInput::Videos(&[8, 0])))
        .contains("video 2 has no frames"));
    assert!(invalid_argument(video.render_prompt(&chat, &caption, MediaInput::Images(2))).contains("takes videos"));
    for bad in ["image-gen", "", "pairwise"] {
        let err = bad.parse::<Task>().unwrap_err();
        assert!(err.to_string().contains(&format!("unknown task `{bad}`")), "{err}");
    }
    assert_eq!("video-understanding".parse::<Task>().unwrap(), Task::VideoUnderstanding);
    assert!("both".parse::<Mode>().unwrap_err().to_string().contains("unknown mode `both`"));
}

#[test]
fn a_users_template_file_replaces_the_built_in_one_and_is_validated() {
    let dir = std::env::temp_dir().join(format!("unireward-user-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mine.json");
    let write = |json: serde_json::Value| std::fs::write(&path, json.to_string()).unwrap();
    let good = serde_json::json!({
        "task": "image_generation", "mode": "pointwise",
        "media": {"kind": "image", "count": 1},
        "instruction": "<image>\nRate {{literally}} [{caption}] in {style}. Answer 'Score: N'.",
        "answer": {"score": {"prefix": "Score:", "min": 0, "max": 9}}
    });
    write(good.clone());
    let template = TaskTemplate::from_file(&path).unwrap();
    assert_eq!(template.fields(), ["caption", "style"]);
    let text = template
        .render_instruction(&fields(&[("caption", "{style}"), ("style", "oil")]), MediaInput::Images(1))
        .unwrap();
    assert_eq!(text, "<image>\nRate {literally} [{style}] in oil. Answer 'Score: N'.");

    let broken = |patch: serde_json::Value, expected: &str| {
        let mut json = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            json[k] = v.clone();
        }
        write(json);
        let err = TaskTemplate::from_file(&path).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, Error::InvalidArgument(_)) && message.contains(expected), "{message}");
        assert!(message.contains("mine.json"), "{message}");
    };
    broken(serde_json::json!({"media": {"kind": "image", "count": 2}}), "1 `<image>` but media.count is 2");
    broken(serde_json::json!({"instruction": "<image> {frames}"}), "`{frames}` in an image template");
    broken(serde_json::json!({"instruction": "<image> {caption"}), "unclosed");
    broken(serde_json::json!({"mode": "pairwise"}), "needs answer.verdict");
    broken(serde_json::json!({"answer": {"score": {"prefix": "S:", "min": 5, "max": 5}}}), "min < max");
    broken(serde_json::json!({"task": "audio_generation"}), "unknown variant `audio_generation`");
    broken(serde_json::json!({"extra": 1}), "unknown field `extra`");
    broken(
        serde_json::json!({"media": {"kind": "video", "count": 1, "frame_placeholder": "<image>\n", "frames_per_video": 8}}),
        "needs `{frames}` once",
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(TaskTemplate::from_file(&path).unwrap_err().to_string().contains("mine.json"));
}

#[test]
fn the_demo_templates_keep_the_released_fields_phrases_and_score_prefix() {
    for task in Task::ALL {
        for mode in Mode::ALL {
            let demo = TaskTemplate::built_in_variant(Variant::Demo, task, mode).unwrap();
            let released = TaskTemplate::built_in(task, mode).unwrap();
            assert_eq!((demo.task, demo.mode), (task, mode));
            let sorted = |t: &TaskTemplate| {
                let mut f = t.fields().to_vec();
                f.sort();
                f
            };
            assert_eq!(sorted(&demo), sorted(&released), "{task}.{mode}");
            assert!(demo.instruction.len() < released.instruction.len() / 3, "{task}.{mode} is short");
            match (&demo.answer, &released.answer) {
                (AnswerGrammar::Verdict(d), AnswerGrammar::Verdict(r)) => {
                    assert_eq!((&d.prefix, &d.first[0], &d.second[0]), (&r.prefix, &r.first[0], &r.second[0]));
                    assert_eq!(d.tie.first(), r.tie.first(), "{task}.{mode}");
                }
                (AnswerGrammar::Score(d), AnswerGrammar::Score(r)) => {
                    assert_eq!((d.prefix.as_str(), d.min, d.max), (r.prefix.as_str(), 1, 5), "{task}.{mode}");
                }
                other => panic!("{task}.{mode}: {other:?}"),
            }
        }
    }
}

#[test]
fn a_checkpoint_carries_templates_that_replace_the_built_in_ones() {
    use unireward::judge::CHECKPOINT_TEMPLATES;
    let dir = std::env::temp_dir().join(format!("unireward-checkpoint-templates-{}", std::process::id()));
    let folder = dir.join(CHECKPOINT_TEMPLATES);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(TaskTemplate::from_checkpoint_dir(&dir).unwrap().is_empty(), "no folder, no templates");
    std::fs::create_dir_all(&folder).unwrap();
    let demo = |task: &str, mode: &str| std::fs::read_to_string(format!("templates/demo/{task}.{mode}.json")).unwrap();
    std::fs::write(folder.join("a.json"), demo("image_generation", "pairwise")).unwrap();
    std::fs::write(folder.join("b.json"), demo("video_understanding", "pointwise")).unwrap();
    std::fs::write(folder.join("notes.txt"), "not a template").unwrap();
    let found: Vec<(Task, Mode)> =
        TaskTemplate::from_checkpoint_dir(&dir).unwrap().iter().map(|t| (t.task, t.mode)).collect();
    assert_eq!(found, [(Task::ImageGeneration, Mode::Pairwise), (Task::VideoUnderstanding, Mode::Pointwise)]);

    std::fs::write(folder.join("c.json"), demo("image_generation", "pairwise")).unwrap();
    let err = TaskTemplate::from_checkpoint_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("two templates for image_generation.pairwise") && err.contains("c.json"), "{err}");
    std::fs::write(folder.join("c.json"), "{").unwrap();
    let err = TaskTemplate::from_checkpoint_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("c.json"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
