//! The training data layer against LLaVA-NeXT's `preprocess_qwen` run with transformers' tokenizer and
//! `apply_chat_template` (tests/reference/train_data.py writes tests/fixtures/train/expected.json), bad records,
//! padding, and the sampler's shuffling, mixing and resume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use unireward::model::llava::config::{LLAVA_IMAGE_PLACEHOLDER, LLAVA_VIDEO_PLACEHOLDER};
use unireward::train::data::{
    collate_conversations, collate_pairs, collate_rankings, BadRecordPolicy, BatchSampler, ConversationTokenizer,
    DataOptions, DataSource, LabelMask, LoaderState, MediaKind, PairDataset, Problem, RankingDataset, SamplerConfig,
    SftDataset, IGNORE_INDEX,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[derive(serde::Deserialize)]
struct Expected {
    special_tokens: BTreeMap<String, i64>,
    conversations: Vec<ExpectedConversation>,
    pairs: Vec<ExpectedPair>,
}

#[derive(serde::Deserialize)]
struct ExpectedConversation {
    line: usize,
    ids: Vec<i64>,
    labels_llava_next: Vec<i64>,
    labels_assistant: Vec<i64>,
}

#[derive(serde::Deserialize)]
struct ExpectedPair {
    line: usize,
    prompt: Vec<i64>,
    chosen: Vec<u32>,
    rejected: Vec<u32>,
}

fn expected() -> Expected {
    serde_json::from_str(&std::fs::read_to_string(fixture("train/expected.json")).unwrap()).unwrap()
}

fn tokenizer(mask: LabelMask) -> ConversationTokenizer {
    let mut tok = ConversationTokenizer::from_checkpoint_dir(&fixture("train/tokenizer")).unwrap();
    tok.label_mask = mask;
    tok
}

fn options() -> DataOptions {
    DataOptions { media_folder: fixture("llava"), ..DataOptions::default() }
}

fn conversations(mask: LabelMask) -> SftDataset {
    let source = [DataSource::new(fixture("train/sft.jsonl"))];
    let (data, report) = SftDataset::load_conversations(&source, &tokenizer(mask), &options()).unwrap();
    assert!(report.bad.is_empty(), "{:?}", report.bad);
    assert_eq!(report.records, 7);
    data
}

#[test]
fn conversations_match_llava_next_preprocessing() {
    let expected = expected();
    for (mask, pick) in [
        (LabelMask::LlavaNext, (|e: &ExpectedConversation| &e.labels_llava_next) as fn(&_) -> &_),
        (LabelMask::AssistantTurns, |e: &ExpectedConversation| &e.labels_assistant),
    ] {
        let data = conversations(mask);
        assert_eq!(data.examples.len(), expected.conversations.len());
        for (got, want) in data.examples.iter().zip(&expected.conversations) {
            assert_eq!(got.line, want.line);
            assert_eq!(got.ids, want.ids, "ids of line {}", want.line);
            assert_eq!(&got.labels, pick(want), "labels ({mask:?}) of line {}", want.line);
        }
    }
}

#[test]
fn tasks_media_and_placeholders_come_from_the_records() {
    let data = conversations(LabelMask::LlavaNext);
    let special = expected().special_tokens;
    assert_eq!(data.tasks, ["text_judge", "sft", "image_pair", "video"]);
    let task_of = |line: usize| data.tasks[data.examples.iter().find(|e| e.line == line).unwrap().task].as_str();
    assert_eq!(
        [task_of(1), task_of(2), task_of(6), task_of(7), task_of(8)],
        ["text_judge", "sft", "sft", "text_judge", "text_judge"]
    );
    let two = data.examples.iter().find(|e| e.line == 3).unwrap();
    assert_eq!(two.media.iter().map(|m| m.kind).collect::<Vec<_>>(), [MediaKind::Image, MediaKind::Image]);
    assert_eq!(two.media[1].path, fixture("llava").join("images/two_images_1.png"));
    assert_eq!(two.ids.iter().filter(|&&id| id == special["<image>"]).count(), 2);
    // A LLaVA-NeXT video record's `<image>` becomes the video placeholder.
    let video = data.examples.iter().find(|e| e.line == 5).unwrap();
    assert_eq!(video.media[0].kind, MediaKind::Video);
    assert_eq!(video.ids.iter().filter(|&&id| id == special["<video>"]).count(), 1);
    assert!(!video.ids.contains(&special["<image>"]));
}

#[test]
fn pairs_match_the_chat_template() {
    let source = [DataSource { path: fixture("train/pairs.jsonl"), task: Some("dpo".into()) }];
    let (data, report) = PairDataset::load_pairs(&source, &tokenizer(LabelMask::LlavaNext), &options()).unwrap();
    assert!(report.bad.is_empty());
    assert_eq!(data.tasks, ["image", "dpo"]);
    assert_eq!(report.kept_per_task, [1, 2]);
    for (got, want) in data.examples.iter().zip(&expected().pairs) {
        assert_eq!(
            (got.line, &got.prompt, &got.chosen, &got.rejected),
            (want.line, &want.prompt, &want.chosen, &want.rejected)
        );
    }
    // Rows 0..n: prompt + chosen; n..2n: prompt + rejected; labels on the completions only.
    let refs: Vec<_> = data.examples.iter().collect();
    let batch = collate_pairs(&refs, 360);
    assert_eq!(batch.rows, 6);
    for (row, e) in refs.iter().enumerate() {
        for (offset, completion) in [(0, &e.chosen), (3, &e.rejected)] {
            let at = (row + offset) * batch.len;
            let n = e.prompt.len() + completion.len();
            let ids: Vec<i64> = e.prompt.iter().copied().chain(completion.iter().map(|&i| i64::from(i))).collect();
            assert_eq!(batch.ids[at..at + n], ids[..]);
            assert!(batch.ids[at + n..at + batch.len].iter().all(|&i| i == 360));
            assert!(batch.labels[at..at + e.prompt.len()].iter().all(|&l| l == IGNORE_INDEX));
            assert_eq!(batch.labels[at + e.prompt.len()..at + n], ids[e.prompt.len()..]);
            assert!(batch.labels[at + n..at + batch.len].iter().all(|&l| l == IGNORE_INDEX));
            assert_eq!(batch.mask[at..at + batch.len].iter().sum::<i64>(), n as i64);
        }
    }
}

/// The pair fixture rewritten as ranked lists `[chosen, rejected, chosen]` (and the pairs with margins).
#[test]
fn ranked_lists_match_the_chat_template_and_pad_response_major() {
    let dir = std::env::temp_dir().join(format!("unireward-rankings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut lists, mut margins) = (String::new(), String::new());
    let text = std::fs::read_to_string(fixture("train/pairs.jsonl")).unwrap();
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let mut record: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
        let (chosen, rejected) = (record.remove("chosen").unwrap(), record.remove("rejected").unwrap());
        let mut with_margin = record.clone();
        with_margin.extend([("chosen".into(), chosen.clone()), ("rejected".into(), rejected.clone())]);
        with_margin.insert("margin".into(), (0.25 * i as f64).into());
        record.insert("responses".into(), serde_json::json!([chosen.clone(), rejected, chosen]));
        lists += &(serde_json::Value::Object(record).to_string() + "\n");
        margins += &(serde_json::Value::Object(with_margin).to_string() + "\n");
    }
    std::fs::write(dir.join("lists.jsonl"), lists).unwrap();
    std::fs::write(dir.join("margins.jsonl"), margins).unwrap();
    let tok = tokenizer(LabelMask::LlavaNext);
    let source = [DataSource { path: dir.join("lists.jsonl"), task: Some("dpo".into()) }];
    let (data, report) = RankingDataset::load_rankings(&source, &tok, &options()).unwrap();
    let source = [DataSource { path: dir.join("margins.jsonl"), task: Some("dpo".into()) }];
    let (pairs, _) = PairDataset::load_pairs(&source, &tok, &options()).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(report.bad.is_empty(), "{:?}", report.bad);
    assert_eq!(data.tasks, ["image", "dpo"]);
    let margins: Vec<_> = pairs.examples.iter().map(|e| e.margin).collect();
    assert_eq!(margins, [Some(0.0), Some(0.25), Some(0.5)]);
    for (got, want) in data.examples.iter().zip(&expected().pairs) {
        assert_eq!((got.line, &got.prompt), (want.line, &want.prompt));
        assert_eq!(got.responses, [want.chosen.clone(), want.rejected.clone(), want.chosen.clone()]);
    }
    // Row k·G + g: prompt g + its k-th response; labels on the responses only.
    let refs: Vec<_> = data.examples.iter().collect();
    let batch = collate_rankings(&refs, 360);
    let g = refs.len();
    assert_eq!(batch.rows, 3 * g);
    for (row, e) in refs.iter().enumerate() {
        for (k, response) in e.responses.iter().enumerate() {
            let at = (k * g + row) * batch.len;
            let n = e.prompt.len() + response.len();
            let ids: Vec<i64> = e.prompt.iter().copied().chain(response.iter().map(|&i| i64::from(i))).collect();
            assert_eq!(batch.ids[at..at + n], ids[..]);
            assert!(batch.labels[at..at + e.prompt.len()].iter().all(|&l| l == IGNORE_INDEX));
            assert_eq!(batch.labels[at + e.prompt.len()..at + n], ids[e.prompt.len()..]);
            assert_eq!(batch.mask[at..at + batch.len].iter().sum::<i64>(), n as i64);
        }
    }
}

#[test]
fn bad_records_are_reported_by_line_or_refused() {
    let source = [DataSource::new(fixture("train/bad.jsonl"))];
    let options = DataOptions { max_len: 50, ..options() };
    let tok = tokenizer(LabelMask::LlavaNext);
    let (data, report) = SftDataset::load_conversations(&source, &tok, &options).unwrap();
    assert_eq!(data.examples.iter().map(|e| e.line).collect::<Vec<_>>(), [1]);
    assert_eq!(report.records, 8, "the blank line is not a record");
    let lines: Vec<usize> = report.bad.iter().map(|b| b.line).collect();
    assert_eq!(lines, [2, 3, 4, 5, 6, 8, 9]);
    let problems: Vec<&Problem> = report.bad.iter().map(|b| &b.problem).collect();
    assert!(matches!(problems[0], Problem::Unparsable(_)));
    assert_eq!(problems[1], &Problem::MissingMedia(fixture("llava").join("images/missing.png")));
    assert_eq!(problems[2], &Problem::NoAssistantTurn);
    assert!(matches!(problems[3], Problem::TooLong { max: 50, tokens } if *tokens > 50));
    assert_eq!(problems[4], &Problem::PlaceholderMismatch { placeholder: "<image>", found: 0, media: 1 });
    assert!(matches!(problems[5], Problem::Unparsable(m) if m.contains("array")));
    assert!(matches!(problems[6], Problem::Invalid(m) if m.contains("conversations")));
    assert!(report.bad[3].to_string().contains("bad.jsonl line 5"), "{}", report.bad[3]);
    let want = BTreeMap::from([
        ("invalid", 1),
        ("missing media", 1),
        ("no assistant turn", 1),
        ("placeholder mismatch", 1),
        ("too long", 1),
        ("unparsable", 2),
    ]);
    assert_eq!(report.bad_per_kind(), want);

    let refuse = DataOptions { bad_records: BadRecordPolicy::Refuse, ..options };
    let msg = SftDataset::load_conversations(&source, &tok, &refuse).unwrap_err().to_string();
    assert!(msg.contains("bad.jsonl line 2") && msg.contains("not a JSON object"), "{msg}");
}

#[test]
fn files_that_cannot_be_read_are_errors() {
    let tok = tokenizer(LabelMask::LlavaNext);
    let missing = [DataSource::new(fixture("train/no-such-file.jsonl"))];
    assert!(SftDataset::load_conversations(&missing, &tok, &options())
        .unwrap_err()
        .to_string()
        .contains("no-such-file"));
    let zero = DataOptions { max_len: 0, ..options() };
    let source = [DataSource::new(fixture("train/sft.jsonl"))];
    assert!(SftDataset::load_conversations(&source, &tok, &zero).unwrap_err().to_string().contains("max_len"));
}

/// A tokenizer without `<image>` / `<video>` tokens (a `llava_qwen` checkpoint's) splits the text at the markers,
/// as LLaVA-NeXT's `tokenizer_image_token` does, and gives them LLaVA-NeXT's ids: the same sequences as a tokenizer
/// with the tokens, but for the placeholder ids.
#[test]
fn markers_the_tokenizer_lacks_become_llava_next_ids() {
    let source = [DataSource::new(fixture("train/sft.jsonl"))];
    let with_tokens = conversations(LabelMask::LlavaNext);
    let plain = ConversationTokenizer::from_checkpoint_dir(&fixture("qwen2/tokenizer")).unwrap();
    let markers = plain.placeholder_ids();
    assert_eq!((markers.image, markers.video), (LLAVA_IMAGE_PLACEHOLDER, LLAVA_VIDEO_PLACEHOLDER));
    let (without, _) = SftDataset::load_conversations(&source, &plain, &options()).unwrap();
    let special = expected().special_tokens;
    let as_llava_next = |id: i64| match id {
        id if id == special["<image>"] => LLAVA_IMAGE_PLACEHOLDER,
        id if id == special["<video>"] => LLAVA_VIDEO_PLACEHOLDER,
        id => id,
    };
    assert_eq!(with_tokens.examples.len(), without.examples.len());
    for (a, b) in with_tokens.examples.iter().zip(&without.examples) {
        assert_eq!(a.ids.iter().map(|&id| as_llava_next(id)).collect::<Vec<_>>(), b.ids, "line {}", a.line);
        assert_eq!(a.labels, b.labels, "line {}", a.line);
    }
    let placeholders = |id: i64| without.examples.iter().flat_map(|e| &e.ids).filter(|&&i| i == id).count();
    assert_eq!((placeholders(LLAVA_IMAGE_PLACEHOLDER), placeholders(LLAVA_VIDEO_PLACEHOLDER)), (3, 1));
}

#[test]
fn conversations_pad_on_the_right_with_ignored_labels() {
    let data = conversations(LabelMask::LlavaNext);
    let refs: Vec<_> = data.examples.iter().collect();
    let batch = collate_conversations(&refs, 360);
    let longest = refs.iter().map(|e| e.ids.len()).max().unwrap();
    assert_eq!((batch.rows, batch.len), (refs.len(), longest));
    for (row, e) in refs.iter().enumerate() {
        let at = row * batch.len;
        assert_eq!(batch.ids[at..at + e.ids.len()], e.ids[..]);
        assert_eq!(batch.labels[at..at + e.ids.len()], e.labels[..]);
        assert!(batch.ids[at + e.ids.len()..at + batch.len].iter().all(|&i| i == 360));
        assert!(batch.labels[at + e.ids.len()..at + batch.len].iter().all(|&l| l == IGNORE_INDEX));
        assert_eq!(batch.mask[at..at + batch.len].iter().sum::<i64>(), e.ids.len() as i64);
        assert_eq!(batch.tasks[row], e.task);
        assert_eq!(batch.media[row], e.media);
    }
    let per_task = batch.labelled_tokens_per_task(data.tasks.len());
    let labelled = |t: usize| -> usize {
        refs.iter().filter(|e| e.task == t).map(|e| e.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()).sum()
    };
    assert_eq!(per_task, (0..data.tasks.len()).map(labelled).collect::<Vec<_>>());
    let [ids, mask, labels] = batch.tensors(unireward::Device::Cpu).unwrap();
    assert_eq!(ids.shape(), [batch.rows, batch.len]);
    assert_eq!(labels.to_vec::<i64>().unwrap(), batch.labels);
    assert_eq!(mask.to_vec::<i64>().unwrap(), batch.mask);
}

/// Random lengths and tasks for `n` examples over `tasks` tasks.
fn random_examples(rng: &mut impl Rng, n: usize, tasks: usize) -> (Vec<usize>, Vec<usize>, Vec<String>) {
    let lengths = (0..n).map(|_| rng.gen_range(1..500)).collect();
    let task_of = (0..n).map(|i| if i < tasks { i } else { rng.gen_range(0..tasks) }).collect();
    (lengths, task_of, (0..tasks).map(|t| format!("task{t}")).collect())
}

fn sampler(lengths: &[usize], tasks: &[usize], names: &[String], config: SamplerConfig) -> BatchSampler {
    BatchSampler::new(lengths.to_vec(), tasks.to_vec(), names, config).unwrap()
}

#[test]
fn each_epoch_sees_every_example_once_in_a_seeded_order() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let (lengths, tasks, names) = random_examples(&mut rng, 237, 3);
    let config = SamplerConfig { batch_size: 8, seed: rng.gen(), group_factor: 4, ..SamplerConfig::default() };
    let mut a = sampler(&lengths, &tasks, &names, config.clone());
    let mut b = sampler(&lengths, &tasks, &names, config.clone());
    let mut other = sampler(&lengths, &tasks, &names, SamplerConfig { seed: config.seed ^ 1, ..config.clone() });
    assert_eq!(a.batches_per_epoch(), 237usize.div_ceil(8));
    let (mut first_epoch, mut differs) = (Vec::new(), false);
    for _ in 0..a.batches_per_epoch() {
        let (batch, twin, third) = (a.next_batch(), b.next_batch(), other.next_batch());
        assert_eq!(batch, twin);
        differs |= batch.examples != third.examples;
        assert_eq!(batch.epoch, 0);
        first_epoch.extend(batch.examples);
    }
    assert!(differs, "another seed gives another order");
    let mut sorted = first_epoch.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..237).collect::<Vec<_>>());
    let next = a.next_batch();
    assert_eq!((next.epoch, next.step), (1, 0));
    let second: Vec<usize> = std::iter::once(next.examples)
        .chain((1..a.batches_per_epoch()).map(|_| a.next_batch().examples))
        .flatten()
        .collect();
    assert_ne!(second, first_epoch, "each epoch is shuffled anew");
}

