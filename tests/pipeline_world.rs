//! The demo world: every fact its language states is read back from the pixels by a plain image analysis
//! (connected regions of one colour, their shape from how much of their bounding box they fill, a moving region's
//! centroid), on random scenes of awkward sizes; the same seed gives the same pixels.

use std::collections::BTreeMap;
use std::path::Path;

use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use unireward::pipeline::world::{
    caption, corrupt, question, render, render_frames, template_words, Colour, Direction, Motion, Rationale, Scene,
    ShapeKind, FRAMES,
};

/// The (colour, kind) of every connected region of a shape colour in `image` (4-connected flood fill; the kind from
/// which corners of its bounding box it fills: a square all four, a triangle (apex up) the two at its base, a circle
/// none — robust at a few pixels across, where a small circle fills nearly all of its box).
fn regions(image: &RgbImage) -> Vec<(Colour, ShapeKind)> {
    let (w, h) = image.dimensions();
    let colour_at = |x: u32, y: u32| Colour::ALL.into_iter().find(|c| c.rgb() == image.get_pixel(x, y).0);
    let mut seen = vec![false; (w * h) as usize];
    let mut found = Vec::new();
    for start in 0..w * h {
        let (sx, sy) = (start % w, start / w);
        let Some(colour) = colour_at(sx, sy) else { continue };
        if seen[start as usize] {
            continue;
        }
        let (mut stack, mut pixels, mut bounds) = (vec![(sx, sy)], Vec::new(), (sx, sy, sx, sy));
        seen[start as usize] = true;
        while let Some((x, y)) = stack.pop() {
            pixels.push((x, y));
            bounds = (bounds.0.min(x), bounds.1.min(y), bounds.2.max(x), bounds.3.max(y));
            let neighbours = [(x.wrapping_sub(1), y), (x + 1, y), (x, y.wrapping_sub(1)), (x, y + 1)];
            for (nx, ny) in neighbours {
                if nx < w && ny < h && !seen[(ny * w + nx) as usize] && colour_at(nx, ny) == Some(colour) {
                    seen[(ny * w + nx) as usize] = true;
                    stack.push((nx, ny));
                }
            }
        }
        let (left, top, right, bottom) = bounds;
        let filled = |corner| pixels.contains(&corner);
        let kind = match [(left, top), (right, top), (left, bottom), (right, bottom)].map(filled) {
            [true, true, true, true] => ShapeKind::Square,
            [false, false, true, true] => ShapeKind::Triangle,
            [false, false, false, false] => ShapeKind::Circle,
            corners => panic!("a region of no known shape: corners {corners:?} of {bounds:?}"),
        };
        found.push((colour, kind));
    }
    found
}

/// The caption of the scene that `image` shows, rebuilt from its regions alone.
fn caption_from_pixels(image: &RgbImage) -> String {
    let mut counts: BTreeMap<(ShapeKind, Colour), usize> = BTreeMap::new();
    for (colour, kind) in regions(image) {
        *counts.entry((kind, colour)).or_default() += 1;
    }
    // Cells are apart, so regions are shapes: give the scene back to the caption function under test only as data.
    let shapes = counts
        .iter()
        .flat_map(|(&(kind, colour), &n)| std::iter::repeat_n((kind, colour), n))
        .enumerate()
        .map(|(i, (kind, colour))| unireward::pipeline::world::Shape { kind, colour, cell: (i % 3, i / 3) })
        .collect();
    caption(&Scene { shapes })
}

const SIZES: [u32; 3] = [36, 49, 64];

#[test]
fn captions_state_what_the_pixels_show() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for trial in 0..60 {
        let scene = Scene::random(&mut rng, 9);
        let size = SIZES[trial % SIZES.len()];
        assert_eq!(caption_from_pixels(&render(&scene, size)), caption(&scene), "{scene:?} at {size} px");
    }
}

#[test]
fn a_corrupted_scene_shows_something_its_caption_does_not_say() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for trial in 0..60 {
        let scene = Scene::random(&mut rng, 5);
        let other = corrupt(&scene, &mut rng);
        let size = SIZES[trial % SIZES.len()];
        assert_ne!(caption_from_pixels(&render(&other, size)), caption(&scene), "{scene:?} -> {other:?}");
        assert_eq!(caption_from_pixels(&render(&other, size)), caption(&other));
    }
}

