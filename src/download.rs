//! Fetching files into a local cache (feature `download`, on by default): pretrained weights
//! with md5 verification, sample images. Writes are atomic: the data goes to a temporary file
//! in the destination's folder and is renamed into place only once complete and verified, so
//! an interrupted or corrupt download never leaves a file that looks valid.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};

use crate::error::{Error, Result};

pub use crate::remote::{cache_dir, Remote, KERAS_ELEPHANT_JPG, KERAS_RESNET50_WEIGHTS};

/// The md5 of a file, as lowercase hex.
pub fn md5_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io(path.display(), e))?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path.display(), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Returns the cached copy of `remote` in `dir`, downloading it first if it is not there.
/// A cached file whose md5 does not match is downloaded again.
pub fn fetch_cached(remote: &Remote, dir: &Path, progress: bool) -> Result<PathBuf> {
    let dest = dir.join(remote.file_name);
    if dest.is_file() {
        match remote.md5 {
            Some(want) if md5_file(&dest)? != want => {}
            _ => return Ok(dest),
        }
    }
    download(remote.url, &dest, remote.md5, progress)?;
    Ok(dest)
}

/// Downloads `url` to `dest`, verifying `md5` if given, atomically (see the module docs).
pub fn download(url: &str, dest: &Path, md5: Option<&str>, progress: bool) -> Result<()> {
    let fail = |reason: String| Error::Download { url: url.into(), reason };
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create the cache folder {}: {e}", dir.display())))?;
    let tmp = dir.join(format!(
        ".{}.part-{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("download"),
        std::process::id()
    ));
    let result = fetch_to(url, &tmp, md5, progress)
        .and_then(|()| fs::rename(&tmp, dest).map_err(|e| fail(format!("cannot move the file into {}: {e}", dest.display()))));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn fetch_to(url: &str, tmp: &Path, md5: Option<&str>, progress: bool) -> Result<()> {
    let fail = |reason: String| Error::Download { url: url.into(), reason };
    let config = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_body(Some(Duration::from_secs(60)))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let mut response = agent.get(url).call().map_err(|e| fail(e.to_string()))?;
    let expected_len = response.body().content_length();
    let mut reader = response.body_mut().as_reader();
    let mut file = File::create(tmp).map_err(|e| fail(format!("cannot write {}: {e}", tmp.display())))?;
    let bar = progress.then(|| {
        let bar = expected_len.map_or_else(indicatif::ProgressBar::no_length, indicatif::ProgressBar::new);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(url.rsplit('/').next().unwrap_or(url).to_string());
        bar
    });
    let mut hasher = Md5::new();
    let mut received = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| fail(format!("connection failed after {received} bytes: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| fail(format!("cannot write {}: {e}", tmp.display())))?;
        received += n as u64;
        if let Some(b) = &bar {
            b.set_position(received);
        }
    }
    if let Some(b) = bar {
        b.finish();
    }
    if let Some(len) = expected_len.filter(|&l| l != received) {
        return Err(fail(format!("the connection closed after {received} of {len} bytes")));
    }
    file.sync_all().map_err(|e| fail(format!("cannot write {}: {e}", tmp.display())))?;
    let got = hex(&hasher.finalize());
    match md5 {
        Some(want) if !want.eq_ignore_ascii_case(&got) => Err(fail(format!(
            "checksum mismatch: expected md5 {want}, got {got} ({received} bytes)"
        ))),
        _ => Ok(()),
    }
}
