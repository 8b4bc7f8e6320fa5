//! Loading data files into tokenized examples: every line read, checked and tokenized, bad ones reported (or
//! refused) with their file, line and reason, the rest kept under their task.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::media::MediaLoader;
use super::problems::{BadRecord, BadRecordPolicy, DataReport, Problem};
use super::record::{self, match_placeholders, MediaRef};
use super::tokenize::{ConversationTokenizer, PromptTokens, IGNORE_INDEX};
use crate::model::files::open_regular;
use crate::{Error, Result};

/// The longest line read (a record's text; media are separate files).
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// A data file and the task its records belong to when they name none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSource {
    pub path: PathBuf,
    /// The task of records without a task field; `None`: the file's name without its extension.
    pub task: Option<String>,
}

impl DataSource {
    pub fn new(path: impl Into<PathBuf>) -> DataSource {
        DataSource { path: path.into(), task: None }
    }

    fn default_task(&self) -> String {
        self.task.clone().unwrap_or_else(|| {
            self.path.file_stem().map_or_else(|| "data".into(), |s| s.to_string_lossy().into_owned())
        })
    }
}

/// How records are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataOptions {
    /// The folder media paths are relative to (LLaVA's `image_folder`).
    pub media_folder: PathBuf,
    /// The most tokens a record may have (for a pair: the prompt and the longer completion), a placeholder counted
    /// as the placeholder ids it expands to when the media are loaded ([`MediaLoader`]), else as one token.
    pub max_len: usize,
    pub bad_records: BadRecordPolicy,
    /// The record field naming its task.
    pub task_field: String,
}

impl DataOptions {
    /// These options for a model that takes at most `positions` tokens: a longer record is a bad record (counted and
    /// reported with its line, skipped or refused as `bad_records` says), not an error in the middle of a run.
    pub fn within(self, positions: usize) -> DataOptions {
        DataOptions { max_len: self.max_len.min(positions), ..self }
    }
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            media_folder: PathBuf::from("."),
            max_len: 2048,
            bad_records: BadRecordPolicy::Skip,
            task_field: "task".into(),
        }
    }
}

/// A conversation, tokenized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SftExample {
    /// Index into the dataset's `tasks`.
    pub task: usize,
    /// Index into the sources the dataset was loaded from, and the 1-based line there.
    pub source: usize,
    pub line: usize,
    /// Token ids, and the model's placeholder ids where its media go (outside the vocabulary for `llava_qwen`).
    pub ids: Vec<i64>,
    /// Aligned with `ids`: the id where the loss learns it, [`IGNORE_INDEX`](super::IGNORE_INDEX) elsewhere.
    pub labels: Vec<i64>,
    pub media: Vec<MediaRef>,
}

/// A preference pair, tokenized: the prompt (through the assistant header, with the model's placeholder ids where
/// its media go) and each completion.
#[derive(Clone, Debug, PartialEq)]
pub struct PairExample {
    pub task: usize,
    pub source: usize,
    pub line: usize,
    pub prompt: Vec<i64>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    /// The record's optional `margin` (TRL's reward-trainer column; the DPO trainer ignores it).
    pub margin: Option<f32>,
    pub media: Vec<MediaRef>,
}

/// A ranked list, tokenized: the prompt (through the assistant header) and K ≥ 2 responses, best first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankingExample {
    pub task: usize,
    pub source: usize,
    pub line: usize,
    /// As a [`PairExample`]'s.
    pub prompt: Vec<i64>,
    pub responses: Vec<Vec<u32>>,
    pub media: Vec<MediaRef>,
}

