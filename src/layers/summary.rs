use std::fmt;

use super::{LayerPath, ParamCount};
use crate::error::ShapeFmt;

/// One line of a [`Summary`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryRow {
    /// Where the layer sits.
    pub path: LayerPath,
    /// Its type, as Keras names it.
    pub type_name: String,
    /// Output shape, batch axis included.
    pub output_shape: Vec<usize>,
    /// Its own parameters.
    pub params: ParamCount,
}

impl SummaryRow {
    /// A row for a block's joining op (an add, a concatenation, a multiply), which has no
    /// parameters of its own.
    pub fn join(path: LayerPath, type_name: &str, output_shape: Vec<usize>) -> Self {
        SummaryRow {
            path,
            type_name: type_name.into(),
            output_shape,
            params: ParamCount::default(),
        }
    }
}

/// A model's layers, output shapes and parameter counts, printed like Keras' `model.summary()`.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Title line (`Model: "NAME"`), empty for none.
    pub name: String,
    /// Input shape, batch axis included.
    pub input_shape: Vec<usize>,
    /// Output shape.
    pub output_shape: Vec<usize>,
    /// Leaf layers (plus `Add`/`Activation` rows for residual joins), in execution order.
    pub rows: Vec<SummaryRow>,
    /// Print only each layer's own name (Keras models, whose names are unique) instead of its
    /// full dotted path (torchvision models).
    pub leaf_names: bool,
}

impl Summary {
    /// A summary from its rows.
    pub fn new(input_shape: Vec<usize>, output_shape: Vec<usize>, rows: Vec<SummaryRow>) -> Self {
        Summary {
            name: String::new(),
            input_shape,
            output_shape,
            rows,
            leaf_names: false,
        }
    }

    /// Sum over the rows.
    pub fn total(&self) -> ParamCount {
        self.rows.iter().fold(ParamCount::default(), |acc, r| acc + r.params)
    }
}

/// `1234567` as `1,234,567`.
fn thousands(v: usize) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A shape with the batch axis shown as `None`, as Keras prints it.
fn keras_shape(shape: &[usize]) -> String {
    let mut s = ShapeFmt(shape).to_string();
    if let Some(first) = shape.first() {
        let n = first.to_string();
        s.replace_range(1..1 + n.len(), "None");
    }
    s
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .rows
            .iter()
            .map(|r| {
                let name = if self.leaf_names {
                    r.path.leaf().to_string()
                } else {
                    r.path.dotted()
                };
                format!("{name} ({})", r.type_name)
            })
            .collect();
        let w0 = names.iter().map(String::len).max().unwrap_or(0).max(28) + 2;
        let w1 = self
            .rows
            .iter()
            .map(|r| keras_shape(&r.output_shape).len())
            .max()
            .unwrap_or(0)
            .max(20)
            + 2;
        let width = w0 + w1 + 12;
        if !self.name.is_empty() {
            writeln!(f, "Model: \"{}\"", self.name)?;
        }
        writeln!(f, "{}", "_".repeat(width))?;
        writeln!(f, " {:<w0$}{:<w1$}Param #", "Layer (type)", "Output Shape")?;
        writeln!(f, "{}", "=".repeat(width))?;
        writeln!(f, " {:<w0$}{:<w1$}{}", "input (InputLayer)", keras_shape(&self.input_shape), 0)?;
        for (r, name) in self.rows.iter().zip(&names) {
            writeln!(
                f,
                " {:<w0$}{:<w1$}{}",
                name,
                keras_shape(&r.output_shape),
                thousands(r.params.total())
            )?;
        }
        writeln!(f, "{}", "=".repeat(width))?;
        let t = self.total();
        writeln!(f, "Total params: {}", thousands(t.total()))?;
        writeln!(f, "Trainable params: {}", thousands(t.trainable))?;
        writeln!(f, "Non-trainable params: {}", thousands(t.non_trainable))?;
        write!(f, "{}", "_".repeat(width))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_keras() {
        assert_eq!(thousands(25636712), "25,636,712");
        assert_eq!(thousands(999), "999");
        assert_eq!(keras_shape(&[1, 112, 112, 64]), "(None, 112, 112, 64)");
        assert_eq!(keras_shape(&[12, 1000]), "(None, 1000)");
    }
}
