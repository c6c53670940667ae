//! Two elementwise ops Gemma's block adds to Llama's: a scale in place (the embedding × √C, the queries ×
//! √(D / query_pre_attn_scalar); the backward of x·s is the same op on the gradient) and the residual add after a
//! sublayer's output norm (its backward passes the gradient through to both operands).

#![forbid(unsafe_code)]

/// x *= s, in place.
pub fn scale_forward(x: &mut [f32], s: f32) {
    x.iter_mut().for_each(|v| *v *= s);
}

/// y += x, elementwise over y's length (x at least as long).
pub fn add_forward(y: &mut [f32], x: &[f32]) {
    assert!(x.len() >= y.len(), "add_forward: shapes");
    y.iter_mut().zip(x).for_each(|(y, x)| *y += x);
}

#[cfg(test)]
mod tests {
    #[test]
    fn scales_and_adds() {
        let mut x = vec![1.0, -2.0, 3.5];
        super::scale_forward(&mut x, 2.0);
        assert_eq!(x, [2.0, -4.0, 7.0]);
        super::add_forward(&mut x, &[1.0, 1.0, 1.0]);
        assert_eq!(x, [3.0, -3.0, 8.0]);
    }
}
