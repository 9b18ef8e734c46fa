//! The resource budget for reading files: how many bytes, entries, nesting levels and pixels
//! a weights file or an image may cost, checked before each allocation a file's contents ask
//! for.
//!
//! One [`LoadBudget`] covers every loader. Its defaults let any real ResNet checkpoint and any
//! camera photo through while keeping a crafted file (a zip bomb, a pickle that doubles itself,
//! an HDF5 attribute naming one dataset a million times, a PNG announcing a billion pixels)
//! within a few hundred MiB and a fraction of a second. A limit that is hit is an
//! [`Error::Budget`] naming the field to raise:
//!
//! ```
//! use convnet::budget::LoadBudget;
//! use convnet::weights::WeightFile;
//! // Trust this file with up to 8 GiB of decoded tensors.
//! let budget = LoadBudget { max_decoded_bytes: Some(8 << 30), ..LoadBudget::default() };
//! let e = WeightFile::open_with_budget("/dev/null", &budget).unwrap_err();
//! assert!(e.to_string().contains("not a regular file"));
//! ```
//!
//! Files are read only when they are regular files (a directory, FIFO, socket or device is
//! refused before it is opened for reading, so `/dev/zero` cannot grow without bound and a FIFO
//! cannot block), and through a reader bounded by the size the file had when it was opened.

use std::fmt;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Limits on what reading one file may cost. See the [module documentation](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadBudget {
    /// The largest weights file read (bytes on disk). Default 16 GiB.
    pub max_file_bytes: u64,
    /// The most tensor data (bytes, counted as `f32`) a weights file may decode to, plus any
    /// bytes a compressed entry inflates to. `None` (the default) means
    /// [`decoded_bytes_per_file_byte`](Self::decoded_bytes_per_file_byte) times the file's size
    /// plus 1 MiB; [`WeightFile::open_for_model`](crate::weights::WeightFile::open_for_model)
    /// lowers it further to what the model's parameters take.
    pub max_decoded_bytes: Option<u64>,
    /// Decoded bytes allowed per byte on disk when `max_decoded_bytes` is `None`. Default 4:
    /// `torch.save`, `save_weights` and safetensors store tensors uncompressed, and a float64
    /// file decodes to half its size.
    pub decoded_bytes_per_file_byte: u64,
    /// The deepest nesting of values a `.pth` pickle may build (a `state_dict` needs 4).
    /// Default 100.
    pub max_pickle_depth: usize,
    /// The most memo entries a pickle may define (torch.save writes about 5 per tensor).
    /// Default 1,000,000.
    pub max_pickle_memo: usize,
    /// The most entries a container may list: zip members, safetensors tensors, HDF5 layer and
    /// weight names. Default 100,000 (ResNet152 has about 1,000 tensors).
    pub max_entries: usize,
    /// The largest image file read (bytes on disk). Default 256 MiB.
    pub max_image_file_bytes: u64,
    /// The largest width or height an image may have. Default 65,535.
    pub max_image_side: u32,
    /// The most pixels an image may decode to. Default 25 million (a 6000 x 4000 photo and
    /// more; a progressive CMYK JPEG that large needs about 250 MiB to decode).
    pub max_image_pixels: u64,
}

impl Default for LoadBudget {
    fn default() -> Self {
        LoadBudget {
            max_file_bytes: 16 << 30,
            max_decoded_bytes: None,
            decoded_bytes_per_file_byte: 4,
            max_pickle_depth: 100,
            max_pickle_memo: 1_000_000,
            max_entries: 100_000,
            max_image_file_bytes: 256 << 20,
            max_image_side: 65_535,
            max_image_pixels: 25_000_000,
        }
    }
}

impl LoadBudget {
    /// The decoded-bytes limit for a file of `file_len` bytes.
    pub fn decoded_limit(&self, file_len: u64) -> u64 {
        self.max_decoded_bytes
            .unwrap_or_else(|| file_len.saturating_mul(self.decoded_bytes_per_file_byte).saturating_add(1 << 20))
    }

    /// Checks `needed` against the limit `allowed` of field `limit`.
    pub(crate) fn check(limit: &'static str, allowed: u64, needed: u64, what: impl fmt::Display) -> Result<()> {
        if needed > allowed {
            return Err(Error::Budget {
                what: what.to_string(),
                limit,
                allowed,
                needed,
            });
        }
        Ok(())
    }

    /// Checks an image's header size against [`max_image_side`](Self::max_image_side) and
    /// [`max_image_pixels`](Self::max_image_pixels).
    pub(crate) fn check_image(&self, width: u64, height: u64, name: &str) -> Result<()> {
        let what = format_args!("{name} ({width}x{height})");
        Self::check("max_image_side", self.max_image_side.into(), width.max(height), what)?;
        Self::check("max_image_pixels", self.max_image_pixels, width.saturating_mul(height), what)
    }

    /// Checks a count of entries against [`max_entries`](Self::max_entries).
    pub(crate) fn check_entries(&self, needed: usize, what: impl fmt::Display) -> Result<()> {
        Self::check("max_entries", self.max_entries as u64, needed as u64, what)
    }
}

/// A running total of decoded bytes against a limit.
#[derive(Debug)]
pub(crate) struct Spend {
    limit: &'static str,
    allowed: u64,
    spent: u64,
}

impl Spend {
    /// A decoded-bytes account for a file of `file_len` bytes.
    pub(crate) fn decoded(budget: &LoadBudget, file_len: u64) -> Self {
        Spend {
            limit: "max_decoded_bytes",
            allowed: budget.decoded_limit(file_len),
            spent: 0,
        }
    }

    /// The same account with its limit lowered to `allowed` if that is smaller.
    pub(crate) fn at_most(mut self, allowed: u64) -> Self {
        self.allowed = self.allowed.min(allowed);
        self
    }

    /// Records `bytes` more, refusing (before anything is allocated) when they would exceed
    /// the limit.
    pub(crate) fn charge(&mut self, bytes: u64, what: impl fmt::Display) -> Result<()> {
        let needed = self.spent.saturating_add(bytes);
        LoadBudget::check(self.limit, self.allowed, needed, what)?;
        self.spent = needed;
        Ok(())
    }
}

/// Reads a regular file whole, refusing other kinds of file and files over `max_bytes`
/// (`limit` names the budget field in the error). The read is bounded by the length the file
/// had when opened: a file that grows meanwhile is an error, not an unbounded read.
pub(crate) fn read_regular_file(path: &Path, max_bytes: u64, limit: &'static str) -> Result<Vec<u8>> {
    // Refuse a FIFO or device before opening it: opening a FIFO for reading blocks.
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path.display(), e))?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta));
    }
    let file = open_nonblocking(path).map_err(|e| Error::io(path.display(), e))?;
    let meta = file.metadata().map_err(|e| Error::io(path.display(), e))?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta)); // swapped after the first check
    }
    let len = meta.len();
    LoadBudget::check(limit, max_bytes, len, format_args!("{} ({len} bytes on disk)", path.display()))?;
    let cap = usize::try_from(len).map_err(|_| Error::overflow(path.display().to_string(), "the file's length"))?;
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(cap).map_err(|_| {
        Error::io(
            path.display(),
            std::io::Error::new(std::io::ErrorKind::OutOfMemory, format!("cannot allocate {len} bytes")),
        )
    })?;
    file.take(len + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path.display(), e))?;
    if bytes.len() as u64 != len {
        return Err(Error::io(
            path.display(),
            std::io::Error::other(format!(
                "the file changed while it was read ({len} bytes when opened, {} read)",
                bytes.len()
            )),
        ));
    }
    Ok(bytes)
}