impl RankingExample {
    /// Tokens of the longest of its sequences.
    pub fn len(&self) -> usize {
        self.prompt.len() + self.responses.iter().map(Vec::len).max().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<PairExample> for RankingExample {
    /// A pair as the ranking (chosen, rejected).
    fn from(e: PairExample) -> RankingExample {
        let PairExample { task, source, line, prompt, chosen, rejected, media, .. } = e;
        RankingExample { task, source, line, prompt, responses: vec![chosen, rejected], media }
    }
}

impl PairExample {
    /// Tokens of the longer of the two sequences.
    pub fn len(&self) -> usize {
        self.prompt.len() + self.chosen.len().max(self.rejected.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Examples with the names of their tasks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dataset<E> {
    /// Task names, in order of first appearance.
    pub tasks: Vec<String>,
    pub examples: Vec<E>,
}

/// Conversations for supervised fine-tuning.
pub type SftDataset = Dataset<SftExample>;
/// Preference pairs for DPO.
pub type PairDataset = Dataset<PairExample>;
/// Ranked lists for a K-wise reward model.
pub type RankingDataset = Dataset<RankingExample>;

/// Where a line comes from: the source's index and the 1-based line number.
#[derive(Clone, Copy)]
struct Origin {
    source: usize,
    line: usize,
}

/// What one line turned into: an example, its task's name if the record gives one, and its length.
struct Parsed<E> {
    task: Option<String>,
    tokens: usize,
    example: E,
}

/// An example whose task index the loader sets once the task is known.
trait Tasked {
    fn set_task(&mut self, task: usize);
}

impl Tasked for SftExample {
    fn set_task(&mut self, task: usize) {
        self.task = task;
    }
}

impl Tasked for PairExample {
    fn set_task(&mut self, task: usize) {
        self.task = task;
    }
}

impl Tasked for RankingExample {
    fn set_task(&mut self, task: usize) {
        self.task = task;
    }
}

impl<E> Dataset<E> {
    fn task_index(&mut self, name: String, report: &mut DataReport) -> usize {
        match self.tasks.iter().position(|t| *t == name) {
            Some(i) => i,
            None => {
                self.tasks.push(name);
                report.kept_per_task.push(0);
                self.tasks.len() - 1
            }
        }
    }

    /// Reads every source line by line; `parse` gives each line's example or its problem (or a hard error).
    fn load(
        sources: &[DataSource],
        options: &DataOptions,
        mut parse: impl FnMut(&str, Origin) -> Result<std::result::Result<Parsed<E>, Problem>>,
    ) -> Result<(Dataset<E>, DataReport)>
    where
        E: Tasked,
    {
        if options.max_len == 0 {
            return Err(Error::InvalidArgument("max_len must be at least 1".into()));
        }
        let (mut data, mut report) = (Dataset { tasks: Vec::new(), examples: Vec::new() }, DataReport::default());
        for (source_index, source) in sources.iter().enumerate() {
            let mut reader = BufReader::new(open_regular(&source.path)?);
            let mut line_no = 0;
            while let Some(line) = read_line(&mut reader, &source.path, MAX_LINE_BYTES)? {
                line_no += 1;
                let parsed = match line {
                    Ok(text) if text.trim().is_empty() => continue,
                    Ok(text) => parse(&text, Origin { source: source_index, line: line_no })?,
                    Err(problem) => Err(problem),
                };
                report.records += 1;
                if let Err(problem) = data.admit(parsed, || source.default_task(), options, &mut report) {
                    let bad = BadRecord { file: source.path.clone(), line: line_no, problem };
                    report.record_bad(options.bad_records, bad)?;
                }
            }
        }
        Ok((data, report))
    }

    /// Keeps a parsed line under its task (`default_task` when the record names none), unless it is bad or longer
    /// than `options.max_len`.
    fn admit(
        &mut self,
        parsed: std::result::Result<Parsed<E>, Problem>,
        default_task: impl FnOnce() -> String,
        options: &DataOptions,
        report: &mut DataReport,
    ) -> std::result::Result<(), Problem>
    where
        E: Tasked,
    {
        let mut p = parsed?;
        if p.tokens > options.max_len {
            return Err(Problem::TooLong { tokens: p.tokens, max: options.max_len });
        }
        let task = self.task_index(p.task.unwrap_or_else(default_task), report);
        report.kept_per_task[task] += 1;
        p.example.set_task(task);
        self.examples.push(p.example);
        Ok(())
    }

    /// [`Dataset::load`] over records held in memory (one JSON object each, as a line of a data file), every bad
    /// one refused with an error naming it as `what[i]`; records naming no task belong to `default_task`.
    fn from_records(
        records: &[&str],
        what: &str,
        default_task: &str,
        options: &DataOptions,
        mut parse: impl FnMut(&str, Origin) -> Result<std::result::Result<Parsed<E>, Problem>>,
    ) -> Result<Dataset<E>>
    where
        E: Tasked,
    {
        if options.max_len == 0 {
            return Err(Error::InvalidArgument("max_len must be at least 1".into()));
        }
        let (mut data, mut report) = (Dataset { tasks: Vec::new(), examples: Vec::new() }, DataReport::default());
        for (i, record) in records.iter().enumerate() {
            let parsed = parse(record, Origin { source: 0, line: i + 1 })?;
            data.admit(parsed, || default_task.to_string(), options, &mut report)
                .map_err(|problem| Error::InvalidArgument(format!("`{what}[{i}]`: {problem}")))?;
        }
        Ok(data)
    }
}

impl SftDataset {
    /// Reads conversation files (LLaVA's format), tokenized by `tokenizer`, placeholders left as one token each.
    pub fn load_conversations(
        sources: &[DataSource],
        tokenizer: &ConversationTokenizer,
        options: &DataOptions,
    ) -> Result<(SftDataset, DataReport)> {
        SftDataset::load_conversations_with_media(sources, tokenizer, options, None)
    }

    /// [`SftDataset::load_conversations`] for a multimodal model: with `media`, every record's media are decoded
    /// and preprocessed, and each `<image>` / `<video>` token is expanded to the model's placeholder ids, one per
    /// packed feature row ([`MediaLoader`]); a file that cannot be read is a bad record.
    pub fn load_conversations_with_media(
        sources: &[DataSource],
        tokenizer: &ConversationTokenizer,
        options: &DataOptions,
        media: Option<&MediaLoader>,
    ) -> Result<(SftDataset, DataReport)> {
        Dataset::load(sources, options, |line, origin| conversation_example(line, origin, tokenizer, options, media))
    }

    /// Conversation records held in memory (LLaVA's format, one JSON object each), tokenized and expanded as
    /// [`SftDataset::load_conversations_with_media`] does a file's lines; a bad record is an error naming it as
    /// `what[i]` (its index), a record naming no task is of task `default_task`. Each example's `line` is its
    /// 1-based index.
    pub fn from_conversation_records(
        records: &[&str],
        what: &str,
        default_task: &str,
        tokenizer: &ConversationTokenizer,
        options: &DataOptions,
        media: Option<&MediaLoader>,
    ) -> Result<SftDataset> {
        Dataset::from_records(records, what, default_task, options, |line, origin| {
            conversation_example(line, origin, tokenizer, options, media)
        })
    }
}

/// One conversation line tokenized (its media expanded with `media`), or what is wrong with it.
fn conversation_example(
    line: &str,
    origin: Origin,
    tokenizer: &ConversationTokenizer,
    options: &DataOptions,
    media: Option<&MediaLoader>,
) -> Result<std::result::Result<Parsed<SftExample>, Problem>> {
    let markers = tokenizer.placeholder_ids();
    let mut record = match record::conversation(line, &options.media_folder, &options.task_field) {
        Ok(record) => record,
        Err(problem) => return Ok(Err(problem)),
    };
    let mut texts: Vec<&mut String> = record.turns.iter_mut().map(|t| &mut t.content).collect();
    if let Err(problem) = match_placeholders(&mut texts, &record.media) {
        return Ok(Err(problem));
    }
    let labelled = match tokenizer.conversation(&record.turns)? {
        Ok(labelled) => labelled,
        Err(problem) => return Ok(Err(problem)),
    };
    let (ids, labels) = match media.filter(|_| !record.media.is_empty()) {
        Some(loader) => match loader.expand(&labelled.ids, &labelled.labels, &record.media, markers)? {
            Ok(expanded) => expanded,
            Err(problem) => return Ok(Err(problem)),
        },
        None => (labelled.ids, labelled.labels),
    };
    Ok(Ok(Parsed {
        task: record.task,
        tokens: ids.len(),
        example: SftExample { task: 0, source: origin.source, line: origin.line, ids, labels, media: record.media },
    }))
}

impl PairDataset {
    /// Reads preference-pair files (`prompt`, `chosen`, `rejected`, optional media), tokenized by `tokenizer`,
    /// placeholders left as one token each.
    pub fn load_pairs(
        sources: &[DataSource],
        tokenizer: &ConversationTokenizer,
        options: &DataOptions,
    ) -> Result<(PairDataset, DataReport)> {
        PairDataset::load_pairs_with_media(sources, tokenizer, options, None)
    }

    /// [`PairDataset::load_pairs`] for a multimodal model: with `media`, the prompt's placeholders are expanded as
    /// [`SftDataset::load_conversations_with_media`] expands a conversation's.
    pub fn load_pairs_with_media(
        sources: &[DataSource],
        tokenizer: &ConversationTokenizer,
        options: &DataOptions,
        media: Option<&MediaLoader>,
    ) -> Result<(PairDataset, DataReport)> {
        Dataset::load(sources, options, |line, origin| pair_example(line, origin, tokenizer, options, media))
    }

    /// Preference-pair records held in memory (one JSON object each), tokenized and expanded as
    /// [`PairDataset::load_pairs_with_media`] does a file's lines; a bad record is an error naming it as `what[i]`,
    /// a record naming no task is of task `default_task`.
    pub fn from_pair_records(
        records: &[&str],
        what: &str,
        default_task: &str,
        tokenizer: &ConversationTokenizer,
        options: &DataOptions,
        media: Option<&MediaLoader>,
    ) -> Result<PairDataset> {
        Dataset::from_records(records, what, default_task, options, |line, origin| {
            pair_example(line, origin, tokenizer, options, media)
        })
    }
}

/// One preference-pair line tokenized (its prompt's media expanded with `media`), or what is wrong with it.
fn pair_example(
    line: &str,
    origin: Origin,
    tokenizer: &ConversationTokenizer,
    options: &DataOptions,
    media: Option<&MediaLoader>,
) -> Result<std::result::Result<Parsed<PairExample>, Problem>> {
    let mut record = match record::pair(line, &options.media_folder, &options.task_field) {
        Ok(record) => record,
        Err(problem) => return Ok(Err(problem)),
    };
    let (chosen, rejected) = (record.chosen.as_str(), record.rejected.as_str());
    let PromptTokens { prompt, completions } =
        match prompt_and_completions(&mut record.prompt, &record.media, &[chosen, rejected], tokenizer, media)? {
            Ok(tokens) => tokens,
            Err(problem) => return Ok(Err(problem)),
        };
    let [chosen, rejected] = <[Vec<u32>; 2]>::try_from(completions).expect("two completions were encoded");
    let example = PairExample {
        task: 0,
        source: origin.source,
        line: origin.line,
        prompt,
        chosen,
        rejected,
        margin: record.margin,
        media: record.media,
    };
    Ok(Ok(Parsed { task: record.task, tokens: example.len(), example }))
}

/// A record's `prompt` (its placeholders matched to its `media` first) and `completions` tokenized, the prompt's
/// placeholders expanded with `loader` (a multimodal model); what is wrong with them as a [`Problem`].
fn prompt_and_completions(
    prompt: &mut String,
    media: &[MediaRef],
    completions: &[&str],
    tokenizer: &ConversationTokenizer,
    loader: Option<&MediaLoader>,
) -> Result<std::result::Result<PromptTokens, Problem>> {
    if let Err(problem) = match_placeholders(&mut [prompt], media) {
        return Ok(Err(problem));
    }
    let mut tokens = match tokenizer.prompt_and_completions(prompt, completions)? {
        Ok(tokens) => tokens,
        Err(problem) => return Ok(Err(problem)),
    };
    Ok(expand_prompt(&mut tokens.prompt, media, tokenizer, loader)?.map(|()| tokens))
}

/// Expands the placeholders of a tokenized `prompt` into its `media`'s placeholder ids when `loader` is given (a
/// multimodal model) and there are media; what is wrong with the media (missing, unreadable) as a [`Problem`].
fn expand_prompt(
    prompt: &mut Vec<i64>,
    media: &[MediaRef],
    tokenizer: &ConversationTokenizer,
    loader: Option<&MediaLoader>,
) -> Result<std::result::Result<(), Problem>> {
    let Some(loader) = loader.filter(|_| !media.is_empty()) else {
        return Ok(Ok(()));
    };
    let unlabelled = vec![IGNORE_INDEX; prompt.len()];
    Ok(loader.expand(prompt, &unlabelled, media, tokenizer.placeholder_ids())?.map(|(ids, _)| *prompt = ids))
}

impl RankingDataset {
    /// Reads ranked-list files (`prompt`, `responses` best first, optional media), tokenized by `tokenizer`,
    /// placeholders left as one token each.
    pub fn load_rankings(
        sources: &[DataSource],
        tokenizer: &ConversationTokenizer,
        options: &DataOptions,
    ) -> Result<(RankingDataset, DataReport)> {
        RankingDataset::load_rankings_with_media(sources, tokenizer, options, None)
    }

    /// [`RankingDataset::load_rankings`] for a multimodal model: with `media`, the prompt's placeholders are
    /// expanded as [`PairDataset::load_pairs_with_media`] expands a pair's (every response shares its prompt's
    /// media).
    pub fn load_rankings_with_media(
        sources: &[DataSource],
        tokenizer: &ConversationTokenizer,
        options: &DataOptions,
        media: Option<&MediaLoader>,
    ) -> Result<(RankingDataset, DataReport)> {
        Dataset::load(sources, options, |line, origin| ranking_example(line, origin, tokenizer, options, media))
    }

    /// Ranked-list records held in memory (one JSON object each), tokenized and expanded as
    /// [`RankingDataset::load_rankings_with_media`] does a file's lines; a bad record is an error naming it as
    /// `what[i]`, a record naming no task is of task `default_task`.
    pub fn from_ranking_records(
        records: &[&str],
        what: &str,
        default_task: &str,
        tokenizer: &ConversationTokenizer,
        options: &DataOptions,
        media: Option<&MediaLoader>,
    ) -> Result<RankingDataset> {
        Dataset::from_records(records, what, default_task, options, |line, origin| {
            ranking_example(line, origin, tokenizer, options, media)
        })
    }
}

/// One ranked-list line tokenized (its prompt's media expanded with `media`), or what is wrong with it.
fn ranking_example(
    line: &str,
    origin: Origin,
    tokenizer: &ConversationTokenizer,
    options: &DataOptions,
    media: Option<&MediaLoader>,
) -> Result<std::result::Result<Parsed<RankingExample>, Problem>> {
    let mut record = match record::ranking(line, &options.media_folder, &options.task_field) {
        Ok(record) => record,
        Err(problem) => return Ok(Err(problem)),
    };
    let responses: Vec<&str> = record.responses.iter().map(String::as_str).collect();
    let PromptTokens { prompt, completions } =
        match prompt_and_completions(&mut record.prompt, &record.media, &responses, tokenizer, media)? {
            Ok(tokens) => tokens,
            Err(problem) => return Ok(Err(problem)),
        };
    let example = RankingExample {
        task: 0,
        source: origin.source,
        line: origin.line,
        prompt,
        responses: completions,
        media: record.media,
    };
    Ok(Ok(Parsed { task: record.task, tokens: example.len(), example }))
}

/// The next line of `reader` (without its line ending): `None` at the end, a [`Problem`] for a line longer than
/// `max_bytes` or not UTF-8 (the rest of it skipped), an error when the file cannot be read.
fn read_line(
    reader: &mut impl BufRead,
    path: &Path,
    max_bytes: usize,
) -> Result<Option<std::result::Result<String, Problem>>> {
    let io = |e: std::io::Error| Error::InvalidArgument(format!("cannot read {}: {e}", path.display()));
    let mut bytes = Vec::new();
    let read = reader.by_ref().take(max_bytes as u64 + 1).read_until(b'\n', &mut bytes).map_err(io)?;
    if read == 0 {
        return Ok(None);
    }
    if bytes.len() > max_bytes && bytes.last() != Some(&b'\n') {
        skip_line(reader).map_err(io)?;
        return Ok(Some(Err(Problem::Unparsable(format!("line longer than {max_bytes} bytes")))));
    }
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(Some(String::from_utf8(bytes).map_err(|_| Problem::Unparsable("not UTF-8 text".into()))))
}

/// Discards input through the next newline without holding it.
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(end) => {
                reader.consume(end + 1);
                return Ok(());
            }
            None => {
                let len = buf.len();
                reader.consume(len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_and_non_utf8_lines_are_problems_and_the_next_line_is_read() {
        let text = b"short\r\n0123456789abcdef\n\xff\xfe\nlast";
        let mut reader = BufReader::with_capacity(4, &text[..]);
        let path = Path::new("mem.jsonl");
        let mut lines = Vec::new();
        while let Some(line) = read_line(&mut reader, path, 8).unwrap() {
            lines.push(line);
        }
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], Ok("short".to_string()));
        assert_eq!(lines[1], Err(Problem::Unparsable("line longer than 8 bytes".into())));
        assert_eq!(lines[2], Err(Problem::Unparsable("not UTF-8 text".into())));
        assert_eq!(lines[3], Ok("last".to_string()));
    }
}
