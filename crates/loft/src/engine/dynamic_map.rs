//! bitsandbytes' dynamic quantization map: the 256 8-bit codes its blockwise quantization rounds to. 8-bit AdamW
//! stores both moments in it (train/optim.rs), and NF4's double quantization stores the block scales in it
//! (engine/nf4.rs).

#![forbid(unsafe_code)]

/// bitsandbytes' dynamic quantization map (`create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`):
/// 256 sorted values in [-1, 1] (signed) or [0, 1] (unsigned). For each decade 10^(i−6), i = 0..6, the midpoints
/// of `linspace(0.1, 1, k+1)` (f32) scaled by 10^(i−6), with k = 2^i (signed; and their negatives) or 2^(i+1)
/// (unsigned); then 0 and 1.
pub fn create_dynamic_map(signed: bool) -> [f32; 256] {
    let mut data: Vec<f64> = Vec::with_capacity(256);
    for i in 0..7 {
        let items = if signed { 1usize << i } else { 1usize << (i + 1) };
        let boundaries = linspace_f32(0.1, 1.0, items + 1);
        let scale = 10f64.powi(i - 6);
        for w in boundaries.windows(2) {
            let mean = ((w[0] + w[1]) / 2.0) as f64; // f32 in torch, then a Python float
            data.push(scale * mean);
            if signed {
                data.push(-scale * mean);
            }
        }
    }
    data.push(0.0);
    data.push(1.0);
    debug_assert_eq!(data.len(), 256);
    let mut map = [0f32; 256];
    for (dst, src) in map.iter_mut().zip(&data) {
        *dst = *src as f32;
    }
    map.sort_by(f32::total_cmp);
    map
}

/// `torch.linspace(start, end, steps, dtype=float32)` as torch's CPU kernel computes it: from the start for the
/// first half, from the end for the second.
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| if i < halfway { start + step * i as f32 } else { end - step * (steps - i - 1) as f32 })
        .collect()
}

/// The index of the map value nearest to `x` (ties between two codes go to the lower one, a NaN to code 0,
/// as bitsandbytes' `quantize_2D`).
pub fn nearest_code(map: &[f32; 256], x: f32) -> u8 {
    // Largest i with map[i] ≤ x (0 when x is below the map): a fixed 8-step search.
    let mut i = 0usize;
    for step in [128, 64, 32, 16, 8, 4, 2, 1] {
        if map[i + step] <= x {
            i += step;
        }
    }
    if i < 255 && x > (map[i] + map[i + 1]) * 0.5 {
        i += 1;
    }
    i as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_map_matches_bitsandbytes() {
        // Entries printed by `bitsandbytes.functional.create_dynamic_map()` (0.50.2).
        let m = create_dynamic_map(true);
        assert_eq!((m[0], m[127], m[128], m[255]), (-0.992_968_75, 0.0, 5.500_000_4e-7, 1.0));
        assert!(m.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn linspace_matches_torch_endpoints() {
        let l = linspace_f32(0.1, 1.0, 65);
        assert_eq!((l[0], l[64]), (0.1, 1.0));
        assert!(l.windows(2).all(|w| w[0] < w[1]));
    }
}
