//! A restricted pickle reader for PyTorch `state_dict`s.
//!
//! It interprets the opcodes `torch.save` emits for a dict of tensors and builds plain data;
//! nothing is executed or imported. The only globals accepted are `collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter` and the typed
//! storage classes (`torch.FloatStorage`, ...). Anything else is refused with
//! [`Error::UnsafePickle`](crate::Error::UnsafePickle).
//!
//! Values live in an arena and refer to each other by index, as Python's objects do by
//! reference: a memo entry fetched twice is one value, not a copy, so a pickle that "doubles"
//! a list through its memo costs two indices, not twice the memory. Nothing here recurses:
//! building, dropping and describing values are loops, whatever the nesting. The nesting depth
//! and the memo size are still limited by the [`LoadBudget`], and every value costs at least
//! one byte of the pickle, so the arena is never larger than the pickle's own length.

use std::collections::HashMap;

use crate::budget::{LoadBudget, Spend};
use crate::error::{Error, Result};

/// Index of a value in the arena.
type Id = u32;

/// A value built by the pickle.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, as its little-endian two's-complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
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
}

impl Value {
    /// What kind of value this is, for messages (never the value itself, which may be huge).
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) | Value::BigInt(_) => "an int",
            Value::Float(_) => "a float",
            Value::Str(_) => "a str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a global",
            Value::Storage { .. } => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }
}

/// A strided view into a storage, checked to lie inside it.
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

/// A stack slot: a value or a MARK.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Slot {
    Mark,
    Val(Id),
}

/// A parsed pickle: its values and the one it returned.
#[derive(Debug)]
pub(crate) struct Pickle {
    values: Vec<Value>,
    root: Id,
    /// Offset just past the STOP opcode (the next pickle of a legacy file starts there).
    pub end: usize,
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Slot>,
    memo: HashMap<u32, Id>,
    values: Vec<Value>,
    /// Nesting depth of each value when it was built or last extended.
    depth: Vec<usize>,
    budget: &'a LoadBudget,
    /// What the values cost in memory, charged as they are made.
    spend: &'a mut Spend,
    name: &'a str,
}

/// The memory one value takes in the arena beyond its own heap data: the value, its depth,
/// the stack slot or container entry that refers to it.
const VALUE_COST: u64 = (std::mem::size_of::<Value>() + std::mem::size_of::<usize>() + 2 * std::mem::size_of::<Slot>()) as u64;

impl<'a> Machine<'a> {
    fn refuse(&self, reason: impl Into<String>) -> Error {
        Error::UnsafePickle {
            path: self.name.into(),
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| self.refuse(format!("truncated pickle: {n} bytes wanted at offset {}", self.pos)))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }

    fn len32(&mut self) -> Result<usize> {
        Ok(self.u32()? as usize)
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.refuse("unterminated GLOBAL"))?;
        let s = String::from_utf8(rest[..n].to_vec()).map_err(|_| self.refuse("GLOBAL name is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn text(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| self.refuse("string is not UTF-8"))?;
        Ok(Value::Str(s.to_string()))
    }

    fn check_depth(&self, depth: usize) -> Result<()> {
        LoadBudget::check(
            "max_pickle_depth",
            self.budget.max_pickle_depth as u64,
            depth as u64,
            format_args!("{}: a pickle value nested {depth} deep", self.name),
        )
    }

    /// Adds a value of nesting `depth` to the arena and pushes it.
    fn push_value(&mut self, v: Value, depth: usize) -> Result<()> {
        self.check_depth(depth)?;
        let heap = match &v {
            Value::Str(s) | Value::Global(s) => s.len(),
            Value::Bytes(b) | Value::BigInt(b) => b.len(),
            _ => 0,
        };
        self.spend
            .charge(VALUE_COST + heap as u64, format_args!("{}: the pickle's values", self.name))?;
        let id = Id::try_from(self.values.len()).map_err(|_| self.refuse("too many values"))?;
        self.values.push(v);
        self.depth.push(depth);
        self.stack.push(Slot::Val(id));
        Ok(())
    }

    fn push(&mut self, v: Value) -> Result<()> {
        self.push_value(v, 1)
    }

    /// Builds a container of `items` and pushes it, one level deeper than its deepest item.
    fn push_container(&mut self, items: Vec<Id>, make: fn(Vec<Id>) -> Value) -> Result<()> {
        let depth = 1 + items.iter().map(|&i| self.depth[i as usize]).max().unwrap_or(0);
        self.push_value(make(items), depth)
    }

    fn pop(&mut self) -> Result<Id> {
        match self.stack.pop() {
            Some(Slot::Val(id)) => Ok(id),
            Some(Slot::Mark) => Err(self.refuse("a MARK where a value was expected")),
            None => Err(self.refuse("stack underflow")),
        }
    }

    fn top(&self) -> Result<Id> {
        match self.stack.last() {
            Some(Slot::Val(id)) => Ok(*id),
            Some(Slot::Mark) => Err(self.refuse("a MARK where a value was expected")),
            None => Err(self.refuse("stack underflow")),
        }
    }

    /// Pops everything down to the last MARK.
    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let at = self
            .stack
            .iter()
            .rposition(|s| *s == Slot::Mark)
            .ok_or_else(|| self.refuse("MARK missing"))?;
        let items = self
            .stack
            .split_off(at + 1)
            .into_iter()
            .filter_map(|s| match s {
                Slot::Val(id) => Some(id),
                Slot::Mark => None, // none above the last MARK
            })
            .collect();
        self.stack.pop();
        Ok(items)
    }

