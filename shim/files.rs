//! The shim's file commands, run as tasks in a session's container: `write-file PATH` (stdin
//! to a file), `read-file PATH` (a file to stdout), `tar DIR` (a ustar archive of DIR's
//! contents to stdout) and `untar DIR` (one from stdin into DIR). They need nothing from the
//! image, so file transfer works even in a scratch image, and they write through the
//! container's own mounts (the tmpfs workdir), which the engine's archive API cannot.
//!
//! Exit codes, mirrored in the daemon's `src/files.rs`: 3 no such path, 4 not writable,
//! 5 wrong kind (a directory where a file was expected, or the reverse), 6 bad archive.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

const NOT_FOUND: i32 = 3;
const NOT_WRITABLE: i32 = 4;
const WRONG_KIND: i32 = 5;
const BAD_ARCHIVE: i32 = 6;
const BLOCK: usize = 512;

/// Runs a file command if `args` names one; `None` means "not a file command".
pub fn dispatch(args: &[String]) -> Option<i32> {
    let (cmd, path) = match args {
        [_, cmd, path] => (cmd.as_str(), Path::new(path)),
        _ => return None,
    };
    let result = match cmd {
        "write-file" => write_file(path),
        "read-file" => read_file(path),
        "tar" => tar(path),
        "untar" => untar(path),
        _ => return None,
    };
    Some(match result {
        Ok(()) => 0,
        Err((code, msg)) => {
            eprintln!("{msg}");
            code
        }
    })
}

type Failure = (i32, String);

/// Maps an I/O error on `path` to an exit code and a message naming the path.
fn fail(path: &Path, what: &str, e: io::Error) -> Failure {
    let code = match e.kind() {
        io::ErrorKind::NotFound => NOT_FOUND,
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => NOT_WRITABLE,
        io::ErrorKind::IsADirectory | io::ErrorKind::NotADirectory => WRONG_KIND,
        _ => 1,
    };
    (code, format!("cannot {what} {}: {e}", path.display()))
}

fn write_file(path: &Path) -> Result<(), Failure> {
    if path.is_dir() {
        return Err((WRONG_KIND, format!("{} is a directory", path.display())));
    }
    let mut data = Vec::new();
    io::stdin()
        .read_to_end(&mut data)
        .map_err(|e| fail(path, "read the upload for", e))?;
    let mut f = File::create(path).map_err(|e| fail(path, "write", e))?;
    f.write_all(&data).map_err(|e| fail(path, "write", e))
}

fn read_file(path: &Path) -> Result<(), Failure> {
    let meta = fs::metadata(path).map_err(|e| fail(path, "read", e))?;
    if !meta.is_file() {
        return Err((
            WRONG_KIND,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let mut f = File::open(path).map_err(|e| fail(path, "read", e))?;
    io::copy(&mut f, &mut io::stdout().lock()).map_err(|e| fail(path, "read", e))?;
    Ok(())
}

/// A ustar header; names longer than 100 bytes go first in a GNU long-name entry.
fn header(name: &[u8], kind: u8, mode: u32, size: u64, mtime: u64, link: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if name.len() > 100 {
        out.extend(header(
            b"././@LongLink",
            b'L',
            0,
            name.len() as u64 + 1,
            0,
            b"",
        ));
        out.extend_from_slice(name);
        out.push(0);
        pad(&mut out);
    }
    let mut h = [0u8; BLOCK];
    let short = &name[..name.len().min(100)];
    h[..short.len()].copy_from_slice(short);
    octal(&mut h[100..108], mode as u64 & 0o7777);
    octal(&mut h[108..116], 1000);
    octal(&mut h[116..124], 1000);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = kind;
    let link = &link[..link.len().min(100)];
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    octal(&mut h[148..155], sum as u64);
    out.extend_from_slice(&h);
    out
}

fn octal(field: &mut [u8], value: u64) {
    let text = format!("{:0width$o}", value, width = field.len() - 1);
    let text = &text.as_bytes()[text.len().saturating_sub(field.len() - 1)..];
    field[..text.len()].copy_from_slice(text);
    field[field.len() - 1] = 0;
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % BLOCK;
    if rem != 0 {
        out.resize(out.len() + BLOCK - rem, 0);
    }
}

fn tar(dir: &Path) -> Result<(), Failure> {
    write_tar(dir, &mut io::stdout().lock())
}

fn write_tar(dir: &Path, out: &mut impl Write) -> Result<(), Failure> {
    let meta = fs::metadata(dir).map_err(|e| fail(dir, "read", e))?;
    if !meta.is_dir() {
        return Err((WRONG_KIND, format!("{} is not a directory", dir.display())));
    }
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = dir.join(&rel);
        let mut entries: Vec<_> = fs::read_dir(&full)
            .map_err(|e| fail(&full, "list", e))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let rel = rel.join(entry.file_name());
            let path = dir.join(&rel);
            let meta = fs::symlink_metadata(&path).map_err(|e| fail(&path, "read", e))?;
            let name = rel.as_os_str().as_bytes();
            let mode = meta.permissions().mode();
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let block = if meta.is_dir() {
                stack.push(rel.clone());
                let mut n = name.to_vec();
                n.push(b'/');
                header(&n, b'5', mode, 0, mtime, b"")
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).map_err(|e| fail(&path, "read", e))?;
                header(name, b'2', mode, 0, mtime, target.as_os_str().as_bytes())
            } else if meta.is_file() {
                let mut data = Vec::new();
                File::open(&path)
                    .and_then(|mut f| f.read_to_end(&mut data))
                    .map_err(|e| fail(&path, "read", e))?;
                let mut b = header(name, b'0', mode, data.len() as u64, mtime, b"");
                b.extend_from_slice(&data);
                pad(&mut b);
                b
            } else {
                continue; // Sockets, fifos, devices: nothing a client can use.
            };
            out.write_all(&block).map_err(|e| fail(dir, "send", e))?;
        }
    }
    out.write_all(&[0u8; BLOCK * 2])
        .map_err(|e| fail(dir, "send", e))
}

