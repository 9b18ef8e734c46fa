//! A restricted pickle reader for PyTorch `state_dict`s.
//!
//! It interprets the opcodes `torch.save` emits for a dict of tensors and builds plain data;
//! nothing is executed or imported. The only globals accepted are `collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter` and the typed
//! storage classes (`torch.FloatStorage`, ...). Anything else is refused with
//! [`Error::UnsafePickle`](crate::Error::UnsafePickle).

use std::collections::HashMap;

/// A value on the pickle stack.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// An accepted global, by `module.name`.
    Global(String),
    /// A storage named by a persistent id: `(dtype name, archive key, element count)`.
    Storage {
        dtype: String,
        key: String,
        numel: usize,
    },
    /// A tensor over a storage.
    Tensor(TensorRef),
    Mark,
}

/// A strided view into a storage.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorRef {
    pub dtype: String,
    pub key: String,
    pub numel: usize,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

const ALLOWED: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
];

/// The element type of a `torch.*Storage` class, or `None` for any other global.
fn storage_dtype(global: &str) -> Option<&'static str> {
    Some(match global {
        "torch.FloatStorage" => "f32",
        "torch.DoubleStorage" => "f64",
        "torch.HalfStorage" => "f16",
        "torch.BFloat16Storage" => "bf16",
        "torch.LongStorage" => "i64",
        "torch.IntStorage" => "i32",
        "torch.ShortStorage" => "i16",
        "torch.CharStorage" => "i8",
        "torch.ByteStorage" => "u8",
        "torch.BoolStorage" => "bool",
        _ => return None,
    })
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

type PResult<T> = std::result::Result<T, String>;

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("truncated pickle: {n} bytes wanted at offset {}", self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> PResult<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> PResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> PResult<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }

    fn line(&mut self) -> PResult<String> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or("unterminated GLOBAL")?;
        let s = String::from_utf8(rest[..n].to_vec()).map_err(|_| "GLOBAL name is not UTF-8")?;
        self.pos += n + 1;
        Ok(s)
    }

    fn text(&mut self, n: usize) -> PResult<Value> {
        let b = self.take(n)?;
        Ok(Value::Str(String::from_utf8(b.to_vec()).map_err(|_| "string is not UTF-8")?))
    }

    fn pop(&mut self) -> PResult<Value> {
        self.stack.pop().ok_or_else(|| "stack underflow".to_string())
    }

    fn top(&mut self) -> PResult<&mut Value> {
        self.stack.last_mut().ok_or_else(|| "stack underflow".to_string())
    }

    /// Pops everything down to the last MARK.
    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let at = self.stack.iter().rposition(|v| *v == Value::Mark).ok_or("MARK missing")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn memo_get(&mut self, k: u32) -> PResult<()> {
        let v = self.memo.get(&k).cloned().ok_or_else(|| format!("memo key {k} unset"))?;
        self.stack.push(v);
        Ok(())
    }

    fn memo_put(&mut self, k: u32) -> PResult<()> {
        let v = self.stack.last().cloned().ok_or("stack underflow")?;
        self.memo.insert(k, v);
        Ok(())
    }

    fn global(&mut self, module: String, name: String) -> PResult<()> {
        let full = format!("{module}.{name}");
        if !ALLOWED.contains(&full.as_str()) && storage_dtype(&full).is_none() {
            return Err(format!("global {full} is not part of a state_dict"));
        }
        self.stack.push(Value::Global(full));
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> PResult<()> {
        if !items.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of values".into());
        }
        let Value::Dict(d) = self.top()? else {
            return Err("SETITEMS on a non-dict".into());
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }

    fn reduce(&mut self) -> PResult<()> {
        let args = self.pop()?;
        let func = self.pop()?;
        let Value::Tuple(args) = args else {
            return Err("REDUCE arguments are not a tuple".into());
        };
        let Value::Global(func) = func else {
            return Err("REDUCE on something that is not an accepted global".into());
        };
        let v = match func.as_str() {
            "collections.OrderedDict" if args.is_empty() => Value::Dict(Vec::new()),
            "torch._utils._rebuild_tensor_v2" => rebuild_tensor(args)?,
            "torch._utils._rebuild_parameter" => args.into_iter().next().ok_or("_rebuild_parameter without data")?,
            other => return Err(format!("call of {other} with these arguments is not part of a state_dict")),
        };
        self.stack.push(v);
        Ok(())
    }

    fn persistent_load(&mut self) -> PResult<()> {
        let pid = self.pop()?;
        let Value::Tuple(t) = pid else {
            return Err("persistent id is not a tuple".into());
        };
        match t.as_slice() {
            [Value::Str(tag), Value::Global(ty), Value::Str(key), _location, Value::Int(numel)] if tag == "storage" => {
                let dtype = storage_dtype(ty).ok_or_else(|| format!("{ty} is not a storage type"))?;
                let numel = usize::try_from(*numel).map_err(|_| format!("storage {key} has {numel} elements"))?;
                self.stack.push(Value::Storage {
                    dtype: dtype.into(),
                    key: key.clone(),
                    numel,
                });
                Ok(())
            }
            _ => Err("persistent id is not ('storage', type, key, location, numel)".into()),
        }
    }

    fn run(mut self) -> PResult<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.u64()?; // FRAME
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v.into()))
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v.into()))
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v.into()))
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(format!("LONG1 of {n} bytes"));
                    }
                    let mut v: i64 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= i64::from(byte) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v));
                }
                b'G' => {
                    let b = self.take(8)?;
                    self.stack
                        .push(Value::Float(f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.text(n)?;
                    self.stack.push(v)
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.text(n)?;
                    self.stack.push(v)
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let v = self.text(n)?;
                    self.stack.push(v)
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let v = self.text(n)?;
                    self.stack.push(v)
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    if items.contains(&Value::Mark) {
                        return Err("MARK inside TUPLEn".into());
                    }
                    self.stack.push(Value::Tuple(items))
                }
                b'q' => {
                    let k = self.u8()?;
                    self.memo_put(k.into())?
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?
                }
                b'h' => {
                    let k = self.u8()?;
                    self.memo_get(k.into())?
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?
                }
                0x93 => {
                    let (Value::Str(name), Value::Str(module)) = (self.pop()?, self.pop()?) else {
                        return Err("STACK_GLOBAL on non-strings".into());
                    };
                    self.global(module, name)?
                }
                b'Q' => self.persistent_load()?,
                b'R' => self.reduce()?,
                b'b' => {
                    // BUILD: an OrderedDict's state is its `_metadata` (version numbers); ignored.
                    let _state = self.pop()?;
                    if !matches!(self.top()?, Value::Dict(_)) {
                        return Err("BUILD on something other than a dict".into());
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?
                }
                b'a' => {
                    let v = self.pop()?;
                    let Value::List(l) = self.top()? else {
                        return Err("APPEND on a non-list".into());
                    };
                    l.push(v)
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let Value::List(l) = self.top()? else {
                        return Err("APPENDS on a non-list".into());
                    };
                    l.extend(items)
                }
                other => {
                    return Err(format!(
                        "opcode 0x{other:02x} at offset {} is not needed by a state_dict",
                        self.pos - 1
                    ))
                }
            }
        }
    }
}