#[test]
fn grouping_by_length_batches_similar_lengths() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let (lengths, tasks, names) = random_examples(&mut rng, 400, 1);
    let padding = |group_by_length: bool| -> usize {
        let config =
            SamplerConfig { batch_size: 10, group_by_length, group_factor: 40, seed: 3, ..SamplerConfig::default() };
        let mut s = sampler(&lengths, &tasks, &names, config);
        (0..s.batches_per_epoch())
            .map(|_| {
                let b = s.next_batch().examples;
                let max = b.iter().map(|&i| lengths[i]).max().unwrap();
                b.iter().map(|&i| max - lengths[i]).sum::<usize>()
            })
            .sum()
    };
    // One mega-batch holds the whole epoch: every batch is a run of the sorted lengths.
    let (grouped, plain) = (padding(true), padding(false));
    let mut sorted = lengths.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let ideal: usize = sorted.chunks(10).map(|c| c.iter().map(|&l| c[0] - l).sum::<usize>()).sum();
    assert_eq!(grouped, ideal);
    assert!(grouped * 4 < plain, "grouped {grouped}, plain {plain}");
}

#[test]
fn task_weights_set_each_tasks_share_of_an_epoch() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let (lengths, tasks, names) = random_examples(&mut rng, 300, 3);
    let n: Vec<usize> = (0..3).map(|t| tasks.iter().filter(|&&x| x == t).count()).collect();
    let weights = vec![("task0".to_string(), 2.0), ("task1".to_string(), 0.5), ("task2".to_string(), 0.0)];
    let config = SamplerConfig { batch_size: 7, task_weights: weights, seed: rng.gen(), ..SamplerConfig::default() };
    let mut s = sampler(&lengths, &tasks, &names, config);
    let want = [2 * n[0], (0.5 * n[1] as f64).round() as usize, 0];
    assert_eq!(s.epoch_task_counts(), want);
    let mut seen = vec![0usize; 300];
    for _ in 0..s.batches_per_epoch() {
        for i in s.next_batch().examples {
            seen[i] += 1;
        }
    }
    for (i, &count) in seen.iter().enumerate() {
        let allowed: &[usize] = match tasks[i] {
            0 => &[2],
            1 => &[0, 1],
            _ => &[0],
        };
        assert!(allowed.contains(&count), "example {i} of task {} seen {count} times", tasks[i]);
    }
    for (name, weight) in [("task9", 1.0), ("task0", -1.0), ("task0", f64::NAN), ("task1", 1e300)] {
        let config = SamplerConfig { task_weights: vec![(name.into(), weight)], ..SamplerConfig::default() };
        let msg = BatchSampler::new(lengths.clone(), tasks.clone(), &names, config).unwrap_err().to_string();
        assert!(msg.contains(name), "{msg}");
    }
    let none =
        SamplerConfig { task_weights: names.iter().map(|t| (t.clone(), 0.0)).collect(), ..SamplerConfig::default() };
    assert!(BatchSampler::new(lengths, tasks, &names, none).is_err());
}

