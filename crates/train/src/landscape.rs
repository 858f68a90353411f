//! The performance landscape of a subspace (paper §5): every DET evaluated on a 2-D grid of
//! codes, drawn as one heat map per DET (PNG, with axes, colour bar and the solution points).
//!
//! The plane passes through a task's three per-DET solutions z_A, z_L, z_P (origin at their
//! centroid, axes an orthonormal basis of the triangle's span), or through a given centre along
//! two given directions.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use plotters::prelude::*;
use serde::Serialize;

use deltaspace_core::det::DetKind;
use deltaspace_core::model::Encoder;
use deltaspace_core::subspace::Subspace;
use deltaspace_core::tuning::batch::TrainTask;
use deltaspace_core::tuning::data::Split;
use deltaspace_core::tuning::fit::{Space, Unit, evaluate_values};
use deltaspace_core::tuning::head::HeadTuning;

/// A plane in the subspace: z(x, y) = centre + x·e1 + y·e2.
#[derive(Debug, Clone, Serialize)]
pub struct Plane {
    pub centre: Vec<f32>,
    pub e1: Vec<f32>,
    pub e2: Vec<f32>,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(a: f32, x: &[f32], y: &[f32]) -> Vec<f32> {
    x.iter().zip(y).map(|(x, y)| a * x + y).collect()
}

impl Plane {
    /// The plane through three points, origin at their centroid.
    pub fn through(points: &[Vec<f32>; 3]) -> anyhow::Result<Self> {
        let d = points[0].len();
        let centre: Vec<f32> = (0..d)
            .map(|i| points.iter().map(|p| p[i]).sum::<f32>() / 3.0)
            .collect();
        let u = axpy(-1.0, &points[0], &points[1]);
        let v = axpy(-1.0, &points[0], &points[2]);
        let norm_u = dot(&u, &u).sqrt();
        if norm_u < 1e-8 {
            bail!("the solutions coincide; give two directions instead");
        }
        let e1: Vec<f32> = u.iter().map(|x| x / norm_u).collect();
        let v_perp = axpy(-dot(&v, &e1), &e1, &v);
        let norm_v = dot(&v_perp, &v_perp).sqrt();
        if norm_v < 1e-8 {
            bail!("the three solutions are collinear; give two directions instead");
        }
        let e2 = v_perp.iter().map(|x| x / norm_v).collect();
        Ok(Self { centre, e1, e2 })
    }

    /// The plane through `centre` along two directions (orthonormalised).
    pub fn along(centre: Vec<f32>, first: &[f32], second: &[f32]) -> anyhow::Result<Self> {
        let zero = vec![0.0; centre.len()];
        let mut plane = Self::through(&[zero.clone(), first.to_vec(), second.to_vec()])?;
        plane.centre = centre;
        Ok(plane)
    }

    /// Coordinates of `z` projected onto the plane.
    pub fn coordinates(&self, z: &[f32]) -> (f32, f32) {
        let offset = axpy(-1.0, &self.centre, z);
        (dot(&offset, &self.e1), dot(&offset, &self.e2))
    }

