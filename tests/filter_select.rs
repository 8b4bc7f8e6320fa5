//! The filter's selection on a scripted judge (answer texts read by the templates' grammars, with ties,
//! unparsable answers and "10" against "9", on all four tasks): for every strategy, the pairs written equal a plain reimplementation
//! of the strategy's rule; understanding pairs load as training pairs; generation pairs read back.

mod filter_scripted;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use filter_scripted::{random_prompt, write_candidates, PairTruth, Scratch, ScriptedJudgments, ScriptedPrompt};
use rand::{Rng, SeedableRng};
use unireward::judge::Task;
use unireward::pipeline::filter::{
    read_candidates, run_filter, FilterOptions, FilterOutcome, GenerationPair, InvalidPolicy, Shard, Strategy,
};

/// Runs the filter over `prompts` with `strategy`, returning the pairs as (prompt index, chosen, rejected).
fn filter(
    scratch: &Scratch,
    prompts: &[ScriptedPrompt],
    strategy: Strategy,
) -> (Vec<(usize, usize, usize)>, FilterOutcome) {
    let name = strategy.name().replace('+', "_");
    let candidates = write_candidates(prompts, &scratch.0, &format!("{name}.candidates.jsonl"));
    let file = read_candidates(&candidates, &scratch.0).unwrap();
    assert!(file.invalid.is_empty(), "{:?}", file.invalid);
    let options = FilterOptions {
        strategy,
        shard: Shard::ALL,
        resume: false,
        invalid: InvalidPolicy::Refuse,
        pairs: scratch.path(&format!("{name}.pairs.jsonl")),
        audit: scratch.path(&format!("{name}.audit.jsonl")),
        judge: "scripted".into(),
    };
    let outcome =
        run_filter(&file, &ScriptedJudgments::new(prompts), &options, &AtomicBool::new(false), |_, _, _| {}).unwrap();
    let text = std::fs::read_to_string(&options.pairs).unwrap();
    let pairs = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let n = |k: &str| v[k].as_u64().unwrap() as usize;
            (n("index"), n("chosen_index"), n("rejected_index"))
        })
        .collect();
    (pairs, outcome)
}

fn adjacent(k: usize) -> Vec<(usize, usize)> {
    (0..k / 2).map(|p| (2 * p, 2 * p + 1)).collect()
}

fn all_pairs(k: usize) -> Vec<(usize, usize)> {
    (0..k).flat_map(|a| (a + 1..k).map(move |b| (a, b))).collect()
}

/// Index of the best value under `better`, the lowest index among equals.
fn pick(candidates: impl Iterator<Item = (usize, i64)>, better: impl Fn(i64, i64) -> bool) -> Option<(usize, i64)> {
    candidates.fold(None, |best, (c, s)| match best {
        Some((_, b)) if !better(s, b) => best,
        _ => Some((c, s)),
    })
}

/// Winners and losers of `pairs`: (winner, loser) for each decided pair.
fn decided(p: &ScriptedPrompt, pairs: &[(usize, usize)]) -> Vec<(usize, usize)> {
    pairs
        .iter()
        .filter_map(|&(a, b)| match p.margin(a, b) {
            Some(m) if m > 0.0 => Some((a, b)),
            Some(m) if m < 0.0 => Some((b, a)),
            _ => None,
        })
        .collect()
}

/// UnifiedReward's rule, written plainly.
fn pair_rank_point_sift(p: &ScriptedPrompt) -> Vec<(usize, usize)> {
    let results = decided(p, &adjacent(p.k));
    let scored = |c: usize| p.scores[c].map(|s| (c, s));
    let chosen = pick(results.iter().filter_map(|&(w, _)| scored(w)), |a, b| a > b);
    let rejected = pick(results.iter().filter_map(|&(_, l)| scored(l)), |a, b| a < b);
    match (chosen, rejected) {
        (Some((c, cs)), Some((r, rs))) if cs > rs => vec![(c, r)],
        _ => vec![],
    }
}

fn point_sift(p: &ScriptedPrompt) -> Vec<(usize, usize)> {
    let scored = || (0..p.k).filter_map(|c| p.scores[c].map(|s| (c, s)));
    match (pick(scored(), |a, b| a > b), pick(scored(), |a, b| a < b)) {
        (Some((c, cs)), Some((r, rs))) if cs > rs => vec![(c, r)],
        _ => vec![],
    }
}

