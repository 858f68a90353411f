//! A task's code z as the server holds it: f16, half the bytes of f32 (2 KB a task instead of 4 at
//! d = 1,024). f16 keeps about 3 significant digits: a relative error of at most 2⁻¹¹ per value
//! from 6.1 × 10⁻⁵ up, an absolute one of at most 2⁻²⁵ below, far below what moves a prediction.
//! Uploads are rounded to what is served ([`ServedCode::round`]), as heads are, so the stored task,
//! `GET` and predictions all agree; a value beyond f16's range (|v| > 65,504, possible only when
//! `max_z_norm` is raised above it) is refused rather than served as infinite.

use half::f16;

/// z in f16, ready to serve.
#[derive(Debug, Clone)]
pub struct ServedCode(Box<[f16]>);

impl ServedCode {
    /// z as it will be served: every value rounded to the nearest f16; the index and value of the
    /// first one beyond f16's range, if any.
    pub fn round(z: Vec<f32>) -> Result<Vec<f32>, (usize, f32)> {
        let rounded: Vec<f32> = z.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
        match rounded.iter().position(|v| v.is_infinite()) {
            Some(index) => Err((index, z[index])),
            None => Ok(rounded),
        }
    }

    /// Holds a code that [`ServedCode::round`] has rounded (exactly, then).
    pub fn new(z: &[f32]) -> Self {
        Self(z.iter().map(|&v| f16::from_f32(v)).collect())
    }

    /// The values, in f32 as the encoder and a task file take them.
    pub fn to_vec(&self) -> Vec<f32> {
        self.0.iter().map(|v| v.to_f32()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rounded_code_is_held_exactly_and_within_f16_precision_of_the_upload() {
        let upload = vec![0.7, -1.0e4, 1.0e-3, 0.0, 123.456];
        let rounded = ServedCode::round(upload.clone()).unwrap();
        for (sent, served) in upload.iter().zip(&rounded) {
            assert!(
                (sent - served).abs() <= sent.abs() * 2f32.powi(-11),
                "{sent} → {served}"
            );
        }
        assert_ne!(rounded[0], 0.7, "0.7 has no exact f16");
        let held = ServedCode::new(&rounded);
        assert_eq!(held.to_vec(), rounded);
    }

    #[test]
    fn a_value_beyond_f16s_range_is_refused_and_named() {
        assert_eq!(ServedCode::round(vec![1.0, -7.0e4, 2.0]), Err((1, -7.0e4)));
        assert!(ServedCode::round(vec![65_504.0, 1.0e-9]).is_ok());
    }
}
