//! The shim's tar against itself and against GNU tar (when the system has one).

use super::*;
use std::os::unix::ffi::OsStringExt;
use std::process::{Command, Stdio};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wp-tar-{name}-{}", std::process::id()));
    if d.exists() {
        make_writable(&d);
        fs::remove_dir_all(&d).unwrap();
    }
    fs::create_dir_all(&d).unwrap();
    d
}

fn make_writable(d: &Path) {
    let _ = Command::new("chmod").arg("-R").arg("u+rwx").arg(d).status();
}

/// A raw archive of `(name, type flag, link, body)` entries, written the plain ustar way.
fn archive(entries: &[(&[u8], u8, &[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let stat = Stat {
        mode: 0o644,
        ..Stat::default()
    };
    for (name, kind, link, body) in entries {
        out.extend(header(name, *kind, &stat, body.len() as u64, link));
        out.extend_from_slice(body);
        pad(&mut out);
    }
    out.extend_from_slice(&[0u8; BLOCK * 2]);
    out
}

/// A pax extended header entry holding `records`.
fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (key, value) in records {
        let text_len = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = text_len + 1;
        while len.to_string().len() + text_len > len {
            len += 1;
        }
        body.extend_from_slice(format!("{len} {key}=").as_bytes());
        body.extend_from_slice(value);
        body.push(b'\n');
    }
    let mut out = block(b"PaxHeader", b'x', &Stat::default(), body.len() as u64, b"").to_vec();
    out.extend_from_slice(&body);
    pad(&mut out);
    out
}

fn long(c: char, n: usize) -> String {
    std::iter::repeat(c).take(n).collect()
}

/// A tree with what the archive must carry: modes, empty and read-only directories, hard
/// links (also across directories), long names and long link targets, a non-UTF-8 name.
fn make_tree(src: &Path) {
    let deep = src.join(long('d', 90)).join(long('e', 90));
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join(long('f', 120)), b"deep and long").unwrap();
    fs::write(src.join("a"), b"alpha, linked").unwrap();
    fs::set_permissions(src.join("a"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::hard_link(src.join("a"), src.join("b")).unwrap();
    fs::create_dir(src.join("sub")).unwrap();
    fs::hard_link(src.join("a"), src.join("sub/c")).unwrap();
    fs::write(src.join("run.sh"), b"#!/bin/sh\necho ran\n").unwrap();
    fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(src.join("bin"), [0u8, 255, 1, 2, 3]).unwrap();
    fs::create_dir(src.join("empty")).unwrap();
    fs::set_permissions(src.join("empty"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::create_dir(src.join("ro")).unwrap();
    fs::write(src.join("ro/kept"), b"in a read-only dir").unwrap();
    fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    symlink("a", src.join("short-link")).unwrap();
    let target = format!("{}/{}", long('t', 80), long('u', 80));
    symlink(&target, src.join("long-link")).unwrap();
    let odd = std::ffi::OsString::from_vec(b"caf\xe9".to_vec());
    fs::write(src.join(odd), b"latin-1 name").unwrap();
}

/// Every path below `root` with its kind, mode (not for symlinks), content or target.
fn describe(root: &Path) -> Vec<(Vec<u8>, String)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(root.join(&rel)).unwrap() {
            let rel = rel.join(entry.unwrap().file_name());
            let path = root.join(&rel);
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.mode() & 0o7777;
            let what = if meta.file_type().is_symlink() {
                format!("link {:?}", fs::read_link(&path).unwrap())
            } else if meta.is_dir() {
                stack.push(rel.clone());
                format!("dir {mode:o}")
            } else {
                format!(
                    "file {mode:o} {:?} links {}",
                    fs::read(&path).unwrap(),
                    meta.nlink()
                )
            };
            out.push((rel.into_os_string().into_vec(), what));
        }
    }
    out.sort();
    out
}

fn system_tar() -> bool {
    Command::new("tar")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("GNU tar"))
}

fn gnu_tar(src: &Path, format: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-C")
        .arg(src)
        .arg(format!("--format={format}"))
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

fn gnu_untar(data: &[u8], dst: &Path) {
    let mut child = Command::new("tar")
        .arg("-C")
        .arg(dst)
        .args(["-xf", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ours(src: &Path) -> Vec<u8> {
    let mut data = Vec::new();
    write(src, &mut data).unwrap();
    data
}

#[test]
fn a_tree_round_trips_with_links_long_names_modes_and_empty_dirs() {
    let src = scratch("rt-src");
    make_tree(&src);
    let dst = scratch("rt-dst");
    extract(&dst, &ours(&src)).unwrap();
    assert_eq!(describe(&dst), describe(&src));
    let ino = |p: &str| fs::metadata(dst.join(p)).unwrap().ino();
    assert_eq!(ino("a"), ino("b"), "b is a hard link to a");
    assert_eq!(ino("a"), ino("sub/c"));
    make_writable(&src);
    make_writable(&dst);
}

#[test]
fn gnu_tar_archives_extract_as_they_were_made() {
    if !system_tar() {
        eprintln!("no GNU tar here: skipped");
        return;
    }
    let src = scratch("gnu-src");
    make_tree(&src);
    for format in ["gnu", "pax", "oldgnu", "posix"] {
        let dst = scratch(&format!("gnu-dst-{format}"));
        extract(&dst, &gnu_tar(&src, format)).unwrap_or_else(|e| panic!("{format}: {e:?}"));
        assert_eq!(describe(&dst), describe(&src), "{format}");
        let ino = |p: &str| fs::metadata(dst.join(p)).unwrap().ino();
        assert_eq!(ino("a"), ino("b"), "{format}: the hard link");
        assert_eq!(
            fs::read(dst.join("a")).unwrap(),
            b"alpha, linked",
            "{format}"
        );
        make_writable(&dst);
    }
    make_writable(&src);
}

#[test]
fn gnu_tar_extracts_what_we_write() {
    if !system_tar() {
        eprintln!("no GNU tar here: skipped");
        return;
    }
    let src = scratch("to-gnu-src");
    make_tree(&src);
    let dst = scratch("to-gnu-dst");
    gnu_untar(&ours(&src), &dst);
    assert_eq!(describe(&dst), describe(&src));
    make_writable(&src);
    make_writable(&dst);
}

#[test]
fn long_link_targets_are_written_whole() {
    let src = scratch("longlink");
    let target = long('x', 300);
    symlink(&target, src.join("l")).unwrap();
    let entries_data = ours(&src);
    let entries = parse(&entries_data).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].link, target.as_bytes());
    assert_eq!(entries[0].kind, Kind::Symlink);
}

#[test]
fn pax_headers_name_entries_and_link_targets() {
    let name = format!("{}/file", long('p', 200));
    let target = long('q', 250);
    let mut data = pax(&[("path", name.as_bytes()), ("mtime", b"1.5")]);
    data.extend(archive(&[(b"short", b'0', b"", b"pax body")]));
    data.truncate(data.len() - BLOCK * 2);
    data.extend(pax(&[("linkpath", target.as_bytes())]));
    data.extend(archive(&[(b"l", b'2', b"cut", b"")]));
    let entries = parse(&data).unwrap();
    assert_eq!(entries[0].name, name.as_bytes());
    assert_eq!(entries[0].data, b"pax body");
    assert_eq!(entries[1].name, b"l");
    assert_eq!(entries[1].link, target.as_bytes());
    // A global header applies to what follows, a local one overrides it.
    let mut data = block(b"g", b'g', &Stat::default(), 0, b"").to_vec();
    data[124..136].copy_from_slice(b"00000000000\0");
    let g = pax(&[("linkpath", b"global-target")]);
    let mut g = g;
    g[156] = b'g';
    g[148..156].copy_from_slice(b"        ");
    let sum: u64 = g[..BLOCK].iter().map(|b| u64::from(*b)).sum();
    octal(&mut g[148..155], sum);
    data.clear();
    data.extend(g);
    data.extend(archive(&[(b"l", b'2', b"cut", b"")]));
    assert_eq!(parse(&data).unwrap()[0].link, b"global-target");
    assert_eq!(
        pax_records(b"5 x\n").unwrap_err().0,
        BAD_ARCHIVE,
        "a malformed record"
    );
}

#[test]
fn numbers_may_be_base_256() {
    let mut f = [0u8; 12];
    octal(&mut f, 1 << 40);
    assert_eq!(f[0] & 0x80, 0x80, "too large for 11 octal digits");
    assert_eq!(number(&f).unwrap(), 1 << 40);
    octal(&mut f, 0o755);
    assert_eq!(&f, b"00000000755\0");
    assert_eq!(number(&f).unwrap(), 0o755);
}

#[test]
fn hard_links_extract_to_the_same_file() {
    let d = scratch("hl");
    let a = archive(&[(b"./a", b'0', b"", b"data"), (b"./b", b'1', b"./a", b"")]);
    extract(&d, &a).unwrap();
    assert_eq!(fs::read(d.join("a")).unwrap(), b"data");
    assert_eq!(fs::read(d.join("b")).unwrap(), b"data");
    assert_eq!(
        fs::metadata(d.join("a")).unwrap().ino(),
        fs::metadata(d.join("b")).unwrap().ino()
    );
}

#[test]
fn hard_links_that_leave_the_directory_are_refused_and_nothing_is_written() {
    let outside = scratch("hl-outside");
    fs::write(outside.join("secret"), b"s").unwrap();
    let d = scratch("hl-refused");
    let escape = format!("{}/secret", outside.display());
    for link in [
        b"../x".as_slice(),
        escape.as_bytes(),
        b"missing",
        b"sub",
        b"sl/x",
    ] {
        let a = archive(&[
            (b"first", b'0', b"", b"written?"),
            (b"sub/", b'5', b"", b""),
            (b"sl", b'2', outside.as_os_str().as_bytes(), b""),
            (b"b", b'1', link, b""),
        ]);
        let (code, msg) = extract(&d, &a).unwrap_err();
        assert_eq!(code, BAD_ARCHIVE, "{msg}");
        assert!(msg.contains("\"b\""), "the message names the link: {msg}");
        assert_eq!(
            fs::read_dir(&d).unwrap().count(),
            0,
            "{link:?}: nothing written"
        );
    }
}

#[test]
fn a_refused_archive_changes_nothing() {
    let d = scratch("atomic");
    fs::write(d.join("kept"), b"before").unwrap();
    let outside = scratch("atomic-outside");
    let cases: Vec<Vec<u8>> = vec![
        archive(&[
            (b"kept", b'0', b"", b"after"),
            (b"../evil", b'0', b"", b"x"),
        ]),
        archive(&[(b"new/", b'5', b"", b""), (b"/etc/evil", b'0', b"", b"x")]),
        // A symlink the archive itself makes may not be written through either.
        archive(&[
            (b"out", b'2', outside.as_os_str().as_bytes(), b""),
            (b"out/pwned", b'0', b"", b"x"),
        ]),
        archive(&[(b"new", b'0', b"", b"x"), (b"s", b'S', b"", b"")]),
    ];
    for a in cases {
        assert_eq!(extract(&d, &a).unwrap_err().0, BAD_ARCHIVE);
        assert_eq!(fs::read(d.join("kept")).unwrap(), b"before");
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1, "only what was there");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }
    // Not even the directory is created.
    let missing = d.join("not-yet");
    let a = archive(&[(b"f", b'0', b"", b"x"), (b"../../x", b'0', b"", b"x")]);
    assert!(extract(&missing, &a).is_err());
    assert!(!missing.exists());
}

#[test]
fn an_archive_cut_short_or_not_an_archive_is_refused() {
    let d = scratch("junk");
    let mut a = archive(&[(b"f", b'0', b"", b"hello")]);
    a.truncate(BLOCK + 2);
    assert_eq!(extract(&d, &a).unwrap_err().0, BAD_ARCHIVE);
    assert_eq!(
        extract(&d, b"not a tar archive").unwrap_err().0,
        BAD_ARCHIVE
    );
    assert_eq!(extract(&d, &[b'j'; BLOCK * 3]).unwrap_err().0, BAD_ARCHIVE);
    let mut a = archive(&[(b"f", b'0', b"", b"hello")]);
    a[0] = b'g'; // the name changed, the checksum did not
    assert_eq!(extract(&d, &a).unwrap_err().0, BAD_ARCHIVE);
    assert_eq!(fs::read_dir(&d).unwrap().count(), 0, "nothing written");
    extract(&d, b"").unwrap();
    extract(&d, &archive(&[(b"f", b'0', b"", b"hello")])).unwrap();
    assert_eq!(fs::read(d.join("f")).unwrap(), b"hello");
}

#[test]
fn entries_may_not_escape_or_replace_a_directory() {
    let d = scratch("escape");
    let outside = scratch("escape-outside");
    symlink(&outside, d.join("evil")).unwrap();
    fs::create_dir(d.join("dir")).unwrap();
    for a in [
        archive(&[(b"evil/passwd", b'0', b"", b"x")]),
        archive(&[(b"a/../../x", b'0', b"", b"x")]),
    ] {
        assert_eq!(extract(&d, &a).unwrap_err().0, BAD_ARCHIVE);
    }
    let a = archive(&[(b"dir", b'0', b"", b"x")]);
    assert_eq!(extract(&d, &a).unwrap_err().0, WRONG_KIND);
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    // A symlink in the way of a file or directory is replaced, never followed.
    let a = archive(&[(b"evil", b'5', b"", b"")]);
    extract(&d, &a).unwrap();
    assert!(fs::symlink_metadata(d.join("evil")).unwrap().is_dir());
}
