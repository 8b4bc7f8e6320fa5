//! Scenes: one to [`GRID`]² shapes, each in its own cell of a square grid so that none overlaps and counts stay
//! readable at a few dozen pixels.

use rand::seq::SliceRandom;
use rand::Rng;

/// Cells per side of the grid the shapes sit in.
pub const GRID: usize = 3;

/// The shapes' colours: far apart in RGB and from the background, so a tiny vision tower tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
}

impl Colour {
    pub const ALL: [Colour; 4] = [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow];

    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 30, 30],
            Colour::Green => [30, 180, 40],
            Colour::Blue => [30, 60, 220],
            Colour::Yellow => [235, 210, 20],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ShapeKind {
    Circle,
    Square,
    Triangle,
}

impl ShapeKind {
    pub const ALL: [ShapeKind; 3] = [ShapeKind::Circle, ShapeKind::Square, ShapeKind::Triangle];

    pub fn name(self) -> &'static str {
        match self {
            ShapeKind::Circle => "circle",
            ShapeKind::Square => "square",
            ShapeKind::Triangle => "triangle",
        }
    }
}

/// A shape in grid cell `(column, row)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub kind: ShapeKind,
    pub colour: Colour,
    pub cell: (usize, usize),
}

/// Shapes on a light background, in no particular order, at most one per cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scene {
    pub shapes: Vec<Shape>,
}

impl Scene {
    /// One to `max_shapes` (at most [`GRID`]²) random shapes in distinct random cells.
    pub fn random(rng: &mut impl Rng, max_shapes: usize) -> Scene {
        let max_shapes = max_shapes.clamp(1, GRID * GRID);
        let mut cells: Vec<(usize, usize)> = (0..GRID * GRID).map(|c| (c % GRID, c / GRID)).collect();
        cells.shuffle(rng);
        let count = rng.gen_range(1..=max_shapes);
        let shapes =
            cells[..count].iter().map(|&cell| Shape { kind: random_kind(rng), colour: random_colour(rng), cell });
        Scene { shapes: shapes.collect() }
    }

    /// How many shapes have `colour` (any kind) — or `kind` (any colour), or both — as asked.
    pub fn count(&self, colour: Option<Colour>, kind: Option<ShapeKind>) -> usize {
        let matches = |s: &&Shape| colour.is_none_or(|c| s.colour == c) && kind.is_none_or(|k| s.kind == k);
        self.shapes.iter().filter(matches).count()
    }

    /// The cells no shape occupies.
    pub fn free_cells(&self) -> Vec<(usize, usize)> {
        let taken = |cell| self.shapes.iter().any(|s| s.cell == cell);
        (0..GRID * GRID).map(|c| (c % GRID, c / GRID)).filter(|&cell| !taken(cell)).collect()
    }
}

pub(super) fn random_kind(rng: &mut impl Rng) -> ShapeKind {
    *ShapeKind::ALL.choose(rng).expect("non-empty")
}

pub(super) fn random_colour(rng: &mut impl Rng) -> Colour {
    *Colour::ALL.choose(rng).expect("non-empty")
}
