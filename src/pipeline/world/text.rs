//! The world's language: a scene's caption, a scene that the caption no longer describes, and questions with a
//! right and a wrong answer.

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

/// A question about a scene, its true answer and a false one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub text: String,
    pub answer: String,
    pub wrong_answer: String,
}

/// A random question about `scene`: how many shapes (of a colour), whether a coloured shape is there, or which
/// colour the only shape of a kind has.
pub fn question(scene: &Scene, rng: &mut impl Rng) -> Question {
    loop {
        let colour = random_colour(rng);
        let kind = random_kind(rng);
        let (text, answer, wrong_answer) = match rng.gen_range(0..4) {
            0 => count_question("How many shapes are there?".into(), scene.count(None, None), rng),
            1 => count_question(
                format!("How many {} shapes are there?", colour.name()),
                scene.count(Some(colour), None),
                rng,
            ),
            2 => {
                let present = scene.count(Some(colour), Some(kind)) > 0;
                let text = format!("Is there a {} {}?", colour.name(), kind.name());
                let [yes, no] = ["yes".to_string(), "no".to_string()];
                if present {
                    (text, yes, no)
                } else {
                    (text, no, yes)
                }
            }
            _ => {
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

/// A counting question's true count and a different one near it.
fn count_question(text: String, count: usize, rng: &mut impl Rng) -> (String, String, String) {
    let wrong = match count {
        0 => rng.gen_range(1..=3),
        n if rng.gen_bool(0.5) => n + 1,
        n => n - 1,
    };
    (text, count.to_string(), wrong.to_string())
}