fn field_str(h: &[u8]) -> &[u8] {
    let end = h.iter().position(|b| *b == 0).unwrap_or(h.len());
    &h[..end]
}

fn parse_octal(h: &[u8]) -> Result<u64, Failure> {
    let text = std::str::from_utf8(field_str(h)).unwrap_or("").trim();
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8)
        .map_err(|_| (BAD_ARCHIVE, format!("bad number {text:?} in a tar header")))
}

/// A header's checksum: the sum of its bytes with the checksum field read as spaces (some
/// old writers summed signed bytes, which is accepted too). Without this check, any body
/// would be taken for entries with garbage names.
fn check_sum(h: &[u8]) -> Result<(), Failure> {
    let stored = parse_octal(&h[148..156]).map_err(|_| {
        (
            BAD_ARCHIVE,
            "the body is not a tar archive (bad header checksum)".to_string(),
        )
    })?;
    let field = |i: usize| if (148..156).contains(&i) { b' ' } else { h[i] };
    let unsigned: u64 = (0..BLOCK).map(|i| field(i) as u64).sum();
    let signed: i64 = (0..BLOCK).map(|i| field(i) as i8 as i64).sum();
    if stored == unsigned || stored as i64 == signed {
        Ok(())
    } else {
        Err((
            BAD_ARCHIVE,
            "the body is not a tar archive (a header's checksum does not match)".to_string(),
        ))
    }
}

/// The entry's path under `dir`, refusing absolute paths, `..`, and existing symlinks on the
/// way (an archive must not write outside its directory).
fn safe_join(dir: &Path, name: &[u8]) -> Result<PathBuf, Failure> {
    let rel = Path::new(std::ffi::OsStr::from_bytes(name));
    let mut out = dir.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        match c {
            Component::Normal(part) => {
                out.push(part);
                let last = i + 1 == comps.len();
                if !last && fs::symlink_metadata(&out).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err((
                        BAD_ARCHIVE,
                        format!("refusing to write through the symlink {}", out.display()),
                    ));
                }
            }
            Component::CurDir => {}
            _ => {
                return Err((
                    BAD_ARCHIVE,
                    format!(
                        "refusing the archive entry {:?}: absolute or with '..'",
                        rel
                    ),
                ))
            }
        }
    }
    Ok(out)
}

fn untar(dir: &Path) -> Result<(), Failure> {
    let mut data = Vec::new();
    io::stdin()
        .read_to_end(&mut data)
        .map_err(|e| fail(dir, "read the archive for", e))?;
    extract(dir, &data)
}

