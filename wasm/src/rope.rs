//! RoPE cos/sin tables and the row kernels that rotate or copy runs of `f32`.
//!
//! Every rotation goes through one formula: `out[j] = x[j] * cos[j] + x[partner(j)] * sin[j]`,
//! where `partner(j)` is `j ^ 1` for the `adjacent` layout and `(j + dim / 2) % dim` for the
//! `halves` layout. The table stores `cos` and a signed `sin` expanded to one value per element,
//! so the SIMD loop loads them as whole vectors and the scalar loop computes the same products.

use crate::Status;

/// Pairing of the rotated elements of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs `(2i, 2i + 1)`: Meta checkpoints and llama.cpp's normal rope mode.
    Adjacent,
    /// Pairs `(i, i + dim / 2)`: the `rotate_half` layout of Hugging Face checkpoints.
    Halves,
}

impl RopeLayout {
    /// Converts the layout code of the C interface: 0 is `Adjacent`, 1 is `Halves`.
    pub fn from_code(code: u32) -> Result<Self, Status> {
        match code {
            0 => Ok(RopeLayout::Adjacent),
            1 => Ok(RopeLayout::Halves),
            _ => Err(Status::InvalidLayout),
        }
    }

    /// Returns the layout code of the C interface, the inverse of `from_code`.
    pub fn code(self) -> u32 {
        match self {
            RopeLayout::Adjacent => 0,
            RopeLayout::Halves => 1,
        }
    }
}

/// Cos/sin values of every rotation delta in `-max_delta..=max_delta`.
#[derive(Debug)]
pub struct RopeTable {
    /// Number of leading dims of a head that are rotated (even).
    dim: usize,
    layout: RopeLayout,
    /// Largest `|delta|` the table covers.
    max_delta: usize,
    /// `(delta + max_delta, 2 * dim)` f32: `dim` cos values, then `dim` signed sin values.
    values: Vec<f32>,
}

impl RopeTable {
    /// Builds the table from the inverse frequency of each pair (`dim / 2` values).
    ///
    /// Angles and their cos/sin are computed in f64 and rounded once to f32.
    pub fn new(
        dim: usize,
        layout: RopeLayout,
        inv_freq: &[f64],
        max_delta: usize,
    ) -> Result<Self, Status> {
        if dim % 2 != 0 {
            return Err(Status::InvalidRopeDim);
        }
        if inv_freq.len() != dim / 2 || inv_freq.iter().any(|f| !f.is_finite()) {
            return Err(Status::InvalidInvFreq);
        }
        let rows = max_delta
            .checked_mul(2)
            .and_then(|n| n.checked_add(1))
            .ok_or(Status::TooLarge)?;
        let len = rows.checked_mul(2 * dim).ok_or(Status::TooLarge)?;
        let mut values = try_zeroed(len)?;

        let half = dim / 2;
        for row in 0..rows {
            let delta = row as f64 - max_delta as f64;
            let (cos_row, sin_row) = values[row * 2 * dim..(row + 1) * 2 * dim].split_at_mut(dim);
            for (i, &freq) in inv_freq.iter().enumerate() {
                let angle = delta * freq;
                let (c, s) = (angle.cos() as f32, angle.sin() as f32);
                // Element `first` takes `-sin * partner`, element `second` takes `+sin * partner`.
                let (first, second) = match layout {
                    RopeLayout::Adjacent => (2 * i, 2 * i + 1),
                    RopeLayout::Halves => (i, i + half),
                };
                cos_row[first] = c;
                cos_row[second] = c;
                sin_row[first] = -s;
                sin_row[second] = s;
            }
        }
        Ok(RopeTable {
            dim,
            layout,
            max_delta,
            values,
        })
    }

    /// Number of leading dims of a head that are rotated.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Largest `|delta|` the table covers.
    pub fn max_delta(&self) -> usize {
        self.max_delta
    }

    /// Returns the expanded `(cos, signed sin)` rows of `delta`, or `None` outside the table.
    pub fn row(&self, delta: i64) -> Option<(&[f32], &[f32])> {
        let max = self.max_delta as i64;
        if delta < -max || delta > max {
            return None;
        }
        let start = (delta + max) as usize * 2 * self.dim;
        Some(self.values[start..start + 2 * self.dim].split_at(self.dim))
    }

