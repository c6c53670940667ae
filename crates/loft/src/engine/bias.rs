//! A frozen bias added to every row of a projection's output: y[N, O] += b[O] (Qwen2's q/k/v biases). The bias
//! is never trained and addition passes dy through unchanged, so the op has no backward. Legend: N = rows,
//! O = the projection's output features.

#![forbid(unsafe_code)]

/// y[N, O] += b[O], row by row.
pub fn bias_forward(y: &mut [f32], b: &[f32], n: usize) {
    let o = b.len();
    assert!(y.len() >= n * o, "bias_forward: shapes");
    for row in y[..n * o].chunks_exact_mut(o) {
        row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn adds_the_bias_to_every_row_and_leaves_the_rest() {
        let mut y = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        super::bias_forward(&mut y, &[10.0, 20.0, 30.0], 2);
        assert_eq!(y, [11.0, 22.0, 33.0, 14.0, 25.0, 36.0, 7.0]);
    }
}