    fn memo_get(&mut self, k: u32) -> Result<()> {
        let id = *self.memo.get(&k).ok_or_else(|| self.refuse(format!("memo key {k} unset")))?;
        self.spend.charge(
            2 * std::mem::size_of::<Slot>() as u64,
            format_args!("{}: the pickle's values", self.name),
        )?;
        self.stack.push(Slot::Val(id));
        Ok(())
    }

    fn memo_put(&mut self, k: u32) -> Result<()> {
        let id = self.top()?;
        if !self.memo.contains_key(&k) {
            LoadBudget::check(
                "max_pickle_memo",
                self.budget.max_pickle_memo as u64,
                self.memo.len() as u64 + 1,
                format_args!("{}: the pickle's memo", self.name),
            )?;
        }
        self.memo.insert(k, id);
        Ok(())
    }

    fn global(&mut self, module: String, name: String) -> Result<()> {
        let full = format!("{module}.{name}");
        if !ALLOWED.contains(&full.as_str()) && storage_dtype(&full).is_none() {
            return Err(self.refuse(format!("global {full} is not part of a state_dict")));
        }
        self.push(Value::Global(full))
    }

    /// Raises the recorded depth of container `id` now that it holds `child`.
    fn deepen(&mut self, id: Id, child: Id) -> Result<()> {
        let d = self.depth[id as usize].max(1 + self.depth[child as usize]);
        self.check_depth(d)?;
        self.depth[id as usize] = d;
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Id>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return Err(self.refuse("SETITEMS with an odd number of values"));
        }
        let dict = self.top()?;
        for &v in items.iter().skip(1).step_by(2) {
            self.deepen(dict, v)?;
        }
        let Value::Dict(d) = &mut self.values[dict as usize] else {
            return Err(self.refuse("SETITEMS on a non-dict"));
        };
        d.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
        Ok(())
    }

    fn append(&mut self, items: Vec<Id>) -> Result<()> {
        let list = self.top()?;
        for &v in &items {
            self.deepen(list, v)?;
        }
        let Value::List(l) = &mut self.values[list as usize] else {
            return Err(self.refuse("APPEND on a non-list"));
        };
        l.extend(items);
        Ok(())
    }

    fn reduce(&mut self) -> Result<()> {
        let args = self.pop()?;
        let func = self.pop()?;
        let Value::Tuple(args) = &self.values[args as usize] else {
            return Err(self.refuse("REDUCE arguments are not a tuple"));
        };
        let Value::Global(func) = &self.values[func as usize] else {
            return Err(self.refuse("REDUCE on something that is not an accepted global"));
        };
        match func.as_str() {
            "collections.OrderedDict" if args.is_empty() => self.push(Value::Dict(Vec::new())),
            "torch._utils._rebuild_tensor_v2" => {
                let t = rebuild_tensor(&self.values, args).map_err(|r| self.refuse(r))?;
                self.push(Value::Tensor(t))
            }
            "torch._utils._rebuild_parameter" => {
                let data = *args.first().ok_or_else(|| self.refuse("_rebuild_parameter without data"))?;
                self.stack.push(Slot::Val(data));
                Ok(())
            }
            other => Err(self.refuse(format!("call of {other} with these arguments is not part of a state_dict"))),
        }
    }

    fn persistent_load(&mut self) -> Result<()> {
        let pid = self.pop()?;
        let Value::Tuple(t) = &self.values[pid as usize] else {
            return Err(self.refuse("persistent id is not a tuple"));
        };
        let fields: Vec<&Value> = t.iter().map(|&i| &self.values[i as usize]).collect();
        // Zip files: ('storage', type, key, location, numel); legacy files add a sixth field,
        // the view metadata, which is None for a whole storage.
        let (ty, key, numel) = match fields.as_slice() {
            [Value::Str(tag), Value::Global(ty), Value::Str(key), _location, Value::Int(numel)]
            | [Value::Str(tag), Value::Global(ty), Value::Str(key), _location, Value::Int(numel), Value::None]
                if tag == "storage" =>
            {
                (ty, key, numel)
            }
            _ => return Err(self.refuse("persistent id is not ('storage', type, key, location, numel)")),
        };
        let dtype = storage_dtype(ty).ok_or_else(|| self.refuse(format!("{ty} is not a storage type")))?;
        let numel = usize::try_from(*numel).map_err(|_| self.refuse(format!("storage {key} has {numel} elements")))?;
        let v = Value::Storage {
            dtype: dtype.into(),
            key: key.clone(),
            numel,
        };
        self.push(v)
    }

    fn run(mut self) -> Result<Pickle> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.u64()?; // FRAME
                }
                b'.' => {
                    let root = self.pop()?;
                    return Ok(Pickle {
                        values: self.values,
                        root,
                        end: self.pos,
                    });
                }
                b'(' => self.stack.push(Slot::Mark),
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v.into()))?
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v.into()))?
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.push(long1(b))?
                }
                b'G' => {
                    let b = self.take(8)?;
                    self.push(Value::Float(f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])))?
                }
                b'X' | b'T' => {
                    let n = self.len32()?;
                    let v = self.text(n)?;
                    self.push(v)?
                }
                0x8c | b'U' => {
                    let n = self.u8()? as usize;
                    let v = self.text(n)?;
                    self.push(v)?
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                b'B' => {
                    let n = self.len32()?;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                b'}' => self.push(Value::Dict(Vec::new()))?,
                b']' => self.push(Value::List(Vec::new()))?,
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_container(items, Value::Tuple)?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = vec![0; n];
                    for slot in items.iter_mut().rev() {
                        *slot = self.pop()?;
                    }
                    self.push_container(items, Value::Tuple)?
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
                    let k = u32::try_from(self.memo.len()).map_err(|_| self.refuse("memo overflow"))?;
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
                    let (name, module) = (self.pop()?, self.pop()?);
                    let (Value::Str(name), Value::Str(module)) = (&self.values[name as usize], &self.values[module as usize]) else {
                        return Err(self.refuse("STACK_GLOBAL on non-strings"));
                    };
                    let (module, name) = (module.clone(), name.clone());
                    self.global(module, name)?
                }
                b'Q' => self.persistent_load()?,
                b'R' => self.reduce()?,
                b'b' => {
                    // BUILD: an OrderedDict's state is its `_metadata` (version numbers); ignored.
                    self.pop()?;
                    let top = self.top()?;
                    if !matches!(self.values[top as usize], Value::Dict(_)) {
                        return Err(self.refuse("BUILD on something other than a dict"));
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
                    self.append(vec![v])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                other => {
                    return Err(self.refuse(format!(
                        "opcode 0x{other:02x} at offset {} is not needed by a state_dict",
                        self.pos - 1
                    )))
                }
            }
        }
    }
}