/// Bradley–Terry log-strengths by plain gradient ascent on Σ σ(m)·log σ(θa − θb) − ½·0.01·Σθ² (void pairs out).
fn strengths(p: &ScriptedPrompt) -> Vec<f64> {
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let mut theta = vec![0.0f64; p.k];
    for _ in 0..20000 {
        let mut grad: Vec<f64> = theta.iter().map(|t| -0.01 * t).collect();
        for (a, b) in all_pairs(p.k) {
            let Some(m) = p.margin(a, b) else { continue };
            let won = sigmoid(f64::from(m));
            // d/dθa of won·log σ(θa−θb) + (1−won)·log σ(θb−θa)
            let g = won - sigmoid(theta[a] - theta[b]);
            grad[a] += g;
            grad[b] -= g;
        }
        theta.iter_mut().zip(&grad).for_each(|(t, g)| *t += 0.05 * g);
    }
    theta
}

/// Candidates within `tol` of the extreme of `values` among `among` (max when `highest`).
fn near_extreme(values: &[f64], among: &[usize], highest: bool, tol: f64) -> Vec<usize> {
    let sign = if highest { 1.0 } else { -1.0 };
    let best = among.iter().map(|&c| sign * values[c]).fold(f64::NEG_INFINITY, f64::max);
    among.iter().copied().filter(|&c| sign * values[c] >= best - tol).collect()
}

#[test]
fn every_strategy_selects_as_its_rule_says() {
    let seed = rand::thread_rng().gen::<u64>();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut prompts: Vec<ScriptedPrompt> =
        (0..80).map(|i| random_prompt(&mut rng, format!("p{i}"), Task::ALL[i % 4])).collect();
    // "9" chosen against "10" rejected: no pair (numbers, not strings); "10" chosen against "9": a pair.
    for (id, first, second) in [("nine_ten", 9, 10), ("ten_nine", 10, 9)] {
        let mut p = random_prompt(&mut rng, id.into(), Task::ImageUnderstanding);
        p.k = 2;
        p.pairs = [((0, 1), PairTruth::First(1.0))].into();
        p.scores = vec![Some(first), Some(second)];
        prompts.push(p);
    }
    let scratch = Scratch::new("select");
    for strategy in Strategy::ALL {
        let (got, outcome) = filter(&scratch, &prompts, strategy);
        assert_eq!(outcome.summary.prompts, prompts.len());
        assert_eq!(outcome.summary.pairs, got.len());
        let mut at = 0;
        for (index, p) in prompts.iter().enumerate() {
            let mine: Vec<(usize, usize)> = got.iter().filter(|g| g.0 == index).map(|g| (g.1, g.2)).collect();
            at += mine.len();
            let context = format!("{strategy} prompt {index} {p:?}: got {mine:?}");
            match strategy {
                Strategy::PairRankPointSift => assert_eq!(mine, pair_rank_point_sift(p), "{context}"),
                Strategy::PairRank => assert_eq!(mine, decided(p, &adjacent(p.k)), "{context}"),
                Strategy::PointSift => assert_eq!(mine, point_sift(p), "{context}"),
                Strategy::RoundRobin => {
                    let mut copeland = vec![0i64; p.k];
                    for (w, l) in decided(p, &all_pairs(p.k)) {
                        copeland[w] += 1;
                        copeland[l] -= 1;
                    }
                    let (max, min) = (*copeland.iter().max().unwrap(), *copeland.iter().min().unwrap());
                    if max == min {
                        assert!(mine.is_empty(), "{context}");
                        continue;
                    }
                    let theta = strengths(p);
                    let tops: Vec<usize> = (0..p.k).filter(|&c| copeland[c] == max).collect();
                    let bottoms: Vec<usize> = (0..p.k).filter(|&c| copeland[c] == min).collect();
                    assert_eq!(mine.len(), 1, "{context}");
                    assert!(near_extreme(&theta, &tops, true, 1e-3).contains(&mine[0].0), "{context}");
                    assert!(near_extreme(&theta, &bottoms, false, 1e-3).contains(&mine[0].1), "{context}");
                }
                Strategy::BradleyTerry => {
                    let theta = strengths(p);
                    let everyone: Vec<usize> = (0..p.k).collect();
                    let spread = theta.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
                        - theta.iter().cloned().fold(f64::INFINITY, f64::min);
                    if spread < 1e-6 {
                        assert!(mine.is_empty(), "{context}");
                        continue;
                    }
                    assert_eq!(mine.len(), 1, "{context}");
                    assert!(near_extreme(&theta, &everyone, true, 1e-3).contains(&mine[0].0), "{context}");
                    assert!(near_extreme(&theta, &everyone, false, 1e-3).contains(&mine[0].1), "{context}");
                }
            }
        }
        assert_eq!(at, got.len());
        if strategy == Strategy::PairRankPointSift {
            let n = prompts.len();
            assert!(!got.iter().any(|g| g.0 == n - 2), "9 against 10 kept");
            assert!(got.contains(&(n - 1, 0, 1)), "10 against 9 dropped");
        }
    }
}