fn ints(v: &Value, what: &str) -> PResult<Vec<usize>> {
    let Value::Tuple(items) = v else {
        return Err(format!("tensor {what} is not a tuple"));
    };
    items
        .iter()
        .map(|i| match i {
            Value::Int(n) => usize::try_from(*n).map_err(|_| format!("tensor {what} holds {n}")),
            _ => Err(format!("tensor {what} holds a non-integer")),
        })
        .collect()
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, metadata])`.
fn rebuild_tensor(args: Vec<Value>) -> PResult<Value> {
    let [storage, offset, size, stride, ..] = args.as_slice() else {
        return Err("_rebuild_tensor_v2 with too few arguments".into());
    };
    let Value::Storage { dtype, key, numel } = storage else {
        return Err("_rebuild_tensor_v2 without a storage".into());
    };
    let Value::Int(offset) = offset else {
        return Err("tensor offset is not an integer".into());
    };
    let offset = usize::try_from(*offset).map_err(|_| "negative tensor offset")?;
    let (shape, stride) = (ints(size, "size")?, ints(stride, "stride")?);
    if shape.len() != stride.len() {
        return Err("tensor size and stride differ in length".into());
    }
    // The furthest element the view reaches must lie inside the storage.
    if !shape.contains(&0) {
        let last = shape
            .iter()
            .zip(&stride)
            .try_fold(offset, |acc, (&d, &s)| (d - 1).checked_mul(s).and_then(|v| v.checked_add(acc)));
        match last {
            Some(l) if l < *numel => {}
            _ => {
                return Err(format!(
                    "tensor view {shape:?}/{stride:?}+{offset} reaches past its storage of {numel} elements"
                ))
            }
        }
    }
    Ok(Value::Tensor(TensorRef {
        dtype: dtype.clone(),
        key: key.clone(),
        numel: *numel,
        offset,
        shape,
        stride,
    }))
}

/// Runs the pickle and returns the `(name, tensor)` entries of the top-level dict.
pub(crate) fn state_dict(data: &[u8]) -> PResult<Vec<(String, TensorRef)>> {
    let m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
    };
    let Value::Dict(items) = m.run()? else {
        return Err("the pickle does not hold a dict (a state_dict); whole pickled models are not supported".into());
    };
    items
        .into_iter()
        .map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => Ok((k, t)),
            (k, _) => Err(format!("entry {k:?} of the state_dict is not a tensor")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_arbitrary_globals() {
        // cos\nsystem\n(S'echo hi'\ntR.  -- the classic malicious pickle
        let evil = b"cos\nsystem\n(S'echo hi'\ntR.";
        let e = state_dict(evil).unwrap_err();
        assert!(e.contains("os.system"), "{e}");
    }

    #[test]
    fn refuses_unknown_opcodes_and_truncation() {
        assert!(state_dict(b"\x80\x02}q\x00(").is_err());
        assert!(state_dict(b"\x80\x02\x81").unwrap_err().contains("0x81"));
        assert!(state_dict(b"").is_err());
    }
}
