//! ImageNet helpers: the 1000 class names, [`decode_predictions`], and the image pipelines
//! that feed the networks exactly as Keras and torchvision do ([`image`]).

pub mod image;
mod jpeg;
mod stream;

use std::sync::OnceLock;

use crate::error::{Error, Result, ShapeFmt};
use crate::layers::TensorRef;

/// Keras' `imagenet_class_index.json` (index -> [wnid, name]), embedded.
const CLASS_INDEX_JSON: &str = include_str!("imagenet_class_index.json");

/// Number of ImageNet classes.
pub const NUM_CLASSES: usize = 1000;

/// One ImageNet class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageNetClass {
    /// WordNet id, e.g. `n02504013`.
    pub wnid: String,
    /// Keras' label, e.g. `Indian_elephant`.
    pub label: String,
}

/// The 1000 classes in index order (Keras' class index, parsed once).
pub fn classes() -> &'static [ImageNetClass] {
    static CLASSES: OnceLock<Vec<ImageNetClass>> = OnceLock::new();
    CLASSES.get_or_init(|| {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(CLASS_INDEX_JSON).unwrap_or_default();
        (0..NUM_CLASSES)
            .map(|i| {
                let entry = map.get(&i.to_string()).and_then(|v| v.as_array());
                let field = |k: usize| {
                    entry
                        .and_then(|e| e.get(k))
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                ImageNetClass {
                    wnid: field(0),
                    label: field(1),
                }
            })
            .collect()
    })
}

/// One prediction, as Keras' `decode_predictions` gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// Class index (0..1000).
    pub index: usize,
    /// WordNet id.
    pub wnid: String,
    /// Class name.
    pub label: String,
    /// The model's score for it.
    pub probability: f32,
}

/// The `top` highest-scoring classes of each row of `probs` (shape `(n, 1000)`), highest
/// first, as `(wnid, name, probability)`: Keras' `decode_predictions(preds, top)`.
///
/// Each row must be a probability distribution (values in [0, 1] summing to 1 within 1e-3),
/// as a softmax head gives; raw logits (a torchvision model's output) are refused with
/// [`Error::Shape`]: pass them to [`decode_logits`] instead.
pub fn decode_predictions(probs: &TensorRef, top: usize) -> Result<Vec<Vec<Prediction>>> {
    check_classes(probs.shape(), "decode_predictions")?;
    for (i, row) in probs.outer_iter().enumerate() {
        let sum: f64 = row.iter().map(|&v| f64::from(v)).sum();
        let outside = row.iter().find(|&&v| !(0.0..=1.0).contains(&v));
        if outside.is_some() || (sum - 1.0).abs() > 1e-3 {
            return Err(Error::shape(
                "decode_predictions",
                "rows of probabilities (each in [0, 1], summing to 1); for logits use decode_logits, which applies the softmax",
                match outside {
                    Some(v) => format!("row {i} holds {v}"),
                    None => format!("row {i} sums to {sum}"),
                },
            ));
        }
    }
    Ok(top_classes(probs, top))
}

/// [`decode_predictions`] for logits (a model without a softmax head, such as torchvision's
/// ResNets): each row goes through the softmax first, so the `probability` fields are
/// probabilities.
pub fn decode_logits(logits: &TensorRef, top: usize) -> Result<Vec<Vec<Prediction>>> {
    check_classes(logits.shape(), "decode_logits")?;
    let mut probs = logits.to_owned();
    for mut row in probs.outer_iter_mut() {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        row.mapv_inplace(|v| (v - max).exp());
        let sum: f32 = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
    Ok(top_classes(&probs, top))
}

fn check_classes(shape: &[usize], what: &str) -> Result<()> {
    if shape.len() != 2 || shape[1] != NUM_CLASSES {
        return Err(Error::shape(
            what,
            format!("a batch of shape (n, {NUM_CLASSES})"),
            format!("{}", ShapeFmt(shape)),
        ));
    }
    Ok(())
}

fn top_classes(probs: &TensorRef, top: usize) -> Vec<Vec<Prediction>> {
    let classes = classes();
    probs
        .outer_iter()
        .map(|row| {
            let mut order: Vec<usize> = (0..NUM_CLASSES).collect();
            // Highest first; NaN sorts last; ties keep the higher index first, as Keras'
            // `argsort()[-top:][::-1]` does.
            order.sort_by(|&a, &b| {
                row[b]
                    .partial_cmp(&row[a])
                    .unwrap_or_else(|| row[a].is_nan().cmp(&row[b].is_nan()))
                    .then(b.cmp(&a))
            });
            order
                .into_iter()
                .take(top)
                .map(|i| Prediction {
                    index: i,
                    wnid: classes[i].wnid.clone(),
                    label: classes[i].label.clone(),
                    probability: row[i],
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_class_index_is_complete() {
        let c = classes();
        assert_eq!(c.len(), 1000);
        assert_eq!((c[0].wnid.as_str(), c[0].label.as_str()), ("n01440764", "tench"));
        assert_eq!((c[385].wnid.as_str(), c[385].label.as_str()), ("n02504013", "Indian_elephant"));
        assert_eq!(c[101].label, "tusker");
        assert_eq!(c[386].label, "African_elephant");
        assert!(c.iter().all(|k| k.wnid.starts_with('n') && !k.label.is_empty()));
    }

    #[test]
    fn decodes_top_k_in_order() {
        let mut p = ndarray::Array2::<f32>::zeros((2, 1000));
        p[[0, 385]] = 0.8;
        p[[0, 101]] = 0.15;
        p[[0, 386]] = 0.05;
        p[[1, 7]] = 1.0;
        let d = decode_predictions(&p.into_dyn(), 3).unwrap();
        assert_eq!(
            d[0].iter().map(|x| x.label.as_str()).collect::<Vec<_>>(),
            ["Indian_elephant", "tusker", "African_elephant"]
        );
        assert_eq!(d[1][0].index, 7);
        assert!(decode_predictions(&ndarray::Array2::<f32>::zeros((1, 10)).into_dyn(), 3).is_err());
    }
}
