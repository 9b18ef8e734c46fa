//! Losses: softmax cross-entropy from logits, fused and numerically stable.

use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result, ShapeFmt};
use crate::layers::Tensor;

/// PyTorch's `CrossEntropyLoss` (mean over the batch) on logits `(n, classes)` with integer
/// labels, optionally label-smoothed: the target is `(1 - e)` one-hot plus `e / classes`
/// everywhere. Returns the loss and its gradient with respect to the logits,
/// `(softmax(logits) - target) / n`. Computed as `logsumexp(z) - z . target` with the row maximum
/// subtracted first, in f64: no `log` of a probability, so no overflow or `log(0)`.
///
/// Errors: a label count other than `n` or a label `>= classes` ([`Error::Shape`] / [`Error::Config`]),
/// non-finite logits ([`Error::NonFinite`], with how many), a smoothing outside `[0, 1]`.
pub fn softmax_cross_entropy(logits: &Tensor, labels: &[usize], label_smoothing: f32) -> Result<(f32, Tensor)> {
    let [n, classes] = *logits.shape() else {
        return Err(Error::shape(
            "cross-entropy",
            "logits of shape (n, classes)",
            format!("{}", ShapeFmt(logits.shape())),
        ));
    };
    if labels.len() != n || n == 0 {
        return Err(Error::shape(
            "cross-entropy",
            format!("one label per image ({n})"),
            format!("{} labels", labels.len()),
        ));
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l >= classes) {
        return Err(Error::config(
            "cross-entropy",
            format!("label {l} of image {i} is out of range: the model has {classes} classes (0..{classes})"),
        ));
    }
    if !(0.0..=1.0).contains(&label_smoothing) {
        return Err(Error::config(
            "cross-entropy",
            format!("label smoothing must be in [0, 1], got {label_smoothing}"),
        ));
    }
    let z = logits.as_standard_layout();
    let z = z.as_slice().unwrap_or(&[]);
    let bad = z.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(Error::NonFinite {
            path: "the logits".into(),
            key: "loss input".into(),
            count: bad,
        });
    }
    let e = label_smoothing as f64;
    let off = e / classes as f64;
    let mut loss = 0.0f64;
    let mut grad = vec![0.0f32; n * classes];
    for (i, (row, g)) in z.chunks_exact(classes).zip(grad.chunks_exact_mut(classes)).enumerate() {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        let lse = max + sum.ln();
        for (c, (&v, g)) in row.iter().zip(g.iter_mut()).enumerate() {
            let target = off + if c == labels[i] { 1.0 - e } else { 0.0 };
            loss += target * (lse - v as f64);
            let p = (v as f64 - lse).exp();
            *g = ((p - target) / n as f64) as f32;
        }
    }
    let grad =
        ArrayD::from_shape_vec(IxDyn(&[n, classes]), grad).map_err(|e| Error::shape("cross-entropy", "(n, classes)", e.to_string()))?;
    Ok(((loss / n as f64) as f32, grad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_logits_stay_finite_and_bad_input_is_refused() {
        let z = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1000.0, -1000.0, 0.0, 0.0, 0.0, 0.0]).unwrap();
        let (loss, g) = softmax_cross_entropy(&z, &[1, 2], 0.0).unwrap();
        // Image 0: -log softmax = 2000; image 1: log 3.
        assert!((loss as f64 - (2000.0 + 3f64.ln()) / 2.0).abs() < 1e-3, "{loss}");
        assert!(g.iter().all(|v| v.is_finite()));
        assert!((g.sum()).abs() < 1e-6, "each row of the gradient sums to 0");
        assert!(matches!(softmax_cross_entropy(&z, &[1], 0.0), Err(Error::Shape { .. })));
        assert!(matches!(softmax_cross_entropy(&z, &[1, 3], 0.0), Err(Error::Config { .. })));
        let mut nan = z.clone();
        nan[[1, 1]] = f32::NAN;
        assert!(matches!(
            softmax_cross_entropy(&nan, &[1, 2], 0.0),
            Err(Error::NonFinite { count: 1, .. })
        ));
    }
}
