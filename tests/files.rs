//! Session files that come back as they were sent (issue 11, item 6), against the real
//! engine through the files and archive endpoints: hard links, long link targets, refused
//! archives that change nothing, and clear errors for unreadable files, a full disk and
//! a path with a NUL byte.

mod common;
mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const POOL: &str = r#"
[pools.f]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 2
"#;

const LONG: Duration = Duration::from_secs(60);

/// A ready daemon with one session that has run a task (so it has a container).
async fn session(name: &str) -> (Daemon, String) {
    let d = Daemon::start(POOL).await;
    d.wait_ready(LONG).await;
    let id = format!("{}-{name}", d.instance);
    let (status, v) = d
        .post_raw(
            "/v1/sessions",
            json!({"pool": "f", "id": id}).to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    sh(&d, &id, "true").await;
    (d, id)
}

/// Runs `shell` in the session; its stdout.
async fn sh(d: &Daemon, id: &str, shell: &str) -> String {
    let (status, v) = d.task("f", json!({"shell": shell, "session": id})).await;
    assert_eq!(status, 200, "{shell:?}: {v}");
    assert_eq!(v["exit_code"], 0, "{shell:?}: {v}");
    v["stdout"].as_str().unwrap().to_string()
}

async fn http(d: &Daemon, method: &str, path: &str, body: Option<Vec<u8>>) -> (u16, Vec<u8>) {
    let (status, _, bytes) = d.request(method, path, body).await;
    (status, bytes)
}

fn error(body: &[u8]) -> (String, String) {
    let v: Value = as_json(body);
    (
        v["error"]["code"].as_str().unwrap_or("").to_string(),
        v["error"]["message"].as_str().unwrap_or("").to_string(),
    )
}

fn host_tar(dir: &Path, format: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg(format!("--format={format}"))
        .arg("-C")
        .arg(dir)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn host_untar(bytes: &[u8], into: &Path) {
    let mut child = Command::new("tar")
        .arg("-C")
        .arg(into)
        .args(["-xf", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A hand-made ustar archive of `(name, type flag, link target, body)` entries, for what GNU
/// tar will not write (a hard link out of the directory).
fn raw_tar(entries: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, body) in entries {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0001750\0");
        h[116..124].copy_from_slice(b"0001750\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", body.len()).as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = *kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[tokio::test]
async fn a_gnu_tar_with_a_hard_link_extracts_both_names_with_their_data() {
    let (d, id) = session("hardlink").await;
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("a"), b"the data\n").unwrap();
    std::fs::hard_link(host.path().join("a"), host.path().join("b")).unwrap();
    for format in ["gnu", "pax"] {
        let dir = format!("work/hl-{format}");
        let (status, body) = http(
            &d,
            "PUT",
            &format!("/v1/sessions/{id}/archive/{dir}"),
            Some(host_tar(host.path(), format)),
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let out = sh(
            &d,
            &id,
            &format!("cd /{dir} && cat a b && ls -i a b | awk '{{print $1}}' | uniq | wc -l"),
        )
        .await;
        assert_eq!(
            out, "the data\nthe data\n1\n",
            "{format}: one file, two names"
        );

        // And it comes back as a hard link.
        let (status, tarball) =
            http(&d, "GET", &format!("/v1/sessions/{id}/archive/{dir}"), None).await;
        assert_eq!(status, 200);
        let back = tempfile::tempdir().unwrap();
        host_untar(&tarball, back.path());
        use std::os::unix::fs::MetadataExt;
        let ino = |n: &str| std::fs::metadata(back.path().join(n)).unwrap().ino();
        assert_eq!(ino("a"), ino("b"), "{format}");
        assert_eq!(std::fs::read(back.path().join("a")).unwrap(), b"the data\n");
    }
}

#[tokio::test]
async fn archives_that_would_leave_their_directory_are_refused_and_change_nothing() {
    let (d, id) = session("refused").await;
    sh(
        &d,
        &id,
        "echo secret > /tmp/outside && mkdir -p /work/t && echo before > /work/t/kept",
    )
    .await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a hard link out of the directory",
            raw_tar(&[
                ("first", b'0', "", b"x"),
                ("b", b'1', "../../tmp/outside", b""),
            ]),
            "hard link",
        ),
        (
            "an absolute hard link",
            raw_tar(&[("first", b'0', "", b"x"), ("b", b'1', "/tmp/outside", b"")]),
            "hard link",
        ),
        (
            "an entry with ..",
            raw_tar(&[
                ("first", b'0', "", b"x"),
                ("kept", b'0', "", b"after"),
                ("../evil", b'0', "", b"x"),
            ]),
            "..",
        ),
        (
            "a write through a symlink the archive makes",
            raw_tar(&[
                ("first", b'0', "", b"x"),
                ("out", b'2', "/tmp", b""),
                ("out/evil", b'0', "", b"x"),
            ]),
            "symlink",
        ),
    ];
    for (what, tarball, says) in cases {
        let (status, body) = http(
            &d,
            "PUT",
            &format!("/v1/sessions/{id}/archive/work/t"),
            Some(tarball),
        )
        .await;
        let (code, message) = error(&body);
        assert_eq!(
            (status, code.as_str()),
            (400, "bad_archive"),
            "{what}: {message}"
        );
        assert!(message.contains(says), "{what}: {message}");
        let listing = sh(&d, &id, "ls -A /work/t; cat /work/t/kept; ls -A /tmp").await;
        assert_eq!(
            listing, "kept\nbefore\noutside\n",
            "{what}: nothing changed"
        );
    }
}

#[tokio::test]
async fn long_symlink_targets_survive_uploads_and_downloads() {
    let (d, id) = session("longlink").await;
    let target = format!("{}/{}/target", "t".repeat(80), "u".repeat(80));
    // Made in the container, downloaded.
    sh(
        &d,
        &id,
        &format!("mkdir -p /work/l && ln -s {target} /work/l/made-there"),
    )
    .await;
    // Made on the host, uploaded in both dialects.
    let host = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&target, host.path().join("sent")).unwrap();
    for format in ["gnu", "pax"] {
        let (status, body) = http(
            &d,
            "PUT",
            &format!("/v1/sessions/{id}/archive/work/l/{format}"),
            Some(host_tar(host.path(), format)),
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let seen = sh(&d, &id, &format!("readlink /work/l/{format}/sent")).await;
        assert_eq!(seen.trim_end(), target, "{format} upload");
    }
    let (status, tarball) = http(
        &d,
        "GET",
        &format!("/v1/sessions/{id}/archive/work/l"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let back = tempfile::tempdir().unwrap();
    host_untar(&tarball, back.path());
    for link in ["made-there", "gnu/sent", "pax/sent"] {
        let got = std::fs::read_link(back.path().join(link)).unwrap();
        assert_eq!(got.to_str().unwrap(), target, "{link} downloaded");
    }
}

/// An unreadable file, a full disk and a NUL byte each get their own status and code
/// (403 `not_readable`, 507 `no_space`, 400 `invalid_path`), with the shim's message.
#[tokio::test]
async fn unreadable_full_and_nul_paths_are_told_apart() {
    let (d, id) = session("errors").await;
    sh(&d, &id, "echo s > /work/secret && chmod 000 /work/secret").await;
    let (status, body) = http(
        &d,
        "GET",
        &format!("/v1/sessions/{id}/files/work/secret"),
        None,
    )
    .await;
    let (code, message) = error(&body);
    assert_eq!((status, code.as_str()), (403, "not_readable"), "{message}");
    assert!(
        message.contains("not readable"),
        "{status} {code}: {message}"
    );
    assert!(!message.contains("read-only"), "{status} {code}: {message}");

    // Fill /tmp (a 256 MiB tmpfs), then upload into it.
    let (status, v) = d
        .task("f", json!({"shell": "dd if=/dev/zero of=/tmp/fill bs=1M count=300 2>/dev/null; true", "session": id}))
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, body) = http(
        &d,
        "PUT",
        &format!("/v1/sessions/{id}/files/tmp/upload"),
        Some(vec![b'x'; 64 << 10]),
    )
    .await;
    let (code, message) = error(&body);
    assert_eq!((status, code.as_str()), (507, "no_space"), "{message}");
    assert!(
        message.contains("no space left"),
        "{status} {code}: {message}"
    );
    let archive = raw_tar(&[("d/", b'5', "", b""), ("d/f", b'0', "", &[b'y'; 64 << 10])]);
    let (status, body) = http(
        &d,
        "PUT",
        &format!("/v1/sessions/{id}/archive/tmp/unpacked"),
        Some(archive),
    )
    .await;
    let (code, message) = error(&body);
    assert_eq!((status, code.as_str()), (507, "no_space"), "{message}");
    assert!(
        message.contains("no space left"),
        "{status} {code}: {message}"
    );
    let left = sh(&d, &id, "ls -A /tmp").await;
    assert_eq!(left, "fill\n", "a failed upload leaves nothing behind");

    // A NUL byte cannot be in a path: said so, not taken for a pool that cannot move files.
    let (status, body) = http(
        &d,
        "PUT",
        &format!("/v1/sessions/{id}/files/work/a%00b"),
        Some(b"x".to_vec()),
    )
    .await;
    let (code, message) = error(&body);
    assert_eq!((status, code.as_str()), (400, "invalid_path"), "{message}");
    assert!(message.contains("NUL"), "{code}: {message}");

    // Nor in a task's argv or env: 400 naming the argument, not a 200 carrying an error.
    for body in [
        json!({"cmd": ["echo", "a\0b"], "session": id}),
        json!({"cmd": ["true"], "env": {"K": "a\0b"}, "session": id}),
    ] {
        let (status, v) = d.task("f", body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["code"], "invalid_request", "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("NUL"),
            "{v}"
        );
    }
}

/// Files move through the shim: a `docker-exec` pool's session answers 400
/// `files_unsupported` for every file and archive call, and its tasks still run.
#[tokio::test]
async fn a_docker_exec_session_answers_files_unsupported() {
    let d = Daemon::start(
        r#"
[pools.x]
image = "warmpool/agent:latest"
exec = "docker-exec"
min = 1
warm = 1
max = 1
"#,
    )
    .await;
    d.wait_ready(LONG).await;
    let id = format!("{}-dx", d.instance);
    let (status, v) = d
        .post_raw(
            "/v1/sessions",
            json!({"pool": "x", "id": id}).to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = d
        .task("x", json!({"shell": "echo hi > /tmp/f", "session": id}))
        .await;
    assert_eq!((status, &v["exit_code"]), (200, &json!(0)), "{v}");
    for (method, path, body) in [
        ("GET", "files/tmp/f", None),
        ("PUT", "files/tmp/g", Some(b"x".to_vec())),
        ("GET", "archive/tmp", None),
    ] {
        let (status, body) = http(&d, method, &format!("/v1/sessions/{id}/{path}"), body).await;
        let (code, message) = error(&body);
        assert_eq!(
            (status, code.as_str()),
            (400, "files_unsupported"),
            "{method} {path}: {message}"
        );
        assert!(message.contains("shim"), "{message}");
    }
    let (status, v) = d
        .task("x", json!({"shell": "cat /tmp/f", "session": id}))
        .await;
    assert_eq!((status, &v["stdout"]), (200, &json!("hi\n")), "{v}");

    // A refused upload is read to its end before the answer, so the connection stays
    // usable: the next request a client sends on it is answered, not reset (the Python
    // client once failed its next call after a 400 here, on a reused connection). Refused
    // by the session lookup, and by the path check before it.
    for (path, code) in [
        ("files/tmp/big", "files_unsupported"),
        ("archive/tmp/%2E%2E/etc", "invalid_path"),
    ] {
        let addr = d.addr.trim_start_matches("http://").to_string();
        let path = format!("/v1/sessions/{id}/{path}");
        let answers =
            tokio::task::spawn_blocking(move || refused_upload_then_healthz(&addr, &path))
                .await
                .unwrap();
        let (first, second) =
            answers.unwrap_or_else(|e| panic!("{code}: the connection broke: {e}"));
        assert!(first.starts_with("HTTP/1.1 400"), "{first}");
        assert!(first.contains(code), "{first}");
        assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    }
}

/// On one keep-alive connection: a PUT of 4 MiB to `path`, then `GET /healthz`; returns both
/// answers (status line, headers and body), or what broke.
fn refused_upload_then_healthz(addr: &str, path: &str) -> Result<(String, String), String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = vec![b'x'; 4 << 20];
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .map_err(|e| format!("writing the head: {e}"))?;
    s.write_all(&body)
        .map_err(|e| format!("writing the body: {e}"))?;
    let read_answer = |s: &mut std::net::TcpStream| -> Result<String, String> {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte) {
                Ok(1) => got.push(byte[0]),
                Ok(_) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&got))),
                Err(e) => return Err(format!("reading: {e}")),
            }
        }
        let head = String::from_utf8_lossy(&got).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or_else(|| format!("no content-length: {head}"))?;
        let mut body = vec![0u8; length];
        s.read_exact(&mut body)
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok(head + &String::from_utf8_lossy(&body))
    };
    let first = read_answer(&mut s)?;
    write!(s, "GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        .map_err(|e| format!("writing the second request: {e}"))?;
    let second = read_answer(&mut s)?;
    Ok((first, second))
}
