//! Crafted inputs meant to exhaust memory, time or stack: each must give its typed error
//! within 2 seconds and 256 MiB above the process's baseline.
//!
//! Every case runs in a child process (this test binary, re-run on the one case) under an
//! address-space limit, so an abort, a stack overflow or an out-of-memory kill fails that case
//! instead of the whole test binary. The child reports the error variant, the time taken and
//! its peak resident memory above what it had before the case ran. Big inputs are generated
//! here, at test time; the few that need h5py or torch.save are in `tests/fixtures/hostile/`
//! (`make_hostile.py`).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use convnet::budget::LoadBudget;
use convnet::imagenet::image::{decode_rgb, load_rgb, load_rgb_with, ImageOptions};
use convnet::models::{Depth, ResNet, ResNetConfig};
use convnet::weights::{WeightFile, WeightFormat};
use convnet::Error;

const CASE_VAR: &str = "CONVNET_HOSTILE_CASE";
const LIMIT_MIB: u64 = 256;

fn variant(r: &Result<(), Error>) -> &'static str {
    match r {
        Ok(()) => "Ok",
        Err(Error::Budget { .. }) => "Budget",
        Err(Error::NotARegularFile { .. }) => "NotARegularFile",
        Err(Error::Format { .. }) => "Format",
        Err(Error::UnsafePickle { .. }) => "UnsafePickle",
        Err(Error::Image { .. }) => "Image",
        Err(Error::Io { .. }) => "Io",
        Err(Error::Overflow { .. }) => "Overflow",
        Err(_) => "other",
    }
}

// ---------------------------------------------------------------------------------------
// Pickle and .pth builders.

fn op_str(s: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend((s.len() as u32).to_le_bytes());
    v.extend(s.as_bytes());
    v
}

fn op_int(n: i64) -> Vec<u8> {
    let mut v = vec![0x8a, 8];
    v.extend(n.to_le_bytes());
    v
}

fn op_tuple(items: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![b'('];
    for i in items {
        v.extend(i);
    }
    v.push(b't');
    v
}

/// `_rebuild_tensor_v2(storage(key, numel), offset, shape, stride, False, OrderedDict())`.
fn op_tensor(key: &str, numel: i64, offset: i64, shape: &[i64], stride: &[i64]) -> Vec<u8> {
    let mut v = b"ctorch._utils\n_rebuild_tensor_v2\n".to_vec();
    let mut pid = op_tuple(&[
        op_str("storage"),
        b"ctorch\nFloatStorage\n".to_vec(),
        op_str(key),
        op_str("cpu"),
        op_int(numel),
    ]);
    pid.push(b'Q');
    let ints = |xs: &[i64]| op_tuple(&xs.iter().map(|&x| op_int(x)).collect::<Vec<_>>());
    v.extend(op_tuple(&[
        pid,
        op_int(offset),
        ints(shape),
        ints(stride),
        vec![0x89],
        b"ccollections\nOrderedDict\n)R".to_vec(),
    ]));
    v.push(b'R');
    v
}

/// A state_dict pickle: `{name: tensor, ...}`.
fn state_dict(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut v = b"\x80\x02}(".to_vec();
    for (k, t) in entries {
        v.extend(op_str(k));
        v.extend(t);
    }
    v.extend(b"u.");
    v
}

/// A torch.save-style zip: `archive/data.pkl`, `archive/byteorder`, and `archive/data/KEY`
/// for each storage (deflated when `deflate`).
fn pth(pickle: &[u8], storages: &[(&str, &[u8])], deflate: bool) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let data = if deflate {
        SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(true)
    } else {
        stored
    };
    z.start_file("archive/data.pkl", stored).unwrap();
    z.write_all(pickle).unwrap();
    z.start_file("archive/byteorder", stored).unwrap();
    z.write_all(b"little").unwrap();
    for (key, bytes) in storages {
        z.start_file(format!("archive/data/{key}"), data).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
    buf.into_inner()
}