    pub fn point(&self, x: f32, y: f32) -> Vec<f32> {
        axpy(y, &self.e2, &axpy(x, &self.e1, &self.centre))
    }
}

/// A labelled point drawn on every map (e.g. "A" for z_A).
#[derive(Debug, Clone, Serialize)]
pub struct Marker {
    pub label: String,
    pub x: f32,
    pub y: f32,
}

/// Accuracy of every DET at every grid point.
#[derive(Debug, Clone, Serialize)]
pub struct Landscape {
    pub task: String,
    pub split: Split,
    pub plane: Plane,
    /// Grid coordinates along e1 and e2.
    pub xs: Vec<f32>,
    pub ys: Vec<f32>,
    /// `accuracy[det][iy][ix]`
    pub accuracy: Vec<Vec<Vec<f32>>>,
    pub dets: Vec<DetKind>,
    pub markers: Vec<Marker>,
}

/// Evaluates every DET on a `grid`×`grid` lattice covering the markers plus `margin` (relative).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_grid(
    encoder: &Encoder,
    subspace: &Subspace,
    task: &TrainTask,
    plane: Plane,
    markers: Vec<Marker>,
    grid: usize,
    margin: f32,
    split: Split,
    limit: Option<usize>,
) -> anyhow::Result<Landscape> {
    let grid = grid.max(2);
    let extent = |values: Vec<f32>| {
        let (lo, hi) = values
            .iter()
            .fold((0.0f32, 0.0f32), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let pad = ((hi - lo) * margin).max(1.0);
        (lo - pad, hi + pad)
    };
    let (x0, x1) = extent(markers.iter().map(|m| m.x).collect());
    let (y0, y1) = extent(markers.iter().map(|m| m.y).collect());
    let steps = |a: f32, b: f32| {
        (0..grid)
            .map(|i| a + (b - a) * i as f32 / (grid - 1) as f32)
            .collect::<Vec<_>>()
    };
    let (xs, ys) = (steps(x0, x1), steps(y0, y1));
    let tasks = std::slice::from_ref(task);
    let mut units = Vec::new();
    let mut codes = Vec::new();
    for det in DetKind::ALL {
        for &y in &ys {
            for &x in &xs {
                units.push(Unit::new(0, det));
                codes.push(plane.point(x, y));
            }
        }
    }
    let metrics = evaluate_values(
        encoder,
        tasks,
        &units,
        &Space::Subspace {
            subspace,
            head: HeadTuning::None,
            train_z: true,
        },
        &codes,
        split,
        limit,
    )?;
    let accuracy = DetKind::ALL
        .iter()
        .enumerate()
        .map(|(k, _)| {
            (0..grid)
                .map(|iy| {
                    (0..grid)
                        .map(|ix| metrics[(k * grid + iy) * grid + ix].accuracy)
                        .collect()
                })
                .collect()
        })
        .collect();
    Ok(Landscape {
        task: task.data.name.clone(),
        split,
        plane,
        xs,
        ys,
        accuracy,
        dets: DetKind::ALL.to_vec(),
        markers,
    })
}

/// Fonts tried for labels (plotters draws text with ab_glyph; no system font library needed).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers `font`, or the first of [`FONT_PATHS`] present, as plotters' sans-serif (once per
/// process: the first call's font stays).
fn register_font(font: Option<&Path>) -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let path = match font {
                Some(path) => path.to_path_buf(),
                None => FONT_PATHS
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.is_file())
                    .ok_or(
                        "no TrueType font found: install fonts-dejavu-core or give --font FILE.ttf",
                    )?,
            };
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("reading font {}: {e}", path.display()))?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{} is not a usable font", path.display()))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A perceptually ordered colour ramp (viridis anchors), t in [0, 1].
fn colour(t: f32) -> RGBColor {
    const ANCHORS: [(u8, u8, u8); 5] = [
        (68, 1, 84),
        (59, 82, 139),
        (33, 145, 140),
        (94, 201, 98),
        (253, 231, 37),
    ];
    let t = t.clamp(0.0, 1.0) * (ANCHORS.len() - 1) as f32;
    let i = (t.floor() as usize).min(ANCHORS.len() - 2);
    let f = t - i as f32;
    let mix = |a: u8, b: u8| (f32::from(a) + (f32::from(b) - f32::from(a)) * f).round() as u8;
    let (a, b) = (ANCHORS[i], ANCHORS[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Draws one heat map per DET into `dir` and returns the files; labels use `font` (a .ttf) or,
/// without one, a system font.
pub fn draw(
    landscape: &Landscape,
    dir: &Path,
    font: Option<&Path>,
) -> anyhow::Result<Vec<PathBuf>> {
    register_font(font)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let all: Vec<f32> = landscape
        .accuracy
        .iter()
        .flatten()
        .flatten()
        .copied()
        .collect();
    let lo = all.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = all
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
        .max(lo + 1e-3);
    let mut files = Vec::new();
    for (k, det) in landscape.dets.iter().enumerate() {
        let path = dir.join(format!("{}.{det}.png", landscape.task));
        draw_one(landscape, k, *det, lo, hi, &path)
            .map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
        files.push(path);
    }
    Ok(files)
}

fn draw_one(
    landscape: &Landscape,
    k: usize,
    det: DetKind,
    lo: f32,
    hi: f32,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let (xs, ys) = (&landscape.xs, &landscape.ys);
    let (dx, dy) = ((xs[1] - xs[0]) / 2.0, (ys[1] - ys[0]) / 2.0);
    let root = BitMapBackend::new(path, (760, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let (main, bar) = root.split_horizontally(640);
    // Through three solutions, e1 runs from the first to the second; along given directions, it
    // is the first of them.
    let labels: Vec<&str> = landscape.markers.iter().map(|m| m.label.as_str()).collect();
    let (plane, x_desc) = match labels.as_slice() {
        [first, second, ..] => (labels.join(", "), format!("e1 ({first} → {second})")),
        _ => ("the given directions".to_string(), "e1".to_string()),
    };
    let title = format!(
        "{}: {} accuracy ({}) on the plane of {plane}",
        landscape.task, det, landscape.split
    );
    let mut chart = ChartBuilder::on(&main)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(
            (xs[0] - dx)..(xs[xs.len() - 1] + dx),
            (ys[0] - dy)..(ys[ys.len() - 1] + dy),
        )?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(x_desc)
        .y_desc("e2")
        .label_style(("sans-serif", 13))
        .draw()?;
    let cells = ys
        .iter()
        .enumerate()
        .flat_map(|(iy, &y)| xs.iter().enumerate().map(move |(ix, &x)| (ix, iy, x, y)));
    chart.draw_series(cells.map(|(ix, iy, x, y)| {
        let value = landscape.accuracy[k][iy][ix];
        Rectangle::new(
            [(x - dx, y - dy), (x + dx, y + dy)],
            colour((value - lo) / (hi - lo)).filled(),
        )
    }))?;
    chart.draw_series(landscape.markers.iter().map(|m| {
        EmptyElement::at((m.x, m.y))
            + Circle::new((0, 0), 6, WHITE.filled())
            + Circle::new((0, 0), 6, BLACK.stroke_width(2))
            + Text::new(
                m.label.clone(),
                (9, -18),
                ("sans-serif", 18).into_font().color(&WHITE),
            )
    }))?;
    let mut scale = ChartBuilder::on(&bar)
        .margin_top(40)
        .margin_bottom(52)
        .margin_right(50)
        .y_label_area_size(0)
        .right_y_label_area_size(45)
        .build_cartesian_2d(0.0f32..1.0, lo..hi)?;
    scale
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_desc("accuracy")
        .label_style(("sans-serif", 12))
        .draw()?;
    let bands = 64;
    scale.draw_series((0..bands).map(|i| {
        let (a, b) = (
            lo + (hi - lo) * i as f32 / bands as f32,
            lo + (hi - lo) * (i + 1) as f32 / bands as f32,
        );
        Rectangle::new([(0.0, a), (1.0, b)], colour((a - lo) / (hi - lo)).filled())
    }))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plane_through_three_points_contains_them() {
        let points = [
            vec![1.0, 0.0, 2.0, 0.0],
            vec![0.0, 3.0, 1.0, 1.0],
            vec![-2.0, 1.0, 0.0, 4.0],
        ];
        let plane = Plane::through(&points).unwrap();
        assert!(dot(&plane.e1, &plane.e2).abs() < 1e-6);
        for p in &points {
            let (x, y) = plane.coordinates(p);
            let back = plane.point(x, y);
            assert!(
                back.iter().zip(p).all(|(a, b)| (a - b).abs() < 1e-5),
                "{back:?} vs {p:?}"
            );
        }
        assert!(
            Plane::through(&[points[0].clone(), points[0].clone(), points[1].clone()]).is_err()
        );
    }

    #[test]
    fn the_colour_ramp_runs_from_dark_to_light() {
        let brightness = |c: RGBColor| u32::from(c.0) + u32::from(c.1) + u32::from(c.2);
        assert!(brightness(colour(0.0)) < brightness(colour(0.5)));
        assert!(brightness(colour(0.5)) < brightness(colour(1.0)));
    }
}