fn extract(dir: &Path, data: &[u8]) -> Result<(), Failure> {
    fs::create_dir_all(dir).map_err(|e| fail(dir, "create", e))?;
    if !dir.is_dir() {
        return Err((WRONG_KIND, format!("{} is not a directory", dir.display())));
    }
    if data.len() % BLOCK != 0 {
        return Err((
            BAD_ARCHIVE,
            format!(
                "the body is not a tar archive ({} bytes, not a whole number of 512-byte blocks)",
                data.len()
            ),
        ));
    }
    let mut at = 0;
    let mut long_name: Option<Vec<u8>> = None;
    while at + BLOCK <= data.len() {
        let h = &data[at..at + BLOCK];
        at += BLOCK;
        if h.iter().all(|b| *b == 0) {
            break;
        }
        check_sum(h)?;
        let size = parse_octal(&h[124..136])? as usize;
        let body_end = at + size;
        if body_end > data.len() {
            return Err((
                BAD_ARCHIVE,
                "the archive ends in the middle of an entry".into(),
            ));
        }
        let body = &data[at..body_end];
        at = body_end.div_ceil(BLOCK) * BLOCK;
        let kind = h[156];
        let mut name = field_str(&h[..100]).to_vec();
        if &h[257..262] == b"ustar" && h[345] != 0 {
            let mut full = field_str(&h[345..500]).to_vec();
            full.push(b'/');
            full.extend_from_slice(&name);
            name = full;
        }
        if let Some(n) = long_name.take() {
            name = n;
        }
        match kind {
            b'L' => {
                long_name = Some(field_str(body).to_vec());
                continue;
            }
            b'x' => {
                long_name = pax_path(body);
                continue;
            }
            b'g' => continue,
            _ => {}
        }
        let trimmed: &[u8] = {
            let mut n: &[u8] = &name;
            while n.last() == Some(&b'/') {
                n = &n[..n.len() - 1];
            }
            n
        };
        if trimmed.is_empty() || trimmed == b"." {
            continue;
        }
        let path = safe_join(dir, trimmed)?;
        let mode = parse_octal(&h[100..108])? as u32 & 0o777;
        match kind {
            b'5' => {
                fs::create_dir_all(&path).map_err(|e| fail(&path, "create", e))?;
                let _ = fs::set_permissions(&path, fs::Permissions::from_mode(mode | 0o700));
            }
            b'0' | 0 | b'7' => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(|e| fail(parent, "create", e))?;
                }
                if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                    fs::remove_file(&path).map_err(|e| fail(&path, "replace", e))?;
                }
                let mut f = File::create(&path).map_err(|e| fail(&path, "write", e))?;
                f.write_all(body).map_err(|e| fail(&path, "write", e))?;
                let _ = fs::set_permissions(&path, fs::Permissions::from_mode(mode));
            }
            b'2' => {
                let target = std::ffi::OsStr::from_bytes(field_str(&h[157..257]));
                let _ = fs::remove_file(&path);
                symlink(target, &path).map_err(|e| fail(&path, "create", e))?;
            }
            _ => {} // Hard links and devices are not carried.
        }
    }
    Ok(())
}