/// A question's answer read off the pixels: a plain parser of the four question forms over the image's regions.
fn answer_from_pixels(question: &str, image: &RgbImage) -> String {
    let regions = regions(image);
    let colour_named = |word: &str| Colour::ALL.into_iter().find(|c| c.name() == word);
    let kind_named = |word: &str| ShapeKind::ALL.into_iter().find(|k| k.name() == word);
    let words: Vec<&str> = question.trim_end_matches('?').split(' ').collect();
    match words[..] {
        ["How", "many", "shapes", "are", "there"] => regions.len().to_string(),
        ["Is", "there", "a", colour, "shape"] => {
            let wanted = colour_named(colour).unwrap();
            if regions.iter().any(|r| r.0 == wanted) { "yes" } else { "no" }.to_string()
        }
        ["Is", "there", "a", colour, kind] => {
            let wanted = (colour_named(colour).unwrap(), kind_named(kind).unwrap());
            if regions.contains(&wanted) { "yes" } else { "no" }.to_string()
        }
        ["What", "colour", "is", "the", kind] => {
            let of_kind: Vec<_> = regions.iter().filter(|r| Some(r.1) == kind_named(kind)).collect();
            assert_eq!(of_kind.len(), 1, "asked the colour of the {kind} with {} of them", of_kind.len());
            of_kind[0].0.name().to_string()
        }
        _ => panic!("a question of no known form: {question}"),
    }
}

#[test]
fn answers_are_true_of_the_pixels_and_wrong_answers_are_not() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let mut forms = std::collections::HashSet::new();
    for trial in 0..200 {
        let scene = Scene::random(&mut rng, 6);
        let q = question(&scene, 6, &mut rng);
        let image = render(&scene, SIZES[trial % SIZES.len()]);
        assert_eq!(answer_from_pixels(&q.text, &image), q.answer, "{q:?} about {scene:?}");
        assert_ne!(q.wrong_answer, q.answer, "{q:?}");
        forms.insert(q.text.split(' ').take(2).collect::<Vec<_>>().join(" "));
    }
    assert_eq!(forms.len(), 3, "every form of question comes up: {forms:?}"); // "How many", "Is there", "What colour"
}

#[test]
fn the_two_answers_alone_do_not_tell_which_is_true() {
    // Per question form and pair of answers, how often the first of the two (in sorted order) is the true one: a
    // judge reading only the answers can do no better than the larger share, so every share must be near 0.5.
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let mut tally: std::collections::BTreeMap<(String, String, String), [usize; 2]> = Default::default();
    for _ in 0..20_000 {
        let scene = Scene::random(&mut rng, 2);
        let q = question(&scene, 2, &mut rng);
        let form = q.text.split(' ').take(2).collect::<Vec<_>>().join(" ");
        let (first, second) =
            if q.answer < q.wrong_answer { (&q.answer, &q.wrong_answer) } else { (&q.wrong_answer, &q.answer) };
        let counts = tally.entry((form, first.clone(), second.clone())).or_default();
        counts[usize::from(q.answer != *first)] += 1;
    }
    for ((form, first, second), [first_true, second_true]) in &tally {
        let n = first_true + second_true;
        let share = *first_true as f64 / n as f64;
        // 5 standard errors of a fair coin: a leak of a few percent in the big groups shows.
        let bound = 5.0 * (0.25 / n as f64).sqrt();
        assert!((share - 0.5).abs() <= bound, "{form}: {first} is true in {first_true} of {n} pairs with {second}");
    }
    assert_eq!(tally.len(), 8, "every form and pair of answers comes up: {tally:?}");
}

/// The centroid of the shape's pixels in each frame.
fn centroids(frames: &[RgbImage], colour: Colour) -> Vec<(f64, f64)> {
    frames
        .iter()
        .map(|f| {
            let points: Vec<(f64, f64)> =
                f.enumerate_pixels().filter(|p| p.2 .0 == colour.rgb()).map(|p| (p.0 as f64, p.1 as f64)).collect();
            assert!(!points.is_empty(), "the shape is in every frame");
            let n = points.len() as f64;
            (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n)
        })
        .collect()
}