fn not_regular(path: &Path, meta: &std::fs::Metadata) -> Error {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symbolic link"
    } else {
        special_kind(&ft)
    };
    Error::NotARegularFile {
        path: path.display().to_string(),
        kind,
    }
}

#[cfg(unix)]
fn special_kind(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &std::fs::FileType) -> &'static str {
    "special file"
}

/// Opens for reading without blocking on a FIFO swapped in after the type check.
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(0o4000); // O_NONBLOCK: no effect on regular files
    }
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(0x0004); // O_NONBLOCK
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_limit_scales_with_the_file() {
        let b = LoadBudget::default();
        assert_eq!(b.decoded_limit(1000), 4000 + (1 << 20));
        let fixed = LoadBudget {
            max_decoded_bytes: Some(10),
            ..b
        };
        assert_eq!(fixed.decoded_limit(1 << 40), 10);
    }

    #[test]
    fn spend_refuses_before_passing_the_limit() {
        let mut s = Spend {
            limit: "max_decoded_bytes",
            allowed: 100,
            spent: 0,
        };
        s.charge(60, "a").unwrap();
        let e = s.charge(41, "tensor b").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("max_decoded_bytes") && msg.contains("tensor b") && msg.contains("101"),
            "{msg}"
        );
        s.charge(40, "c").unwrap();
        assert!(s.charge(u64::MAX, "d").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn special_files_are_refused_without_reading() {
        for p in ["/dev/zero", "/dev/null", "/tmp"] {
            let e = read_regular_file(Path::new(p), u64::MAX, "max_file_bytes").unwrap_err();
            assert!(matches!(e, Error::NotARegularFile { .. }), "{p}: {e}");
        }
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let dir = std::env::temp_dir().join(format!("convnet-budget-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("ten.bin");
        std::fs::write(&f, [7u8; 10]).unwrap();
        assert_eq!(read_regular_file(&f, 10, "max_file_bytes").unwrap(), vec![7u8; 10]);
        let e = read_regular_file(&f, 9, "max_file_bytes").unwrap_err();
        assert!(
            matches!(
                e,
                Error::Budget {
                    limit: "max_file_bytes",
                    allowed: 9,
                    needed: 10,
                    ..
                }
            ),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