#[test]
fn a_restored_loader_continues_exactly_where_it_stopped() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let (lengths, tasks, names) = random_examples(&mut rng, 53, 2);
    let config = SamplerConfig { batch_size: 4, seed: rng.gen(), drop_last: true, ..SamplerConfig::default() };
    let mut straight = sampler(&lengths, &tasks, &names, config.clone());
    assert_eq!(straight.batches_per_epoch(), 13);
    let stop = rng.gen_range(1..40);
    let mut resumed = sampler(&lengths, &tasks, &names, config.clone());
    for _ in 0..stop {
        resumed.next_batch();
    }
    let saved = serde_json::to_string(&resumed.state()).unwrap();
    let mut restored = sampler(&lengths, &tasks, &names, config.clone());
    restored.restore(&serde_json::from_str::<LoaderState>(&saved).unwrap()).unwrap();
    for _ in 0..stop {
        straight.next_batch();
    }
    for _ in 0..30 {
        assert_eq!(restored.next_batch(), straight.next_batch(), "stopped after {stop} batches");
    }
    let state: LoaderState = serde_json::from_str(&saved).unwrap();
    let other_seed = LoaderState { seed: state.seed ^ 1, ..state.clone() };
    assert!(restored.restore(&other_seed).unwrap_err().to_string().contains("seed"));
    let other_batch = sampler(&lengths, &tasks, &names, SamplerConfig { batch_size: 5, ..config.clone() }).state();
    assert!(restored.restore(&LoaderState { fingerprint: other_batch.fingerprint, ..state.clone() }).is_err());
    let mut longer = lengths.clone();
    longer[0] += 1;
    let other_data = sampler(&longer, &tasks, &names, config.clone()).state();
    let msg = restored.restore(&LoaderState { fingerprint: other_data.fingerprint, ..state.clone() }).unwrap_err();
    assert!(msg.to_string().contains("fingerprint"), "{msg}");
    let past_end = LoaderState { batches_done: 14, ..state };
    assert!(restored.restore(&past_end).unwrap_err().to_string().contains("14"));
}