    /// Writes `src` rotated by `delta` positions into `dst`; dims past `dim` are copied as is.
    ///
    /// Returns `false` and leaves `dst` unchanged when the lengths differ, `src` is shorter
    /// than `dim` or `delta` lies outside the table.
    pub fn rotate(&self, dst: &mut [f32], src: &[f32], delta: i64, simd: bool) -> bool {
        if dst.len() != src.len() || src.len() < self.dim {
            return false;
        }
        let (cos, sin) = match self.row(delta) {
            Some(row) => row,
            None => return false,
        };
        let (dst_rot, dst_rest) = dst.split_at_mut(self.dim);
        let (src_rot, src_rest) = src.split_at(self.dim);
        if simd {
            rotate_simd(dst_rot, src_rot, cos, sin, self.layout);
        } else {
            rotate_scalar(dst_rot, src_rot, cos, sin, self.layout);
        }
        copy_f32(dst_rest, src_rest, simd);
        true
    }
}

/// Allocates `len` zeroed f32, reporting a failed allocation instead of aborting.
pub fn try_zeroed(len: usize) -> Result<Vec<f32>, Status> {
    let mut buffer = Vec::new();
    buffer
        .try_reserve_exact(len)
        .map_err(|_| Status::OutOfMemory)?;
    buffer.resize(len, 0.0);
    Ok(buffer)
}

/// Rotates one run of `dim` elements with plain f32 arithmetic. All slices have length `dim`.
fn rotate_scalar(dst: &mut [f32], src: &[f32], cos: &[f32], sin: &[f32], layout: RopeLayout) {
    let dim = src.len();
    match layout {
        RopeLayout::Adjacent => {
            for p in (0..dim).step_by(2) {
                let (x, y) = (src[p], src[p + 1]);
                dst[p] = x * cos[p] + y * sin[p];
                dst[p + 1] = y * cos[p + 1] + x * sin[p + 1];
            }
        }
        RopeLayout::Halves => {
            let half = dim / 2;
            for i in 0..half {
                let (x, y) = (src[i], src[i + half]);
                dst[i] = x * cos[i] + y * sin[i];
                dst[i + half] = y * cos[i + half] + x * sin[i + half];
            }
        }
    }
}

/// Rotates one run of `dim` elements four lanes at a time, with the same products and sums
/// as `rotate_scalar`, so both paths return identical bits.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn rotate_simd(dst: &mut [f32], src: &[f32], cos: &[f32], sin: &[f32], layout: RopeLayout) {
    use core::arch::wasm32::{f32x4_add, f32x4_mul, i32x4_shuffle, v128, v128_load, v128_store};

    let dim = src.len();
    if dst.len() != dim || cos.len() != dim || sin.len() != dim {
        return rotate_scalar(dst, src, cos, sin, layout);
    }
    match layout {
        RopeLayout::Adjacent => {
            let vector_end = dim - dim % 4;
            let mut j = 0;
            while j < vector_end {
                // SAFETY: `j + 4 <= vector_end <= dim` and all four slices have length `dim`,
                // so each 16-byte access stays inside its slice. wasm loads and stores accept
                // unaligned addresses.
                unsafe {
                    let x = v128_load(src.as_ptr().add(j) as *const v128);
                    let c = v128_load(cos.as_ptr().add(j) as *const v128);
                    let s = v128_load(sin.as_ptr().add(j) as *const v128);
                    let partner = i32x4_shuffle::<1, 0, 3, 2>(x, x);
                    let out = f32x4_add(f32x4_mul(x, c), f32x4_mul(partner, s));
                    v128_store(dst.as_mut_ptr().add(j) as *mut v128, out);
                }
                j += 4;
            }
            // A `dim` of 4k + 2 leaves one pair.
            if vector_end < dim {
                let range = vector_end..dim;
                rotate_scalar(
                    &mut dst[range.clone()],
                    &src[range.clone()],
                    &cos[range.clone()],
                    &sin[range.clone()],
                    layout,
                );
            }
        }
        RopeLayout::Halves => {
            let half = dim / 2;
            let vector_end = half - half % 4;
            let mut i = 0;
            while i < vector_end {
                // SAFETY: `i + 4 <= half` and `i + half + 4 <= dim`, and all four slices have
                // length `dim`, so each 16-byte access stays inside its slice. wasm loads and
                // stores accept unaligned addresses.
                unsafe {
                    let x = v128_load(src.as_ptr().add(i) as *const v128);
                    let y = v128_load(src.as_ptr().add(i + half) as *const v128);
                    let c_low = v128_load(cos.as_ptr().add(i) as *const v128);
                    let c_high = v128_load(cos.as_ptr().add(i + half) as *const v128);
                    let s_low = v128_load(sin.as_ptr().add(i) as *const v128);
                    let s_high = v128_load(sin.as_ptr().add(i + half) as *const v128);
                    let low = f32x4_add(f32x4_mul(x, c_low), f32x4_mul(y, s_low));
                    let high = f32x4_add(f32x4_mul(y, c_high), f32x4_mul(x, s_high));
                    v128_store(dst.as_mut_ptr().add(i) as *mut v128, low);
                    v128_store(dst.as_mut_ptr().add(i + half) as *mut v128, high);
                }
                i += 4;
            }
            for i in vector_end..half {
                let (x, y) = (src[i], src[i + half]);
                dst[i] = x * cos[i] + y * sin[i];
                dst[i + half] = y * cos[i + half] + x * sin[i + half];
            }
        }
    }
}

