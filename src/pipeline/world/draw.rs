//! Drawing scenes and motions into RGB images: flat shapes, no anti-aliasing, so that every pixel is the background
//! or exactly one shape's colour (what the tests read the facts back from).

use image::{Rgb, RgbImage};

use super::motion::Motion;
use super::scene::{Colour, Scene, ShapeKind, GRID};

/// The background: light grey, far from every shape colour.
pub const BACKGROUND: [u8; 3] = [235, 235, 235];

/// A shape's size against its grid cell: its half-width over the cell's side.
const RADIUS_IN_CELL: f32 = 0.36;

/// A shape placed in pixel coordinates: centre and half-width.
struct Placed {
    kind: ShapeKind,
    colour: Colour,
    centre: (f32, f32),
    radius: f32,
}

impl Placed {
    /// Whether the point `(x, y)` is inside the shape.
    fn covers(&self, x: f32, y: f32) -> bool {
        let (dx, dy) = (x - self.centre.0, y - self.centre.1);
        let r = self.radius;
        match self.kind {
            ShapeKind::Circle => dx * dx + dy * dy <= r * r,
            ShapeKind::Square => dx.abs() <= 0.85 * r && dy.abs() <= 0.85 * r,
            // Apex up: the half-width grows from 0 at the top (dy = -r) to r at the base (dy = r).
            ShapeKind::Triangle => dy.abs() <= r && dx.abs() <= (dy + r) / 2.0,
        }
    }
}

fn draw(size: u32, shapes: &[Placed]) -> RgbImage {
    RgbImage::from_fn(size, size, |x, y| {
        let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
        let colour = shapes.iter().rev().find(|s| s.covers(px, py)).map_or(BACKGROUND, |s| s.colour.rgb());
        Rgb(colour)
    })
}

/// `scene` drawn on a `size` × `size` image (each shape centred in its grid cell).
pub fn render(scene: &Scene, size: u32) -> RgbImage {
    let cell = size as f32 / GRID as f32;
    let placed: Vec<Placed> = scene
        .shapes
        .iter()
        .map(|s| Placed {
            kind: s.kind,
            colour: s.colour,
            centre: ((s.cell.0 as f32 + 0.5) * cell, (s.cell.1 as f32 + 0.5) * cell),
            radius: RADIUS_IN_CELL * cell,
        })
        .collect();
    draw(size, &placed)
}

/// `motion` as `frames` images of `size` × `size`: its shape crosses the middle of the image along its direction,
/// from a quarter of the way in to three quarters, at a constant speed.
pub fn render_frames(motion: &Motion, size: u32, frames: usize) -> Vec<RgbImage> {
    let side = size as f32;
    let radius = RADIUS_IN_CELL * side / GRID as f32;
    (0..frames)
        .map(|f| {
            let progress = if frames > 1 { f as f32 / (frames - 1) as f32 } else { 0.5 };
            let travelled = side * (0.25 + 0.5 * progress);
            // Moving right or down runs along the axis; left or up runs it backwards.
            let position = |step: i32| if step < 0 { side - travelled } else { travelled };
            let centre = match motion.direction.step() {
                (0, dy) => (motion.lane * side, position(dy)),
                (dx, _) => (position(dx), motion.lane * side),
            };
            draw(size, &[Placed { kind: motion.kind, colour: motion.colour, centre, radius }])
        })
        .collect()
}