/// LONG1: little-endian two's complement of `b.len()` bytes.
fn long1(b: &[u8]) -> Value {
    if b.len() > 8 {
        return Value::BigInt(b.to_vec());
    }
    let n = b.len();
    let mut v: i64 = 0;
    for (i, &byte) in b.iter().enumerate() {
        v |= i64::from(byte) << (8 * i);
    }
    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
        v -= 1i64 << (8 * n);
    }
    Value::Int(v)
}

fn ints(values: &[Value], id: Id, what: &str) -> std::result::Result<Vec<usize>, String> {
    let Value::Tuple(items) = &values[id as usize] else {
        return Err(format!("tensor {what} is not a tuple"));
    };
    items
        .iter()
        .map(|&i| match values[i as usize] {
            Value::Int(n) => usize::try_from(n).map_err(|_| format!("tensor {what} holds {n}")),
            ref other => Err(format!("tensor {what} holds {}", other.kind())),
        })
        .collect()
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, metadata])`,
/// with the view checked to lie inside the storage before anything is allocated for it.
fn rebuild_tensor(values: &[Value], args: &[Id]) -> std::result::Result<TensorRef, String> {
    let [storage, offset, size, stride, ..] = args else {
        return Err("_rebuild_tensor_v2 with too few arguments".into());
    };
    let Value::Storage { dtype, key, numel } = &values[*storage as usize] else {
        return Err("_rebuild_tensor_v2 without a storage".into());
    };
    let Value::Int(offset) = values[*offset as usize] else {
        return Err("tensor offset is not an integer".into());
    };
    let offset = usize::try_from(offset).map_err(|_| "negative tensor offset")?;
    let (shape, stride) = (ints(values, *size, "size")?, ints(values, *stride, "stride")?);
    if shape.len() != stride.len() {
        return Err("tensor size and stride differ in length".into());
    }
    check_view(&shape, &stride, offset, *numel)?;
    Ok(TensorRef {
        dtype: dtype.clone(),
        key: key.clone(),
        numel: *numel,
        offset,
        shape,
        stride,
    })
}

/// The view `shape`/`stride` at `offset` must have a countable size and reach no element past
/// the storage's `numel`.
fn check_view(shape: &[usize], stride: &[usize], offset: usize, numel: usize) -> std::result::Result<(), String> {
    let view = || format!("tensor view {shape:?}/{stride:?}+{offset}");
    if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none() {
        return Err(format!("{}: its element count overflows", view()));
    }
    if shape.contains(&0) {
        return if offset <= numel {
            Ok(())
        } else {
            Err(format!("{} starts past its storage of {numel} elements", view()))
        };
    }
    let last = shape
        .iter()
        .zip(stride)
        .try_fold(offset, |acc, (&d, &s)| (d - 1).checked_mul(s).and_then(|v| v.checked_add(acc)));
    match last {
        Some(l) if l < numel => Ok(()),
        _ => Err(format!("{} reaches past its storage of {numel} elements", view())),
    }
}

/// Runs the pickle at the start of `data` (it may be followed by other data).
pub(crate) fn parse(data: &[u8], budget: &LoadBudget, spend: &mut Spend, name: &str) -> Result<Pickle> {
    Machine {
        spend,
        data,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        values: Vec::new(),
        depth: Vec::new(),
        budget,
        name,
    }
    .run()
}

impl Pickle {
    /// The value the pickle returned.
    pub(crate) fn root(&self) -> &Value {
        &self.values[self.root as usize]
    }

    pub(crate) fn get(&self, id: Id) -> &Value {
        &self.values[id as usize]
    }

    /// The `(name, tensor)` entries of the top-level dict.
    pub(crate) fn state_dict(&self) -> std::result::Result<Vec<(String, TensorRef)>, String> {
        let Value::Dict(items) = self.root() else {
            return Err(format!(
                "the pickle holds {}, not a dict of tensors (a state_dict); whole pickled models are not supported",
                self.root().kind()
            ));
        };
        items
            .iter()
            .map(|&(k, v)| match (self.get(k), self.get(v)) {
                (Value::Str(k), Value::Tensor(t)) => Ok((k.clone(), t.clone())),
                (Value::Str(k), other) => Err(format!("entry {k:?} of the state_dict is {}, not a tensor", other.kind())),
                (other, _) => Err(format!("the state_dict has a key that is {}, not a str", other.kind())),
            })
            .collect()
    }
}

/// Runs a whole pickle and returns the `(name, tensor)` entries of its top-level dict.
#[cfg(test)]
pub(crate) fn state_dict(data: &[u8]) -> std::result::Result<Vec<(String, TensorRef)>, String> {
    let budget = LoadBudget::default();
    let mut spend = Spend::decoded(&budget, data.len() as u64);
    let p = parse(data, &budget, &mut spend, "test").map_err(|e| e.to_string())?;
    p.state_dict()
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