#[test]
fn counts_ties_and_unparsable_answers_and_writes_every_judgment_to_the_audit() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::thread_rng().gen());
    let prompts: Vec<ScriptedPrompt> =
        (0..20).map(|i| random_prompt(&mut rng, format!("a{i}"), Task::ImageGeneration)).collect();
    let scratch = Scratch::new("audit");
    let (_, outcome) = filter(&scratch, &prompts, Strategy::PairRankPointSift);
    let (mut ties, mut unparsable, mut lines) = (0, 0, 0);
    for p in &prompts {
        for pair in adjacent(p.k) {
            ties += usize::from(p.pairs[&pair] == PairTruth::Tie);
            unparsable += usize::from(p.pairs[&pair] == PairTruth::Garbage);
        }
        unparsable += p.scores.iter().filter(|s| s.is_none()).count();
        lines += p.k / 2 + p.k;
    }
    assert_eq!((outcome.summary.ties, outcome.summary.unparsable), (ties, unparsable));
    let audit = std::fs::read_to_string(scratch.path("pair-rank_point-sift.audit.jsonl")).unwrap();
    assert_eq!(audit.lines().count(), lines);
    let first: serde_json::Value = serde_json::from_str(audit.lines().next().unwrap()).unwrap();
    assert_eq!(first["mode"], "pairwise");
    assert_eq!(first["candidates"], serde_json::json!([0, 1]));
}

/// The training fixtures' tokenizer (Qwen2's with `<image>` and `<video>`) as a conversation tokenizer.
fn conversation_tokenizer() -> unireward::train::data::ConversationTokenizer {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train/tokenizer");
    unireward::train::data::ConversationTokenizer::from_checkpoint_dir(&dir).unwrap()
}

#[test]
fn understanding_pairs_load_as_training_pairs_and_generation_pairs_read_back() {
    use unireward::train::data::{BadRecordPolicy, DataOptions, DataSource, MediaKind, PairDataset};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let scratch = Scratch::new("formats");
    let understanding: Vec<ScriptedPrompt> = (0..12)
        .map(|i| random_prompt(&mut rng, format!("u{i}"), [Task::ImageUnderstanding, Task::VideoUnderstanding][i % 2]))
        .collect();
    let (got, _) = filter(&scratch, &understanding, Strategy::PairRank);
    assert!(!got.is_empty());
    let options =
        DataOptions { media_folder: scratch.0.clone(), bad_records: BadRecordPolicy::Refuse, ..DataOptions::default() };
    let source = DataSource::new(scratch.path("pair-rank.pairs.jsonl"));
    let (data, report) = PairDataset::load_pairs(&[source], &conversation_tokenizer(), &options).unwrap();
    assert_eq!(data.examples.len(), got.len(), "{report:?}");
    for (example, (index, _, _)) in data.examples.iter().zip(&got) {
        let kind = if index % 2 == 0 { MediaKind::Image } else { MediaKind::Video };
        assert_eq!(example.media.len(), 1);
        assert_eq!(example.media[0].kind, kind);
        assert_eq!(example.media[0].path, scratch.path(&format!("u{index}.png")));
    }

    let generation: Vec<ScriptedPrompt> = (0..12)
        .map(|i| random_prompt(&mut rng, format!("g{i}"), [Task::ImageGeneration, Task::VideoGeneration][i % 2]))
        .collect();
    let (got, _) = filter(&scratch, &generation, Strategy::PointSift);
    let text = std::fs::read_to_string(scratch.path("point-sift.pairs.jsonl")).unwrap();
    let read: Vec<GenerationPair> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(read.len(), got.len());
    for (pair, (index, chosen, rejected)) in read.iter().zip(&got) {
        assert_eq!(pair.index, *index);
        let (chosen, rejected) = (format!("{}_{chosen}.png", pair.id), format!("{}_{rejected}.png", pair.id));
        let (c, r) = if index % 2 == 0 {
            (&pair.chosen_image, &pair.rejected_image)
        } else {
            (&pair.chosen_video, &pair.rejected_video)
        };
        let (other_c, other_r) = if index % 2 == 0 {
            (&pair.chosen_video, &pair.rejected_video)
        } else {
            (&pair.chosen_image, &pair.rejected_image)
        };
        assert_eq!((c.as_deref(), r.as_deref()), (Some(chosen.as_str()), Some(rejected.as_str())));
        assert!(other_c.is_none() && other_r.is_none());
        assert!(pair.chosen_score.unwrap() > pair.rejected_score.unwrap());
        assert_eq!(pair.caption, format!("caption of {}", pair.id));
    }
}