fn load_pth(bytes: Vec<u8>) -> Result<(), Error> {
    // Through the public entry point, format detection included.
    WeightFile::from_bytes(bytes, "crafted.pth").map(|_| ())
}

/// A pickle `((((...))))` nested `depth` deep, with MARKs and TUPLE.
fn deep_tuples(depth: usize) -> Vec<u8> {
    let mut v = b"\x80\x02".to_vec();
    v.extend(std::iter::repeat_n(b'(', depth));
    v.extend(std::iter::repeat_n(b't', depth));
    v.push(b'.');
    v
}

/// A pickle of lists nested `depth` deep: `[[[...]]]` built by EMPTY_LIST and APPEND.
fn deep_lists(depth: usize) -> Vec<u8> {
    let mut v = b"\x80\x02".to_vec();
    v.extend(std::iter::repeat_n(b']', depth));
    v.extend(std::iter::repeat_n(b'a', depth - 1));
    v.push(b'.');
    v
}

/// The memo-doubling pickle: `x = []; x = (x, x)` repeated `n` times through the memo
/// (each round is 7 bytes: BINPUT 0, BINGET 0, BINGET 0, TUPLE2).
fn memo_doubling(n: usize) -> Vec<u8> {
    let mut v = b"\x80\x02]".to_vec();
    for _ in 0..n {
        v.extend(b"q\x00h\x00h\x00\x86");
    }
    v.push(b'.');
    v
}

fn in_zip(pickle: Vec<u8>) -> Vec<u8> {
    pth(&pickle, &[], false)
}

// ---------------------------------------------------------------------------------------
// Images.

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut v = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend(data);
    v.extend(&body);
    v.extend(crc32(&body).to_be_bytes());
    v
}