/// Falls back to the scalar loop on builds without SIMD128.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn rotate_simd(dst: &mut [f32], src: &[f32], cos: &[f32], sin: &[f32], layout: RopeLayout) {
    rotate_scalar(dst, src, cos, sin, layout)
}

/// Copies `src` into `dst` (same length; shorter of the two otherwise), 16 floats per step
/// when `simd` is set and the build has SIMD128.
pub fn copy_f32(dst: &mut [f32], src: &[f32], simd: bool) {
    let len = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..len], &src[..len]);
    if simd {
        copy_simd(dst, src);
    } else {
        dst.copy_from_slice(src);
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn copy_simd(dst: &mut [f32], src: &[f32]) {
    use core::arch::wasm32::{v128, v128_load, v128_store};

    let len = dst.len().min(src.len());
    let vector_end = len - len % 16;
    let mut j = 0;
    while j < vector_end {
        // SAFETY: `j + 16 <= len`, and both slices have at least `len` elements, so the four
        // 16-byte loads and stores stay inside them. The slices cannot overlap because one is
        // borrowed mutably. wasm loads and stores accept unaligned addresses.
        unsafe {
            let from = src.as_ptr().add(j) as *const v128;
            let to = dst.as_mut_ptr().add(j) as *mut v128;
            let a = v128_load(from);
            let b = v128_load(from.add(1));
            let c = v128_load(from.add(2));
            let d = v128_load(from.add(3));
            v128_store(to, a);
            v128_store(to.add(1), b);
            v128_store(to.add(2), c);
            v128_store(to.add(3), d);
        }
        j += 16;
    }
    dst[vector_end..len].copy_from_slice(&src[vector_end..len]);
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn copy_simd(dst: &mut [f32], src: &[f32]) {
    dst.copy_from_slice(src);
}

/// Reports whether this build contains the SIMD128 loops.
pub const SIMD_AVAILABLE: bool = cfg!(all(target_arch = "wasm32", target_feature = "simd128"));

#[cfg(test)]
mod tests {
    use super::*;

    fn inv_freq(dim: usize, base: f64) -> Vec<f64> {
        (0..dim / 2)
            .map(|i| base.powf(-2.0 * i as f64 / dim as f64))
            .collect()
    }

    /// Rotates in f64 straight from the angle, independent of the table.
    fn rotate_f64(x: &[f64], pos: f64, freq: &[f64], layout: RopeLayout) -> Vec<f64> {
        let dim = freq.len() * 2;
        let mut out = x.to_vec();
        for (i, f) in freq.iter().enumerate() {
            let (a, b) = match layout {
                RopeLayout::Adjacent => (2 * i, 2 * i + 1),
                RopeLayout::Halves => (i, i + dim / 2),
            };
            let (c, s) = ((pos * f).cos(), (pos * f).sin());
            out[a] = x[a] * c - x[b] * s;
            out[b] = x[a] * s + x[b] * c;
        }
        out
    }

    #[test]
    fn table_rejects_bad_inputs() {
        let freq = inv_freq(4, 10000.0);
        assert!(matches!(
            RopeTable::new(3, RopeLayout::Adjacent, &freq, 4),
            Err(Status::InvalidRopeDim)
        ));
        assert!(matches!(
            RopeTable::new(6, RopeLayout::Adjacent, &freq, 4),
            Err(Status::InvalidInvFreq)
        ));
        assert!(matches!(
            RopeTable::new(4, RopeLayout::Adjacent, &[1.0, f64::NAN], 4),
            Err(Status::InvalidInvFreq)
        ));
        assert!(matches!(
            RopeLayout::from_code(2),
            Err(Status::InvalidLayout)
        ));
    }

    #[test]
    fn rotate_matches_f64_formula() {
        for layout in [RopeLayout::Adjacent, RopeLayout::Halves] {
            let freq = inv_freq(6, 10000.0);
            let table = RopeTable::new(6, layout, &freq, 50).unwrap();
            let src = [0.5f32, -1.25, 2.0, 0.75, -0.3, 1.5, 9.0, -9.0];
            let src64: Vec<f64> = src.iter().map(|&v| v as f64).collect();
            for delta in [-50i64, -17, -1, 0, 1, 33, 50] {
                let mut dst = [0f32; 8];
                assert!(table.rotate(&mut dst, &src, delta, false));
                let expected = rotate_f64(&src64[..6], delta as f64, &freq, layout);
                for j in 0..6 {
                    assert!(
                        (dst[j] as f64 - expected[j]).abs() < 1e-5,
                        "{layout:?} {delta} {j}"
                    );
                }
                assert_eq!(&dst[6..], &src[6..], "dims past the rotary dim are copied");
            }
        }
    }

    #[test]
    fn rotate_outside_table_fails() {
        let table = RopeTable::new(2, RopeLayout::Adjacent, &[1.0], 3).unwrap();
        let mut dst = [7f32; 2];
        assert!(!table.rotate(&mut dst, &[1.0, 2.0], 4, false));
        assert!(!table.rotate(&mut dst, &[1.0, 2.0], -4, false));
        assert!(!table.rotate(&mut dst, &[1.0], 0, false));
        assert_eq!(dst, [7.0, 7.0]);
    }

    #[test]
    fn rotations_compose() {
        for layout in [RopeLayout::Adjacent, RopeLayout::Halves] {
            let freq = inv_freq(8, 10000.0);
            let table = RopeTable::new(8, layout, &freq, 400).unwrap();
            let src = [1.0f32, -0.5, 0.25, 2.0, -1.5, 0.125, 3.0, -2.5];
            for (a, b) in [(3i64, 5i64), (-200, 150), (199, 200), (-7, -300), (0, 400)] {
                let mut once = [0f32; 8];
                let mut step = [0f32; 8];
                let mut twice = [0f32; 8];
                assert!(table.rotate(&mut once, &src, a + b, false));
                assert!(table.rotate(&mut step, &src, a, false));
                assert!(table.rotate(&mut twice, &step, b, false));
                for j in 0..8 {
                    assert!(
                        (once[j] - twice[j]).abs() < 1e-5,
                        "{layout:?} {a}+{b} dim {j}"
                    );
                }
            }
        }
    }

    #[test]
    fn rotate_then_inverse_restores_input() {
        let freq = inv_freq(4, 500.0);
        let table = RopeTable::new(4, RopeLayout::Halves, &freq, 100).unwrap();
        let src = [0.3f32, -0.7, 1.1, 2.2];
        let mut forward = [0f32; 4];
        let mut back = [0f32; 4];
        assert!(table.rotate(&mut forward, &src, 97, false));
        assert!(table.rotate(&mut back, &forward, -97, false));
        for j in 0..4 {
            assert!((back[j] - src[j]).abs() < 1e-6);
        }
    }

    #[test]
    fn copy_handles_every_tail_length() {
        for len in 0..40 {
            let src: Vec<f32> = (0..len).map(|i| i as f32 * 1.5).collect();
            let mut dst = vec![0f32; len];
            copy_f32(&mut dst, &src, true);
            assert_eq!(dst, src);
        }
    }
}
