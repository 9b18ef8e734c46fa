//! The download path against a local HTTP server on 127.0.0.1: success, checksum mismatch, a
//! connection dropped mid-file, an HTTP error. A failed download leaves no file behind.
#![cfg(feature = "download")]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::thread;

use convnet::download::{download, fetch_cached, md5_file, Remote};
use convnet::Error;

/// Serves one request: a `200` announcing `announced` bytes and sending `body` (fewer bytes
/// means a dropped connection), or `status` if it is not 200.
fn serve_once(status: u16, body: Vec<u8>, announced: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut req = [0u8; 4096];
        let _ = s.read(&mut req);
        let head = format!("HTTP/1.1 {status} X\r\nContent-Length: {announced}\r\nConnection: close\r\n\r\n");
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&body);
        let _ = s.flush();
        // dropping the stream closes the connection
    });
    format!("http://{addr}/weights.h5")
}

fn payload() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn md5_of(bytes: &[u8]) -> String {
    let dir = tempdir("md5");
    let p = dir.join("x");
    std::fs::write(&p, bytes).unwrap();
    md5_file(&p).unwrap()
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("convnet-dl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_verified_download_lands_atomically_and_is_cached() {
    let body = payload();
    let sum = md5_of(&body);
    let dir = tempdir("ok");
    let url = serve_once(200, body.clone(), body.len());
    let remote = Remote {
        url: Box::leak(url.into_boxed_str()),
        file_name: "weights.h5",
        md5: Some(Box::leak(sum.into_boxed_str())),
    };
    let path = fetch_cached(&remote, &dir, false).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(leftovers(&dir), ["weights.h5"]);
    // Second call: served from the cache (the one-shot server is gone).
    assert_eq!(fetch_cached(&remote, &dir, false).unwrap(), path);
}

#[test]
fn a_checksum_mismatch_is_an_error_and_leaves_nothing() {
    let body = payload();
    let dir = tempdir("md5bad");
    let url = serve_once(200, body.clone(), body.len());
    let e = download(&url, &dir.join("weights.h5"), Some("a7b3fe01876f51b976af0dea6bc144eb"), false).unwrap_err();
    assert!(matches!(e, Error::Download { .. }), "{e}");
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

#[test]
fn a_connection_dropped_mid_file_is_an_error_and_leaves_nothing() {
    let body = payload();
    let dir = tempdir("dropped");
    let url = serve_once(200, body[..body.len() / 2].to_vec(), body.len());
    let e = download(&url, &dir.join("weights.h5"), None, false).unwrap_err();
    assert!(matches!(e, Error::Download { .. }), "{e}");
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

#[test]
fn an_http_error_is_an_error() {
    let dir = tempdir("404");
    let url = serve_once(404, b"not here".to_vec(), 8);
    let e = download(&url, &dir.join("weights.h5"), None, false).unwrap_err();
    assert!(e.to_string().contains("404"), "{e}");
    assert!(leftovers(&dir).is_empty());
}

#[test]
fn an_unreachable_server_is_an_error() {
    // Bind then drop a listener: the port is closed.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempdir("refused");
    let e = download(&format!("http://127.0.0.1:{port}/x"), &dir.join("x"), None, false).unwrap_err();
    assert!(matches!(e, Error::Download { .. }), "{e}");
}

#[test]
fn an_unwritable_cache_location_is_an_error_and_leaves_nothing() {
    let body = payload();
    let dir = tempdir("unwritable");
    // The cache "folder" is a regular file: nothing can be created inside it (this stands in
    // for a read-only or full disk, which takes the same write-error path).
    let blocker = dir.join("cache");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let url = serve_once(200, body.clone(), body.len());
    let e = download(&url, &blocker.join("weights.h5"), None, false).unwrap_err();
    assert!(matches!(e, Error::Download { .. }), "{e}");
    assert!(e.to_string().contains("cannot create the cache folder"), "{e}");
    assert_eq!(leftovers(&dir), ["cache"]);
}
