//! The rectifier a fused epilogue applies last.

/// What a kernel's epilogue applies to each output value last: nothing, ReLU or ReLU6. Both
/// rectifiers clamp to `[0, upper]` (ReLU's upper bound is infinity), so a vectorised epilogue
/// does one `max` and one `min`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Rectifier {
    /// The value as it is.
    #[default]
    Identity,
    /// `max(v, 0)`.
    Relu,
    /// `min(max(v, 0), 6)` (MobileNet's ReLU6).
    Relu6,
}

impl Rectifier {
    /// The clamp's upper bound, or `None` for [`Rectifier::Identity`].
    #[inline]
    pub fn upper(self) -> Option<f32> {
        match self {
            Rectifier::Identity => None,
            Rectifier::Relu => Some(f32::INFINITY),
            Rectifier::Relu6 => Some(6.0),
        }
    }

    /// Whether it changes anything.
    #[inline]
    pub fn is_identity(self) -> bool {
        self == Rectifier::Identity
    }

    /// Applies it to one value.
    #[inline]
    pub fn apply(self, v: f32) -> f32 {
        match self.upper() {
            Some(upper) => v.max(0.0).min(upper),
            None => v,
        }
    }

    /// The derivative's mask at an output `y` it produced: 1 where the input passed through
    /// unclamped, 0 where it was clamped (at 0 for ReLU; at 0 or 6 for ReLU6).
    #[inline]
    pub fn passes(self, y: f32) -> bool {
        match self.upper() {
            Some(upper) => y > 0.0 && y < upper,
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rectifier;

    #[test]
    fn clamps_as_relu_and_relu6_do() {
        for (v, id, relu, relu6) in [(-1.5, -1.5, 0.0, 0.0), (3.0, 3.0, 3.0, 3.0), (7.25, 7.25, 7.25, 6.0)] {
            assert_eq!(Rectifier::Identity.apply(v), id);
            assert_eq!(Rectifier::Relu.apply(v), relu);
            assert_eq!(Rectifier::Relu6.apply(v), relu6);
        }
        assert!(Rectifier::Relu.passes(7.0) && !Rectifier::Relu6.passes(6.0) && !Rectifier::Relu.passes(0.0));
    }
}