/// The `path` record of a pax extended header, if any.
fn pax_path(body: &[u8]) -> Option<Vec<u8>> {
    let mut rest = body;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        let record = rest.get(space + 1..len)?;
        if let Some(v) = record.strip_prefix(b"path=") {
            return Some(v.strip_suffix(b"\n").unwrap_or(v).to_vec());
        }
        rest = rest.get(len..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wp-shim-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// Builds an archive in memory the way `tar` streams it.
    fn archive(entries: &[(&[u8], u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, body) in entries {
            out.extend(header(name, *kind, 0o644, body.len() as u64, 0, b""));
            out.extend_from_slice(body);
            pad(&mut out);
        }
        out.extend_from_slice(&[0u8; BLOCK * 2]);
        out
    }

    #[test]
    fn entries_may_not_escape_their_directory() {
        let d = scratch("escape");
        assert_eq!(safe_join(&d, b"../x").unwrap_err().0, BAD_ARCHIVE);
        assert_eq!(safe_join(&d, b"/etc/x").unwrap_err().0, BAD_ARCHIVE);
        assert_eq!(safe_join(&d, b"a/./b").unwrap(), d.join("a/b"));
        symlink("/etc", d.join("evil")).unwrap();
        assert_eq!(safe_join(&d, b"evil/passwd").unwrap_err().0, BAD_ARCHIVE);
    }

    #[test]
    fn headers_carry_long_names_and_valid_checksums() {
        let long = vec![b'n'; 150];
        let h = header(&long, b'0', 0o644, 3, 0, b"");
        assert_eq!(
            h.len(),
            BLOCK * 3,
            "long-name header, its name block, the header"
        );
        assert_eq!(h[156], b'L');
        let last = &h[BLOCK * 2..];
        let stored = parse_octal(&last[148..156]).unwrap();
        let mut copy = last.to_vec();
        copy[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, copy.iter().map(|b| *b as u64).sum::<u64>());
    }

    #[test]
    fn a_gnu_long_name_entry_names_the_next_file() {
        let long = format!("{}/file", "d".repeat(120));
        let mut data = header(long.as_bytes(), b'0', 0o644, 2, 0, b"");
        data.extend_from_slice(b"hi");
        pad(&mut data);
        assert!(data.len() > BLOCK * 2);
        assert_eq!(parse_octal(&data[124..136]).unwrap(), long.len() as u64 + 1);
    }

    #[test]
    fn pax_path_records_are_read() {
        let rec = b"18 path=a/b/c.txt\n";
        assert_eq!(rec.len(), 18);
        assert_eq!(pax_path(rec).as_deref(), Some(&b"a/b/c.txt"[..]));
        assert_eq!(pax_path(b"12 mtime=1\n"), None);
    }

    #[test]
    fn an_archive_cut_short_is_refused() {
        let mut a = archive(&[(b"f", b'0', b"hello")]);
        a.truncate(BLOCK + 2);
        assert_eq!(extract(&scratch("short"), &a).unwrap_err().0, BAD_ARCHIVE);
    }

    #[test]
    fn what_is_not_a_tar_archive_is_refused() {
        let d = scratch("junk");
        assert_eq!(
            extract(&d, b"not a tar archive").unwrap_err().0,
            BAD_ARCHIVE
        );
        assert_eq!(extract(&d, &[b'j'; BLOCK * 3]).unwrap_err().0, BAD_ARCHIVE);
        let mut a = archive(&[(b"f", b'0', b"hello")]);
        a[0] = b'g'; // the name changed, the checksum did not
        assert_eq!(extract(&d, &a).unwrap_err().0, BAD_ARCHIVE);
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0, "nothing written");
        extract(&d, b"").unwrap();
        extract(&d, &archive(&[(b"f", b'0', b"hello")])).unwrap();
        assert_eq!(fs::read(d.join("f")).unwrap(), b"hello");
    }

    #[test]
    fn a_tree_round_trips_through_tar_and_untar() {
        let src = scratch("src");
        fs::create_dir_all(src.join("sub/deeper")).unwrap();
        fs::write(src.join("a.txt"), b"alpha").unwrap();
        fs::write(src.join("sub/deeper/bin"), [0u8, 255, 1, 2]).unwrap();
        let long = "l".repeat(130);
        fs::write(src.join("sub").join(&long), b"long").unwrap();
        symlink("a.txt", src.join("link")).unwrap();
        let mut tarball = Vec::new();
        write_tar(&src, &mut tarball).unwrap();
        let dst = scratch("dst");
        extract(&dst, &tarball).unwrap();
        assert_eq!(fs::read(dst.join("a.txt")).unwrap(), b"alpha");
        assert_eq!(
            fs::read(dst.join("sub/deeper/bin")).unwrap(),
            [0u8, 255, 1, 2]
        );
        assert_eq!(fs::read(dst.join("sub").join(&long)).unwrap(), b"long");
        assert_eq!(fs::read_link(dst.join("link")).unwrap(), Path::new("a.txt"));
    }

    #[test]
    fn an_archive_may_not_write_through_a_symlink() {
        let dst = scratch("through");
        let outside = scratch("outside");
        symlink(&outside, dst.join("out")).unwrap();
        let a = archive(&[(b"out/pwned", b'0', b"x")]);
        assert_eq!(extract(&dst, &a).unwrap_err().0, BAD_ARCHIVE);
        assert!(!outside.join("pwned").exists());
    }
}
