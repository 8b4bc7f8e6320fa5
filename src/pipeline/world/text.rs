//! The world's language: a scene's caption, a scene that the caption no longer describes, and questions with a
//! right and a wrong answer.

use rand::seq::SliceRandom;
use rand::Rng;

use super::scene::{random_colour, random_kind, Colour, Scene, Shape, ShapeKind};

const NUMBERS: [&str; 10] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];

/// "one red circle, two blue squares and one yellow triangle": every (colour, kind) with its count, kinds in a
/// fixed order and colours within them, so that equal scenes up to position have equal captions.
pub fn caption(scene: &Scene) -> String {
    let mut parts = Vec::new();
    for kind in ShapeKind::ALL {
        for colour in Colour::ALL {
            let n = scene.count(Some(colour), Some(kind));
            if n > 0 {
                let plural = if n > 1 { "s" } else { "" };
                parts.push(format!("{} {} {}{plural}", NUMBERS[n], colour.name(), kind.name()));
            }
        }
    }
    match parts.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => "nothing".into(),
    }
}

/// `scene` with one fact changed — a shape's colour or kind, a shape removed or one added — so that its caption is
/// no longer `scene`'s: the picture that does not match a caption, or the caption that does not match a picture.
pub fn corrupt(scene: &Scene, rng: &mut impl Rng) -> Scene {
    let original = caption(scene);
    loop {
        let mut other = scene.clone();
        let free = other.free_cells();
        match rng.gen_range(0..4) {
            0 => pick(&mut other, rng).colour = random_colour(rng),
            1 => pick(&mut other, rng).kind = random_kind(rng),
            2 if other.shapes.len() > 1 => {
                let i = rng.gen_range(0..other.shapes.len());
                other.shapes.remove(i);
            }
            3 if !free.is_empty() => {
                let cell = free[rng.gen_range(0..free.len())];
                other.shapes.push(Shape { kind: random_kind(rng), colour: random_colour(rng), cell });
            }
            _ => continue,
        }
        if caption(&other) != original {
            return other;
        }
    }
}

fn pick<'a>(scene: &'a mut Scene, rng: &mut impl Rng) -> &'a mut Shape {
    let i = rng.gen_range(0..scene.shapes.len());
    &mut scene.shapes[i]
}

/// What a model that looks says before it answers, and its answer: the caption of the picture or video asked
/// about, then the answer ("one red circle. yes."). The judge's rationale and the base model's pretraining answers
/// are both this one form.
pub fn described_answer(caption: &str, answer: &str) -> String {
    format!("{caption}. {answer}.")
}

/// A question about a scene, its true answer and a false one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub text: String,
    pub answer: String,
    pub wrong_answer: String,
}

/// A random question about `scene` (a scene of one to `max_shapes` shapes): how many shapes, whether a shape of a
/// colour (and kind) is there, or which colour the only shape of a kind has. The wrong answer is one the question
/// could have had, and the true answers come evenly ("yes" as often as "no", any count or colour alike), so the
/// two answers alone do not tell which is true: a model must look at the picture to judge them (a judge that
/// reads only the answers is at chance, as the demo's mismatched-context control shows).
pub fn question(scene: &Scene, max_shapes: usize, rng: &mut impl Rng) -> Question {
    loop {
        let (text, answer, wrong_answer) = match rng.gen_range(0..4) {
            0 => {
                // Scene::random draws the count evenly from 1..=max_shapes.
                let count = scene.count(None, None);
                let others: Vec<usize> = (1..=max_shapes).filter(|&n| n != count).collect();
                let Some(&wrong) = others.choose(rng) else { continue };
                ("How many shapes are there?".into(), count.to_string(), wrong.to_string())
            }
            1 => {
                let (colour, present) = asked_colour(scene, rng);
                yes_or_no(format!("Is there a {} shape?", colour.name()), present)
            }
            2 => {
                let (colour, kind, present) = asked_shape(scene, rng);
                yes_or_no(format!("Is there a {} {}?", colour.name(), kind.name()), present)
            }
            _ => {
                let kind = random_kind(rng);
                let [only] = scene.shapes.iter().filter(|s| s.kind == kind).collect::<Vec<_>>()[..] else { continue };
                let wrong = Colour::ALL
                    .into_iter()
                    .filter(|&c| c != only.colour)
                    .nth(rng.gen_range(0..3))
                    .expect("three others");
                (format!("What colour is the {}?", kind.name()), only.colour.name().into(), wrong.name().into())
            }
        };
        return Question { text, answer, wrong_answer };
    }
}

/// A colour to ask about: one in the scene or (as often) one not in it, and which.
fn asked_colour(scene: &Scene, rng: &mut impl Rng) -> (Colour, bool) {
    let present = |c: &Colour| scene.count(Some(*c), None) > 0;
    let want = rng.gen_bool(0.5);
    let choices: Vec<Colour> = Colour::ALL.into_iter().filter(|c| present(c) == want).collect();
    // A scene holds at least one colour and, of up to nine shapes, may hold all four: then only "yes" can be asked.
    match choices.choose(rng) {
        Some(&c) => (c, want),
        None => (*Colour::ALL.choose(rng).expect("non-empty"), !want),
    }
}

/// A coloured shape to ask about: one in the scene or (as often) one not in it, and which.
fn asked_shape(scene: &Scene, rng: &mut impl Rng) -> (Colour, ShapeKind, bool) {
    if rng.gen_bool(0.5) {
        let shown = scene.shapes.choose(rng).expect("a scene has a shape");
        return (shown.colour, shown.kind, true);
    }
    loop {
        let (colour, kind) = (random_colour(rng), random_kind(rng));
        if scene.count(Some(colour), Some(kind)) == 0 {
            return (colour, kind, false);
        }
    }
}

/// A yes-or-no question's text, true answer and wrong one.
fn yes_or_no(text: String, yes: bool) -> (String, String, String) {
    let [yes_word, no_word] = ["yes".to_string(), "no".to_string()];
    if yes {
        (text, yes_word, no_word)
    } else {
        (text, no_word, yes_word)
    }
}