/// A structurally whole PNG whose header announces `w x h` RGB pixels and whose IDAT holds a
/// few bytes of a zlib stream: the decoder would allocate the whole image to fill it.
fn png_announcing(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    v.extend(png_chunk(b"IHDR", &ihdr));
    v.extend(png_chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
    v.extend(png_chunk(b"IEND", &[]));
    v
}

/// The rocket JPEG with its frame header's size replaced by `w x h`.
fn jpeg_announcing(w: u16, h: u16) -> Vec<u8> {
    let mut b = std::fs::read(common::fixture("keras_resnet50_w8/images/rocket.jpg")).unwrap();
    let sof = b.windows(2).position(|m| m == [0xFF, 0xC0] || m == [0xFF, 0xC2]).unwrap();
    b[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    b[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    b
}

fn fixture_bytes(rel: &str) -> Vec<u8> {
    std::fs::read(common::fixture(rel)).unwrap()
}

fn cut(rel: &str, fraction: f64) -> Vec<u8> {
    let b = fixture_bytes(rel);
    b[..(b.len() as f64 * fraction) as usize].to_vec()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("convnet-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A FIFO with no writer: opening it for reading would block forever.
fn fifo() -> PathBuf {
    let p = scratch("fifo");
    let _ = std::fs::remove_file(&p);
    let ok = Command::new("mkfifo").arg(&p).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "mkfifo failed");
    p
}

// ---------------------------------------------------------------------------------------
// The cases: name, expected variant, what to run.

/// What a case runs, made before the measurement starts (so building a big input does not
/// count against the reader).
type Run = Box<dyn FnOnce() -> Result<(), Error>>;
type Case = (&'static str, &'static str, fn() -> Run);

fn pth_case(file: Vec<u8>) -> Run {
    Box::new(move || load_pth(file))
}

/// The zip bomb whose directory lies: the member declares 16 bytes and inflates to 64 MiB.
fn lying_bomb() -> Vec<u8> {
    let t = op_tensor("0", 4, 0, &[4], &[1]);
    let mut file = pth(&state_dict(&[("w".into(), t)]), &[("0", &vec![0u8; 64 << 20])], true);
    let name = b"archive/data/0";
    // Local header: size at 22; central directory entry: size at 24. Only 32-bit fields here.
    for (sig, at, name_at) in [(b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)] {
        let mut i = 0;
        while let Some(p) = file[i..].windows(4).position(|w| w == sig) {
            let h = i + p;
            if file.get(h + name_at..h + name_at + name.len()) == Some(&name[..]) {
                file[h + at..h + at + 4].copy_from_slice(&16u32.to_le_bytes());
            }
            i = h + 4;
        }
    }
    file
}

const CASES: &[Case] = &[
    // .pth: views.
    ("pth: stride-0 view of 2^40 elements over a 1-element storage", "Budget", || {
        let t = op_tensor("0", 1, 0, &[1 << 20, 1 << 20], &[0, 0]);
        pth_case(pth(&state_dict(&[("w".into(), t)]), &[("0", &[0; 4])], false))
    }),
    ("pth: view whose element count overflows", "UnsafePickle", || {
        let t = op_tensor("0", 1, 0, &[1 << 40, 1 << 40], &[0, 0]);
        pth_case(pth(&state_dict(&[("w".into(), t)]), &[("0", &[0; 4])], false))
    }),
    ("pth: view reaching past its storage", "UnsafePickle", || {
        let t = op_tensor("0", 4, 1, &[2, 2], &[2, 1]);
        pth_case(pth(&state_dict(&[("w".into(), t)]), &[("0", &[0; 16])], false))
    }),
    ("pth: storage declaring more elements than its entry holds", "Format", || {
        let t = op_tensor("0", 1 << 30, 0, &[4], &[1]);
        pth_case(pth(&state_dict(&[("w".into(), t)]), &[("0", &[0; 16])], false))
    }),
    ("pth: zip bomb (a 64 MiB storage deflated)", "Budget", || {
        let t = op_tensor("0", 16 << 20, 0, &[16 << 20], &[1]);
        pth_case(pth(&state_dict(&[("w".into(), t)]), &[("0", &vec![0u8; 64 << 20])], true))
    }),
    ("pth: zip bomb declaring 16 bytes", "Format", || pth_case(lying_bomb())),
    ("pth: 4,000 tensors viewing one 4 MiB storage", "Budget", || {
        let entries: Vec<(String, Vec<u8>)> = (0..4000)
            .map(|i| (format!("w{i}"), op_tensor("0", 1 << 20, 0, &[1 << 20], &[1])))
            .collect();
        pth_case(pth(&state_dict(&entries), &[("0", &vec![0u8; 4 << 20])], false))
    }),
    // Pickles.
    ("pickle: tuples nested 10^6 deep", "Budget", || {
        pth_case(in_zip(deep_tuples(1_000_000)))
    }),
    ("pickle: lists nested 10^6 deep", "Budget", || {
        pth_case(in_zip(deep_lists(1_000_000)))
    }),
    ("pickle: 10^6 MARKs never closed", "UnsafePickle", || {
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat_n(b'(', 1_000_000));
        p.push(b'.');
        pth_case(in_zip(p))
    }),
    ("pickle: memo doubling, 25 rounds (177 bytes)", "UnsafePickle", || {
        pth_case(in_zip(memo_doubling(25)))
    }),
    ("pickle: memo doubling, 90 rounds", "UnsafePickle", || {
        pth_case(in_zip(memo_doubling(90)))
    }),
    ("pickle: memo doubling, 10^5 rounds", "Budget", || {
        pth_case(in_zip(memo_doubling(100_000)))
    }),
    ("pickle: 2 * 10^6 memo entries", "Budget", || {
        let mut p = b"\x80\x02N".to_vec();
        for k in 0..2_000_000u32 {
            p.push(b'r');
            p.extend(k.to_le_bytes());
        }
        p.push(b'.');
        pth_case(in_zip(p))
    }),
    ("pickle: 16 MiB of NONE opcodes", "Budget", || {
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat_n(b'N', 16 << 20));
        p.push(b'.');
        pth_case(in_zip(p))
    }),
    ("pickle: a state_dict of 150,000 empty tensors", "Budget", || {
        let entries: Vec<(String, Vec<u8>)> = (0..150_000).map(|i| (format!("{i}"), op_tensor("0", 1, 0, &[0], &[1]))).collect();
        pth_case(pth(&state_dict(&entries), &[("0", &[0; 4])], false))
    }),
    ("pth: 200,000 zip members", "Budget", || {
        use zip::write::SimpleFileOptions;
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut buf);
        let o = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for i in 0..200_000 {
            z.start_file(format!("{i}"), o).unwrap();
        }
        z.finish().unwrap();
        let file = buf.into_inner();
        Box::new(move || WeightFile::from_bytes_as(file, "members.pth", WeightFormat::Pth).map(|_| ()))
    }),
    // Keras HDF5.
    ("h5: one dataset named 20,000 times", "Format", || {
        Box::new(|| WeightFile::open(common::fixture("hostile/h5_repeated_weight.h5")).map(|_| ()))
    }),
    ("h5: one layer listed 100,000 times", "Format", || {
        Box::new(|| WeightFile::open(common::fixture("hostile/h5_repeated_layer.h5")).map(|_| ()))
    }),
    ("h5: 2,000 layers linking one 1 MiB dataset (2 GiB to decode)", "Budget", || {
        Box::new(|| WeightFile::open(common::fixture("hostile/h5_linked_datasets.h5")).map(|_| ()))
    }),
    ("h5: a layer list over max_entries", "Budget", || {
        Box::new(|| {
            let budget = LoadBudget {
                max_entries: 1000,
                ..LoadBudget::default()
            };
            WeightFile::open_with_budget(common::fixture("hostile/h5_repeated_layer.h5"), &budget).map(|_| ())
        })
    }),
    // Special files.
    ("weights: /dev/zero", "NotARegularFile", || {
        Box::new(|| WeightFile::open("/dev/zero").map(|_| ()))
    }),
    ("weights: a FIFO", "NotARegularFile", || {
        let f = fifo();
        Box::new(move || WeightFile::open(f).map(|_| ()))
    }),
    ("weights: a directory", "NotARegularFile", || {
        Box::new(|| WeightFile::open(std::env::temp_dir()).map(|_| ()))
    }),
    ("image: /dev/zero", "NotARegularFile", || {
        Box::new(|| load_rgb("/dev/zero").map(|_| ()))
    }),
    ("image: a FIFO", "NotARegularFile", || {
        let f = fifo();
        Box::new(move || load_rgb(f).map(|_| ()))
    }),
    ("image: /dev/urandom", "NotARegularFile", || {
        Box::new(|| load_rgb("/dev/urandom").map(|_| ()))
    }),
    ("image: a file over max_image_file_bytes", "Budget", || {
        Box::new(|| {
            let opts = ImageOptions {
                budget: LoadBudget {
                    max_image_file_bytes: 1000,
                    ..LoadBudget::default()
                },
                allow_truncated: false,
            };
            load_rgb_with(common::fixture("keras_resnet50_w8/images/rocket.jpg"), &opts).map(|_| ())
        })
    }),
    // Images.
    ("image: JPEG cut at 50%", "Image", || {
        image_case(cut("keras_resnet50_w8/images/rocket.jpg", 0.5))
    }),
    ("image: JPEG cut at 90%", "Image", || {
        image_case(cut("keras_resnet50_w8/images/rocket.jpg", 0.9))
    }),
    ("image: JPEG cut just before its end marker", "Image", || {
        let b = fixture_bytes("keras_resnet50_w8/images/rocket.jpg");
        image_case(b[..b.len() - 2].to_vec())
    }),
    ("image: PNG cut at 90%", "Image", || {
        image_case(cut("keras_resnet50_w8/images/chelsea.png", 0.9))
    }),
    ("image: PNG announcing 60000 x 60000 pixels", "Budget", || {
        image_case(png_announcing(60000, 60000))
    }),
    ("image: PNG announcing 7000 x 7000 pixels (under the side limit)", "Budget", || {
        image_case(png_announcing(7000, 7000))
    }),
    ("image: JPEG announcing 65000 x 65000 pixels", "Budget", || {
        image_case(jpeg_announcing(65000, 65000))
    }),
    (
        "image: lenient decoding of a JPEG cut at 50% gives the whole-size image",
        "Ok",
        || {
            let half = cut("keras_resnet50_w8/images/rocket.jpg", 0.5);
            Box::new(move || {
                let img = decode_rgb(&half, "half.jpg", &ImageOptions::lenient())?;
                let whole = load_rgb(common::fixture("keras_resnet50_w8/images/rocket.jpg"))?;
                assert_eq!((img.width, img.height), (whole.width, whole.height));
                Ok(())
            })
        },
    ),
    // Loading into a model decodes only what the model takes.
    ("model: open_for_model decodes only the model's tensors", "Ok", || {
        Box::new(|| {
            let path = common::fixture("torch_resnet18_w8/resnet18.pth");
            let model = ResNet::new(ResNetConfig::torchvision(Depth::R18).with_width_divisor(8))?;
            let f = WeightFile::open_for_model(&path, &model, &LoadBudget::default())?;
            assert_eq!(f.skipped().count(), 0);
            let narrower = ResNet::new(ResNetConfig::torchvision(Depth::R18).with_width_divisor(16))?;
            let f = WeightFile::open_for_model(&path, &narrower, &LoadBudget::default())?;
            // Only the 1000-long fc bias has a size the narrower model can take.
            assert_eq!(f.keys().collect::<Vec<_>>(), ["fc.bias"]);
            Ok(())
        })
    }),
];

fn image_case(bytes: Vec<u8>) -> Run {
    Box::new(move || decode_rgb(&bytes, "crafted", &ImageOptions::default()).map(|_| ()))
}

/// The child side: runs the case named in `CONVNET_HOSTILE_CASE` and prints its outcome. In
/// the parent (the variable unset) this test runs every case in its own child process.
#[test]
fn hostile_inputs_give_typed_errors_within_time_and_memory() {
    if let Ok(name) = std::env::var(CASE_VAR) {
        let (_, _, prepare) = CASES.iter().find(|c| c.0 == name).expect("known case");
        let run = prepare();
        // Reset the peak-RSS mark, so what preparing the input cost is not counted.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let base = rss_kib("VmRSS");
        let start = Instant::now();
        let r = run();
        let ms = start.elapsed().as_millis();
        let peak = rss_kib("VmHWM");
        let detail = match &r {
            Ok(()) => String::new(),
            Err(e) => e.to_string().chars().take(300).collect(),
        };
        println!("\nOUTCOME {} {ms} {} {detail}", variant(&r), peak.saturating_sub(base));
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut failures = Vec::new();
    for (name, expected, _) in CASES {
        let out = Command::new("sh")
            .arg("-c")
            // A 2 GiB address-space cap: beyond it an allocation fails and the child aborts,
            // which fails this case, not the test binary.
            .arg("ulimit -v 2097152; exec \"$0\" \"$@\"")
            .arg(&exe)
            .args([
                "--exact",
                "hostile_inputs_give_typed_errors_within_time_and_memory",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CASE_VAR, name)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(line) = stdout.lines().find_map(|l| l.split_once("OUTCOME ").map(|(_, rest)| rest)) else {
            failures.push(format!(
                "{name}: the child died ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .rev()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" | ")
            ));
            continue;
        };
        let mut parts = line.splitn(4, ' ');
        let got = parts.next().unwrap_or("");
        let ms: u128 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(u128::MAX);
        let kib: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
        let detail = parts.next().unwrap_or("");
        println!("{name}: {got} in {ms} ms, +{} MiB: {detail}", kib / 1024);
        if got != *expected {
            failures.push(format!("{name}: expected {expected}, got {got}: {detail}"));
        }
        if ms > 2000 {
            failures.push(format!("{name}: took {ms} ms"));
        }
        if kib > LIMIT_MIB * 1024 {
            failures.push(format!("{name}: peak memory {} MiB above baseline", kib / 1024));
        }
    }
    let _ = std::fs::remove_dir_all(scratch("x").parent().unwrap_or(Path::new("/nonexistent")));
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

/// A field of `/proc/self/status`, in KiB.
fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}