#[test]
fn bad_pairs_are_reported_by_line() {
    let source = [DataSource::new(fixture("train/bad_pairs.jsonl"))];
    let (data, report) = PairDataset::load_pairs(&source, &tokenizer(LabelMask::LlavaNext), &options()).unwrap();
    assert_eq!(data.examples.iter().map(|e| e.line).collect::<Vec<_>>(), [5]);
    let problems: Vec<(usize, String)> = report.bad.iter().map(|b| (b.line, b.problem.to_string())).collect();
    let want = [
        (1, "no `rejected` field"),
        (2, "0 `<image>` placeholder(s) in the text for 1 media item(s)"),
        (3, "`rejected` is a number instead of a string"),
        (4, "`video` lists a non-string item"),
        (6, "no-such-video.mp4 does not exist"),
    ];
    assert_eq!(problems.len(), want.len());
    for ((line, got), (want_line, needle)) in problems.iter().zip(want) {
        assert_eq!(*line, want_line);
        assert!(got.contains(needle), "line {line}: {got}");
    }
}

#[test]
fn a_record_the_template_refuses_is_a_bad_record() {
    // Qwen2's template, refusing roles other than system, user and assistant.
    let template = "{% for m in messages %}{% if m.role not in ['system', 'user', 'assistant'] %}\
        {{ raise_exception('unknown role ' + m.role) }}{% endif %}\
        {{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{% endfor %}\
        {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    let tok = ConversationTokenizer::new(
        unireward::judge::Tokenizer::from_file(&fixture("train/tokenizer")).unwrap(),
        unireward::judge::ChatTemplate::jinja(template).unwrap(),
    )
    .unwrap();
    let path = std::env::temp_dir().join(format!("unireward-robot-{}.jsonl", std::process::id()));
    let robot = r#"{"conversations": [{"from": "human", "value": "Q"}, {"from": "robot", "value": "beep"}, {"from": "gpt", "value": "A"}]}"#;
    let fine = r#"{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}"#;
    std::fs::write(&path, format!("{robot}\n{fine}\n")).unwrap();
    let (data, report) = SftDataset::load_conversations(&[DataSource::new(&path)], &tok, &options()).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(data.examples.len(), 1);
    assert_eq!(report.bad.len(), 1);
    assert_eq!(report.bad[0].line, 1);
    assert!(report.bad[0].problem.to_string().contains("unknown role robot"), "{}", report.bad[0]);
}
