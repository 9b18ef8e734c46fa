//! A guard against a layer whose lowering comes back to itself: a user layer that lowers to
//! [`Op::Opaque`](super::Op::Opaque) but leaves [`Layer::forward`] or [`Layer::output_shape`]
//! to their defaults (which lower it) would otherwise recurse until the stack overflows.

use std::cell::RefCell;

use crate::error::{Error, Result};
use crate::layers::Layer;

thread_local! {
    /// The layers (address and type) whose default forward or shape is running on this thread.
    static ACTIVE: RefCell<Vec<(usize, &'static str)>> = const { RefCell::new(Vec::new()) };
}

/// Marks `layer` active until the returned value drops.
pub(super) struct Active((usize, &'static str));

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.with(|a| {
            let mut a = a.borrow_mut();
            if let Some(i) = a.iter().rposition(|k| *k == self.0) {
                a.remove(i);
            }
        });
    }
}

pub(super) fn enter<L: Layer + ?Sized>(layer: &L) -> Result<Active> {
    let key = (layer as *const L as *const () as usize, std::any::type_name::<L>());
    ACTIVE.with(|a| {
        let mut a = a.borrow_mut();
        if a.contains(&key) {
            return Err(Error::config(
                layer.type_name(),
                "this layer lowers to an opaque op but does not implement `forward` and `output_shape` itself",
            ));
        }
        a.push(key);
        Ok(Active(key))
    })
}
