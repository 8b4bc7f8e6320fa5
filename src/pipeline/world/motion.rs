//! The videos' content: one shape crossing the image in one of four directions.

use rand::Rng;

use super::scene::{random_colour, random_kind, Colour, ShapeKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Left,
    Right,
    Up,
    Down,
}

impl Direction {
    pub const ALL: [Direction; 4] = [Direction::Left, Direction::Right, Direction::Up, Direction::Down];

    pub fn name(self) -> &'static str {
        match self {
            Direction::Left => "left",
            Direction::Right => "right",
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }

    /// The unit step in image coordinates (x right, y down).
    pub fn step(self) -> (i32, i32) {
        match self {
            Direction::Left => (-1, 0),
            Direction::Right => (1, 0),
            Direction::Up => (0, -1),
            Direction::Down => (0, 1),
        }
    }
}

/// A shape moving in `direction` along a lane: its fixed coordinate across the motion, as a fraction of the side.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Motion {
    pub kind: ShapeKind,
    pub colour: Colour,
    pub direction: Direction,
    pub lane: f32,
}

impl Motion {
    pub fn random(rng: &mut impl Rng) -> Motion {
        let direction = Direction::ALL[rng.gen_range(0..Direction::ALL.len())];
        Motion { kind: random_kind(rng), colour: random_colour(rng), direction, lane: rng.gen_range(0.3..0.7) }
    }

    /// "a red circle moving left".
    pub fn caption(&self) -> String {
        format!("a {} {} moving {}", self.colour.name(), self.kind.name(), self.direction.name())
    }

    /// The same motion with one fact changed (the direction, the colour or the kind), for a caption it does not
    /// match.
    pub fn corrupt(&self, rng: &mut impl Rng) -> Motion {
        let mut other = *self;
        while other.direction == self.direction && other.colour == self.colour && other.kind == self.kind {
            match rng.gen_range(0..3) {
                0 => other.direction = Direction::ALL[rng.gen_range(0..Direction::ALL.len())],
                1 => other.colour = random_colour(rng),
                _ => other.kind = random_kind(rng),
            }
        }
        other
    }
}