/// The way the shape of `colour` moves over `frames`: the larger of its centroid's moves across and down.
fn direction_seen(frames: &[RgbImage], colour: Colour) -> Direction {
    let path = centroids(frames, colour);
    let (dx, dy) = (path.last().unwrap().0 - path[0].0, path.last().unwrap().1 - path[0].1);
    match (dx.abs() > dy.abs(), dx > 0.0, dy > 0.0) {
        (true, true, _) => Direction::Right,
        (true, false, _) => Direction::Left,
        (false, _, true) => Direction::Down,
        (false, _, false) => Direction::Up,
    }
}

/// The caption of the video in the folder `dir` (its frames `frame_0.png`, …), rebuilt from its pixels alone.
fn video_caption_from_pixels(dir: &Path) -> String {
    let frames: Vec<RgbImage> =
        (0..FRAMES).map(|i| image::open(dir.join(format!("frame_{i}.png"))).unwrap().to_rgb8()).collect();
    let [(colour, kind)] = regions(&frames[0])[..] else { panic!("a video of more than one shape: {}", dir.display()) };
    // The caption function under test, given back only the facts read off the pixels.
    Motion { kind, colour, direction: direction_seen(&frames, colour), lane: 0.5 }.caption()
}

#[test]
fn videos_move_the_way_their_captions_say() {
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let mut directions = std::collections::HashSet::new();
    for trial in 0..40 {
        let motion = Motion::random(&mut rng);
        let frames = render_frames(&motion, SIZES[trial % SIZES.len()], 2 + trial % 7);
        assert_eq!(direction_seen(&frames, motion.colour), motion.direction, "{motion:?}");
        for (frame, later) in frames.iter().zip(&frames[1..]) {
            assert_eq!(regions(frame), regions(later), "one shape, unchanged, in every frame");
        }
        assert_eq!(regions(&frames[0]), vec![(motion.colour, motion.kind)]);
        assert!(motion.caption().ends_with(motion.direction.name()));
        assert_ne!(motion.corrupt(&mut rng).caption(), motion.caption());
        directions.insert(motion.direction);
    }
    assert_eq!(directions.len(), 4);
}

#[test]
fn the_same_seed_gives_the_same_world() {
    let world = |seed| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let scene = Scene::random(&mut rng, 9);
        let q = question(&scene, 9, &mut rng);
        let other = corrupt(&scene, &mut rng);
        let motion = Motion::random(&mut rng);
        let pixels = [render(&scene, 40), render(&other, 40)].map(RgbImage::into_raw);
        (caption(&scene), q, caption(&other), motion.caption(), pixels, render_frames(&motion, 40, 4))
    };
    assert_eq!(world(5), world(5));
    assert_ne!(world(5).4, world(6).4);
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("unireward-world-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn the_word_level_tokenizer_knows_every_word_of_its_corpus() {
    use unireward::judge::tokenizer::Tokenizer;
    use unireward::pipeline::world::{word_level_tokenizer, SPECIAL_TOKENS};
    let corpus = ["How many red shapes are there?", "Image 1 is better than Image 2.", "Final Score: 4"];
    let dir = temp_dir("tokenizer");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), word_level_tokenizer(corpus).unwrap()).unwrap();
    let tokenizer = Tokenizer::from_file(&dir).unwrap();
    let unknown = tokenizer.token_to_id("<unk>").unwrap();
    for (id, special) in SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tokenizer.token_to_id(special), Some(id as u32));
    }
    for text in corpus {
        let ids = tokenizer.encode(text).unwrap();
        assert!(!ids.contains(&unknown), "{text}: {ids:?}");
        assert_eq!(tokenizer.decode(&ids, false).unwrap().replace(' ', ""), text.replace(' ', ""));
    }
    let ids = tokenizer.encode("<|im_start|>user\nHow many<image> purple shapes").unwrap();
    let [start, image] = ["<|im_start|>", "<image>"].map(|t| tokenizer.token_to_id(t).unwrap());
    assert_eq!(ids.iter().filter(|&&id| id == unknown).count(), 1, "`purple` is unknown: {ids:?}");
    assert!(ids.contains(&start) && ids.contains(&image), "special tokens are single tokens: {ids:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_tiny_llava_checkpoint_made_from_nothing_loads_and_sees_a_rendered_scene() {
    use unireward::judge::tokenizer::Tokenizer;
    use unireward::media::{ImageLayout, ImageProcessor, ImageProcessorConfig};
    use unireward::model::llava::{LlavaOnevisionModel, MediaInput};
    use unireward::pipeline::world::{word_level_tokenizer, TinyLlava};
    use unireward::DType;

    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let scene = Scene::random(&mut rng, 4);
    let text = caption(&scene);
    let dir = temp_dir("checkpoint");
    let spec = TinyLlava::default();
    spec.write(&dir, &word_level_tokenizer([text.as_str()]).unwrap(), 7).unwrap();
    let model = LlavaOnevisionModel::load(&dir, DType::F32, unireward::Device::Cpu).unwrap();
    for (name, t) in model.named_parameters() {
        let v = t.to_vec::<f32>().unwrap();
        if name.ends_with("bias") {
            assert!(v.iter().all(|&x| x == 0.0), "{name}");
        } else if name.contains("norm") {
            assert!(v.iter().all(|&x| x == 1.0), "{name}");
        } else if v.len() >= 1000 {
            let std = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
            assert!((std - 0.02).abs() < 0.002, "{name}: standard deviation {std}");
        }
    }
    let processor =
        ImageProcessor::new(ImageProcessorConfig::from_file(&dir.join("preprocessor_config.json")).unwrap()).unwrap();
    let picture = render(&scene, 40);
    let picture = unireward::media::RgbImage::new(40, 40, picture.into_raw()).unwrap();
    let pixels = processor.preprocess(&picture, ImageLayout::Anyres).unwrap();
    let media = [MediaInput::image(&pixels)];
    let count = model.placeholder_counts(&media).unwrap()[0];
    let tokenizer = Tokenizer::from_file(&dir).unwrap();
    let image = tokenizer.token_to_id("<image>").unwrap() as i64;
    let mut ids = vec![image; count];
    ids.extend(tokenizer.encode(&text).unwrap().into_iter().map(i64::from));
    let greedy = unireward::judge::generate::GenerationConfig { max_new_tokens: 3, ..Default::default() };
    let tokens = model.generate(&ids, &media, &greedy).unwrap();
    assert_eq!(tokens.len(), 3);
    assert!(tokens.iter().all(|&t| (t as usize) < tokenizer.vocab_size()));
    // The same seed writes the same weights.
    let again = temp_dir("checkpoint-again");
    spec.write(&again, &word_level_tokenizer([text.as_str()]).unwrap(), 7).unwrap();
    let bytes = |d: &std::path::Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(bytes(&dir), bytes(&again));
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&again).unwrap();
}

#[test]
fn initial_parameters_refuse_a_bad_standard_deviation() {
    use unireward::model::init::initial_parameters;
    let expected = [("w".to_string(), vec![2, 3])];
    for std in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let err = initial_parameters(&expected, std, 0).unwrap_err().to_string();
        assert!(err.contains("standard deviation"), "{err}");
    }
    let a = initial_parameters(&expected, 0.1, 1).unwrap();
    let b = initial_parameters(&expected, 0.1, 2).unwrap();
    assert_ne!(a[0].1.to_vec::<f32>().unwrap(), b[0].1.to_vec::<f32>().unwrap());
}

#[test]
fn the_untrained_tiny_judge_judges_rendered_scenes_with_the_demo_templates() {
    use unireward::judge::{Candidate, Context, Judge, MediaFile, Mode, Task, TaskTemplate, Variant};
    use unireward::pipeline::world::{word_level_tokenizer, TinyLlava};
    let mut rng = ChaCha8Rng::seed_from_u64(22);
    let scene = Scene::random(&mut rng, 4);
    let other = corrupt(&scene, &mut rng);
    let text = caption(&scene);
    let dir = temp_dir("judge");
    let mut corpus = template_words().unwrap();
    corpus.push(text.clone());
    let tokenizer = word_level_tokenizer(corpus.iter().map(String::as_str)).unwrap();
    TinyLlava::default().write(&dir, &tokenizer, 3).unwrap();
    let judge = Judge::load(&dir, unireward::DType::F32, unireward::Device::Cpu).unwrap();
    let template = judge.template(Task::ImageGeneration, Mode::Pairwise).unwrap();
    assert_eq!(
        template.instruction,
        TaskTemplate::built_in_variant(Variant::Demo, Task::ImageGeneration, Mode::Pairwise).unwrap().instruction
    );
    let [a, b] = [(&scene, "a.png"), (&other, "b.png")].map(|(s, name)| {
        let path = dir.join(name);
        render(s, 40).save(&path).unwrap();
        Candidate::Media(MediaFile::Image(path))
    });
    let result = judge.pairwise(Task::ImageGeneration, &Context::with_field("caption", &text), a, b).unwrap();
    let total: f32 = result.probs.iter().sum();
    assert_eq!(result.probs.len(), 3, "image 1, image 2, tie: {result:?}");
    assert!((total - 1.0).abs() < 1e-5 && result.probs.iter().all(|x| x.is_finite() && *x >= 0.0), "{result:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn world_judgments_become_conversations_and_eval_lines_that_state_the_truth() {
    use unireward::judge::Task;
    use unireward::pipeline::world::{judgments, WorldCandidate};
    let dir = temp_dir("judgments");
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    for task in Task::ALL {
        for judgment in judgments(task, 3, &dir, "t-", &mut rng).unwrap() {
            let conversations = judgment.conversations().unwrap();
            assert_eq!(conversations.len(), 4, "a pairwise conversation in each order and two pointwise ones");
            for c in &conversations {
                let human = c["conversations"][0]["value"].as_str().unwrap();
                let images = c["image"].as_array().unwrap();
                assert_eq!(human.matches("<image>").count(), images.len(), "{c}");
                assert!(images.iter().all(|p| Path::new(p.as_str().unwrap()).is_file()), "{c}");
                assert!(human.contains(&judgment.text), "{c}");
                assert_eq!(c["task"], task.name());
            }
            let videos = matches!(task, Task::VideoGeneration | Task::VideoUnderstanding);
            let per_candidate = if videos { FRAMES } else { 1 };
            // Which candidate each pairwise verdict prefers, read from where the better one sits in the prompt: the
            // better one first in one conversation, second in the other, the verdict following it.
            let mut better_first_seen = Vec::new();
            for pairwise in &conversations[..2] {
                let verdict = pairwise["conversations"][1]["value"].as_str().unwrap();
                let better_first = match (&judgment.better, &judgment.worse) {
                    (WorldCandidate::Media(better), WorldCandidate::Media(worse)) => {
                        let shown: Vec<&Path> = pairwise["image"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|p| Path::new(p.as_str().unwrap()))
                            .map(|p| if videos { p.parent().unwrap() } else { p })
                            .collect();
                        assert_eq!(shown.len(), 2 * per_candidate);
                        let (first, second) = (shown[0], shown[per_candidate]);
                        let candidates = [better.as_path(), worse.as_path()];
                        assert!(first != second && candidates.contains(&first) && candidates.contains(&second));
                        first == better.as_path()
                    }
                    (WorldCandidate::Text(better), WorldCandidate::Text(worse)) => {
                        let human = pairwise["conversations"][0]["value"].as_str().unwrap();
                        let in_order = |a: &str, b: &str| {
                            human.contains(&format!("Response 1: {a}\n"))
                                && human.contains(&format!("Response 2: {b}\n"))
                        };
                        assert!(in_order(better, worse) || in_order(worse, better), "{pairwise}");
                        in_order(better, worse)
                    }
                    other => panic!("{other:?}"),
                };
                assert_eq!(verdict.contains(" 1 is better"), better_first, "{pairwise}");
                better_first_seen.push(better_first);
            }
            assert_eq!(better_first_seen, [true, false], "both orders");
            // Every judgment says what it sees before its verdict, read back here from the pixels: an understanding
            // judgment the caption of its picture or video and the true answer (then, pointwise, the response
            // repeated); a generation judgment the caption of each candidate in the order shown.
            let seen = |path: &Path| match task {
                Task::ImageGeneration | Task::ImageUnderstanding => {
                    caption_from_pixels(&image::open(path).unwrap().to_rgb8())
                }
                Task::VideoGeneration | Task::VideoUnderstanding => video_caption_from_pixels(path),
            };
            // The pairwise answers' rationales (their verdicts checked above) and the pointwise answers.
            let (pairwise, pointwise): ([String; 2], [String; 2]) =
                match (&judgment.context_media, &judgment.better, &judgment.worse) {
                    (Some(context), WorldCandidate::Text(better), WorldCandidate::Text(worse)) => {
                        if task == Task::ImageUnderstanding {
                            let pixels = image::open(context).unwrap().to_rgb8();
                            assert_eq!(answer_from_pixels(&judgment.text, &pixels), *better);
                        } else {
                            assert!(judgment.text.starts_with("Which way"), "{}", judgment.text);
                        }
                        let rationale = format!("{}. {better}.", seen(context));
                        assert_eq!(judgment.rationale, Rationale::Answer(rationale.clone()));
                        let pointwise = [
                            format!("Response: {better}. Final Score: 5"),
                            format!("Response: {worse}. Final Score: 1"),
                        ];
                        ([rationale.clone(), rationale.clone()], pointwise.map(|p| format!("{rationale} {p}")))
                    }
                    (None, WorldCandidate::Media(better), WorldCandidate::Media(worse)) => {
                        let (better, worse) = (seen(better), seen(worse));
                        assert_eq!(better, judgment.text, "the better candidate shows its caption");
                        assert_ne!(worse, judgment.text, "the worse candidate does not");
                        let pointwise = [format!("{better}. Final Score: 5"), format!("{worse}. Final Score: 1")];
                        ([format!("{better}. {worse}."), format!("{worse}. {better}.")], pointwise)
                    }
                    other => panic!("{other:?}"),
                };
            let answers: Vec<&str> =
                conversations.iter().map(|c| c["conversations"][1]["value"].as_str().unwrap()).collect();
            for (answer, rationale) in answers[..2].iter().zip(&pairwise) {
                assert!(answer.starts_with(&format!("{rationale} ")), "{answer:?} after {rationale:?}");
            }
            assert_eq!(answers[2..], pointwise);

            let line = judgment.eval_line(&mut rng);
            let shown = |c: &WorldCandidate| match c {
                WorldCandidate::Media(p) => p.display().to_string(),
                WorldCandidate::Text(t) => t.clone(),
            };
            let label = if line["candidates"][0] == shown(&judgment.better) { "A" } else { "B" };
            assert_eq!(line["label"], label, "{line}");
            assert_eq!(line["task"].as_str().unwrap().parse::<Task>().unwrap(), task);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The demo's judge stage in small: a tiny checkpoint made from nothing, trained by `unireward train-judge` on the
/// world's conversations of all four tasks, then run by `unireward eval` on held-out world judgments — the pieces
/// the demo chains, end to end through the command line.
#[test]
fn train_judge_and_eval_run_on_the_world() {
    use std::process::Command;
    use unireward::judge::Task;
    use unireward::pipeline::world::{judgments, word_level_tokenizer, TinyLlava};
    let dir = temp_dir("judge-stage");
    let mut rng = ChaCha8Rng::seed_from_u64(24);
    let (mut train, mut held_out, mut corpus) = (String::new(), String::new(), template_words().unwrap());
    for task in Task::ALL {
        for (i, judgment) in judgments(task, 3, &dir.join("media"), "", &mut rng).unwrap().into_iter().enumerate() {
            corpus.push(judgment.text.clone());
            for c in judgment.conversations().unwrap() {
                corpus.push(c["conversations"][1]["value"].as_str().unwrap().to_string());
                corpus.extend(c["conversations"][0]["value"].as_str().map(str::to_string));
                train += &format!("{c}\n");
            }
            if i == 0 {
                held_out += &format!("{}\n", judgment.eval_line(&mut rng));
            }
        }
    }
    let tokenizer = word_level_tokenizer(corpus.iter().map(String::as_str)).unwrap();
    TinyLlava::default().write(&dir.join("judge"), &tokenizer, 5).unwrap();
    std::fs::write(dir.join("train.jsonl"), train).unwrap();
    std::fs::write(dir.join("held_out.jsonl"), held_out).unwrap();
    let path = |p: &str| dir.join(p).display().to_string();
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_unireward")).args(args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "{args:?}: {text}");
        text
    };
    let trained = run(&[
        "train-judge",
        "--model",
        &path("judge"),
        "--data",
        &path("train.jsonl"),
        "--out",
        &path("out"),
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--video-frames",
        "4",
    ]);
    // 4 tasks × 3 judgments × 4 conversations (a pairwise one in each order, two pointwise), 4 a step.
    assert!(trained.contains("done: 12 steps of 12"), "{trained}");
    let (_, checkpoint) = unireward::train::run::latest_checkpoint(&dir.join("out")).unwrap();
    // The trained judge keeps the task templates it was trained in: asked in another format it would be guessing.
    let templates = |d: &std::path::Path| {
        let mut names: Vec<_> = std::fs::read_dir(d.join(unireward::judge::CHECKPOINT_TEMPLATES))
            .unwrap()
            .map(|e| (e.as_ref().unwrap().file_name(), std::fs::read(e.unwrap().path()).unwrap()))
            .collect();
        names.sort();
        names
    };
    assert_eq!(templates(&checkpoint), templates(&dir.join("judge")));
    assert_eq!(templates(&checkpoint).len(), 8);
    let evaluated =
        run(&["eval", "--model", checkpoint.to_str().unwrap(), "--data", &path("held_out.jsonl"), "--json"]);
    let report: serde_json::Value = serde_json::from_str(&evaluated[..evaluated.rfind('}').unwrap() + 1]).unwrap();
    for task in Task::ALL {
        assert_eq!(report["summary"][format!("{task}.pairs")], 1, "{evaluated}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// DPO of a LLaVA-OneVision policy: questions about rendered scenes, the true answer chosen over a false one,
/// through `unireward dpo` on a checkpoint made from nothing; the loss starts at ln 2 and falls.
#[test]
fn dpo_trains_a_llava_policy_on_questions_about_rendered_scenes() {
    use std::process::Command;
    use unireward::pipeline::world::{word_level_tokenizer, TinyLlava};
    let dir = temp_dir("dpo-llava");
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(25);
    let (mut pairs, mut corpus) = (String::new(), Vec::new());
    for i in 0..8 {
        let scene = Scene::random(&mut rng, 4);
        let q = question(&scene, 4, &mut rng);
        let image = dir.join(format!("scene-{i}.png"));
        render(&scene, 48).save(&image).unwrap();
        let line = serde_json::json!({
            "prompt": format!("<image>\n{}", q.text), "chosen": q.answer, "rejected": q.wrong_answer,
            "image": image.display().to_string(),
        });
        corpus.extend([q.text, q.answer, q.wrong_answer]);
        pairs += &format!("{line}\n");
    }
    let tokenizer = word_level_tokenizer(corpus.iter().map(String::as_str)).unwrap();
    TinyLlava::default().write(&dir.join("policy"), &tokenizer, 9).unwrap();
    std::fs::write(dir.join("pairs.jsonl"), pairs).unwrap();
    let path = |p: &str| dir.join(p).display().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_unireward"))
        .args(["dpo", "--policy", &path("policy"), "--pairs", &path("pairs.jsonl"), "--out", &path("out")])
        // All eight pairs in every batch: the loss measured each step is over the same pairs, and falls as they are learned.
        .args(["--batch-size", "8", "--epochs", "8", "--lr", "5e-3", "--warmup-ratio", "0"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && text.contains("done: 8 steps of 8"), "{text}");
    let log = std::fs::read_to_string(dir.join("out/metrics.jsonl")).unwrap();
    let losses: Vec<f64> =
        log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap()).collect();
    assert!((losses[0] - std::f64::consts::LN_2).abs() < 1e-4, "{log}");
    assert!(losses[7] < losses[0], "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The base model's pretraining data: questions about new pictures and videos, each answered with the caption of
/// what it shows and then the true answer — both read back from the pixels for the pictures.
#[test]
fn base_answers_describe_the_picture_then_answer() {
    use unireward::pipeline::world::{DemoSizes, TinyLlava};
    let dir = temp_dir("base-answers");
    let sizes =
        DemoSizes { base_answers: 8, judge_train: 1, judge_held_out: 1, policy_sft: 2, prompts: 2, policy_held_out: 2 };
    let files = sizes.write(&dir, &TinyLlava::default(), 5).unwrap();
    let text = std::fs::read_to_string(&files.base_answers).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 8);
    for line in &lines {
        let question = line["conversations"][0]["value"].as_str().unwrap();
        let said = line["conversations"][1]["value"].as_str().unwrap();
        match line.get("image") {
            Some(image) => {
                let pixels = image::open(dir.join(image.as_str().unwrap())).unwrap().to_rgb8();
                let question = question.strip_prefix("<image>\n").unwrap();
                let expected = format!("{}. {}.", caption_from_pixels(&pixels), answer_from_pixels(question, &pixels));
                assert_eq!(said, expected, "{line}");
            }
            None => {
                let question = question.strip_prefix("<video>\n").unwrap();
                let (caption, answer) = said.trim_end_matches('.').split_once(". ").unwrap();
                assert!(caption.ends_with(&format!("moving {answer}")) && question.starts_with("Which way"), "{line}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
