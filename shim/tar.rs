//! The shim's own tar, std only (the shim is built with plain rustc, so no crate).
//!
//! Writing: ustar headers, GNU long-name (`L`) and long-link (`K`) entries for names and
//! link targets over 100 bytes, hard links (`1`) for files that share an inode, modes, and
//! directories (empty ones included).
//!
//! Reading: ustar, GNU and pax archives: `L`/`K` entries, pax extended (`x`) and global (`g`)
//! headers (`path`, `linkpath`, `size`), base-256 numbers, hard links. An archive is parsed
//! and checked whole before anything is written (entries may not leave the directory, by name,
//! by hard link or through a symlink), so a refused archive changes nothing; if writing then
//! fails (a full disk), what it had created is removed again.

use crate::failure::{fail_read, fail_write, Failure, BAD_ARCHIVE, WRONG_KIND};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const BLOCK: usize = 512;
/// Longest name or link target a ustar header field holds.
const FIELD: usize = 100;

// ---------------------------------------------------------------------------------------
// Writing

/// One ustar header block for `name`, preceded by GNU `L`/`K` entries when the name or the
/// link target does not fit its field.
fn header(name: &[u8], kind: u8, meta: &Stat, size: u64, link: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (long, flag) in [(name, b'L'), (link, b'K')] {
        if long.len() > FIELD {
            let mut text = long.to_vec();
            text.push(0);
            out.extend(block(
                b"././@LongLink",
                flag,
                &Stat::default(),
                text.len() as u64,
                b"",
            ));
            out.extend_from_slice(&text);
            pad(&mut out);
        }
    }
    out.extend(block(name, kind, meta, size, link));
    out
}

/// What a header records of a file besides its name and size.
#[derive(Default, Clone, Copy)]
struct Stat {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
}

fn block(name: &[u8], kind: u8, meta: &Stat, size: u64, link: &[u8]) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let name = &name[..name.len().min(FIELD)];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], u64::from(meta.mode & 0o7777));
    octal(&mut h[108..116], u64::from(meta.uid));
    octal(&mut h[116..124], u64::from(meta.gid));
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], meta.mtime);
    h[156] = kind;
    let link = &link[..link.len().min(FIELD)];
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    octal(&mut h[148..155], sum);
    h
}

/// An octal number filling `field` but its last byte (a NUL); base-256 when it does not fit
/// (uids of 2^21 and over, sizes of 8 GiB and over), as GNU tar does.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    if digits * 3 < 64 && value >> (digits * 3) != 0 {
        field.fill(0);
        let bytes = value.to_be_bytes();
        let n = bytes.len().min(field.len());
        let start = field.len() - n;
        field[start..].copy_from_slice(&bytes[bytes.len() - n..]);
        field[0] |= 0x80;
        return;
    }
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % BLOCK;
    if rem != 0 {
        out.resize(out.len() + BLOCK - rem, 0);
    }
}

/// Writes `dir`'s contents (not `dir` itself) as a tar stream, depth first in name order.
pub fn write(dir: &Path, out: &mut impl Write) -> Result<(), Failure> {
    let meta = fs::metadata(dir).map_err(|e| fail_read(dir, "read", e))?;
    if !meta.is_dir() {
        return Err((WRONG_KIND, format!("{} is not a directory", dir.display())));
    }
    let send = |out: &mut dyn Write, bytes: &[u8]| {
        out.write_all(bytes).map_err(|e| fail_read(dir, "send", e))
    };
    // Files seen with more than one link, by (device, inode): later names become hard links.
    let mut linked: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = dir.join(&rel);
        let mut entries = Vec::new();
        for entry in fs::read_dir(&full).map_err(|e| fail_read(&full, "list", e))? {
            entries.push(entry.map_err(|e| fail_read(&full, "list", e))?.file_name());
        }
        entries.sort();
        // Reversed onto the stack, so that subdirectories come out in name order.
        let mut subdirs = Vec::new();
        for file_name in entries {
            let rel = rel.join(&file_name);
            let path = dir.join(&rel);
            let meta = fs::symlink_metadata(&path).map_err(|e| fail_read(&path, "read", e))?;
            let name = rel.as_os_str().as_bytes();
            let stat = Stat {
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: u64::try_from(meta.mtime()).unwrap_or(0),
            };
            let kind = meta.file_type();
            if kind.is_dir() {
                let mut n = name.to_vec();
                n.push(b'/');
                send(out, &header(&n, b'5', &stat, 0, b""))?;
                subdirs.push(rel);
            } else if kind.is_symlink() {
                let target = fs::read_link(&path).map_err(|e| fail_read(&path, "read", e))?;
                let target = target.as_os_str().as_bytes();
                send(out, &header(name, b'2', &stat, 0, target))?;
            } else if kind.is_file() {
                if meta.nlink() > 1 {
                    let key = (meta.dev(), meta.ino());
                    if let Some(first) = linked.get(&key) {
                        send(out, &header(name, b'1', &stat, 0, first))?;
                        continue;
                    }
                    linked.insert(key, name.to_vec());
                }
                let mut data = Vec::new();
                File::open(&path)
                    .and_then(|mut f| f.read_to_end(&mut data))
                    .map_err(|e| fail_read(&path, "read", e))?;
                let mut b = header(name, b'0', &stat, data.len() as u64, b"");
                b.extend_from_slice(&data);
                pad(&mut b);
                send(out, &b)?;
            }
            // Sockets, fifos, devices: nothing a client can use.
        }
        stack.extend(subdirs.into_iter().rev());
    }
    send(out, &[0u8; BLOCK * 2])
}

// ---------------------------------------------------------------------------------------
// Reading

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
    /// Fifos and devices: not carried.
    Skip,
}

/// One archive member, its name and link as the archive says (not yet checked).
#[derive(Debug)]
pub struct Entry<'a> {
    pub name: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub link: Vec<u8>,
    pub data: &'a [u8],
}

fn bad(msg: impl Into<String>) -> Failure {
    (BAD_ARCHIVE, msg.into())
}

fn cstr(h: &[u8]) -> &[u8] {
    let end = h.iter().position(|b| *b == 0).unwrap_or(h.len());
    &h[..end]
}

/// A numeric header field: octal text, or GNU base-256 when its first byte has the high bit.
fn number(h: &[u8]) -> Result<u64, Failure> {
    if h.first().is_some_and(|b| b & 0x80 != 0) {
        if h[0] == 0xff {
            return Err(bad("a negative number in a tar header"));
        }
        let mut v: u64 = u64::from(h[0] & 0x7f);
        for b in &h[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(*b)))
                .ok_or_else(|| bad("a number too large in a tar header"))?;
        }
        return Ok(v);
    }
    let text = std::str::from_utf8(cstr(h)).unwrap_or("?").trim();
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| bad(format!("bad number {text:?} in a tar header")))
}

/// A header's checksum: the sum of its bytes with the checksum field read as spaces (some
/// old writers summed signed bytes, which is accepted too). Without this check, any body
/// would be taken for entries with garbage names.
fn check_sum(h: &[u8]) -> Result<(), Failure> {
    let stored = number(&h[148..156])
        .map_err(|_| bad("the body is not a tar archive (bad header checksum)"))?;
    let field = |i: usize| if (148..156).contains(&i) { b' ' } else { h[i] };
    let unsigned: u64 = (0..BLOCK).map(|i| u64::from(field(i))).sum();
    let signed: i64 = (0..BLOCK).map(|i| i64::from(field(i) as i8)).sum();
    if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
        Ok(())
    } else {
        Err(bad(
            "the body is not a tar archive (a header's checksum does not match)",
        ))
    }
}

/// The records of a pax header (`LEN key=value\n` each).
fn pax_records(body: &[u8]) -> Result<Vec<(String, Vec<u8>)>, Failure> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() && rest[0] != 0 {
        let malformed = || bad("a malformed pax header record");
        let space = rest.iter().position(|b| *b == b' ').ok_or_else(malformed)?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(malformed)?;
        let record = rest.get(space + 1..len).ok_or_else(malformed)?;
        let record = record.strip_suffix(b"\n").ok_or_else(malformed)?;
        let eq = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or_else(malformed)?;
        let key = String::from_utf8_lossy(&record[..eq]).into_owned();
        out.push((key, record[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

/// Parses a whole archive; nothing is written.
pub fn parse(data: &[u8]) -> Result<Vec<Entry<'_>>, Failure> {
    if data.len() % BLOCK != 0 {
        return Err(bad(format!(
            "the body is not a tar archive ({} bytes, not a whole number of 512-byte blocks)",
            data.len()
        )));
    }
    let mut entries = Vec::new();
    let mut global: HashMap<String, Vec<u8>> = HashMap::new();
    let mut local: HashMap<String, Vec<u8>> = HashMap::new();
    let (mut long_name, mut long_link): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
    let mut at = 0;
    while at + BLOCK <= data.len() {
        let h = &data[at..at + BLOCK];
        at += BLOCK;
        if h.iter().all(|b| *b == 0) {
            break;
        }
        check_sum(h)?;
        let flag = h[156];
        let meta = matches!(flag, b'L' | b'K' | b'x' | b'g');
        let pax = |key: &str| local.get(key).or_else(|| global.get(key));
        let size = match pax("size").filter(|_| !meta) {
            Some(s) => std::str::from_utf8(s)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| bad("a bad pax size record"))?,
            None => number(&h[124..136])?,
        };
        // Hard links, symlinks, directories and the rest carry no data, whatever the size says
        // (except in pax, where a hard link may; it is skipped all the same).
        let end = usize::try_from(size)
            .ok()
            .and_then(|s| at.checked_add(s))
            .filter(|e| *e <= data.len())
            .ok_or_else(|| bad("the archive ends in the middle of an entry"))?;
        let body = &data[at..end];
        at = end.div_ceil(BLOCK) * BLOCK;
        match flag {
            b'L' => {
                long_name = Some(cstr(body).to_vec());
                continue;
            }
            b'K' => {
                long_link = Some(cstr(body).to_vec());
                continue;
            }
            b'x' => {
                local.extend(pax_records(body)?);
                continue;
            }
            b'g' => {
                global.extend(pax_records(body)?);
                continue;
            }
            _ => {}
        }
        let mut name = cstr(&h[..100]).to_vec();
        // POSIX ustar ("ustar\0") has a prefix field; old GNU ("ustar  ") keeps other data there.
        if &h[257..263] == b"ustar\0" && h[345] != 0 {
            let mut full = cstr(&h[345..500]).to_vec();
            full.push(b'/');
            full.extend_from_slice(&name);
            name = full;
        }
        // Precedence: this entry's pax record, its GNU long entry, a global pax record.
        let (local_name, local_link) = (local.get("path"), local.get("linkpath"));
        if let Some(n) = local_name
            .cloned()
            .or(long_name.take())
            .or_else(|| global.get("path").cloned())
        {
            name = n;
        }
        let mut link = cstr(&h[157..257]).to_vec();
        if let Some(l) = local_link
            .cloned()
            .or(long_link.take())
            .or_else(|| global.get("linkpath").cloned())
        {
            link = l;
        }
        long_name = None;
        long_link = None;
        local.clear();
        let kind = match flag {
            b'0' | 0 | b'7' => Kind::File,
            b'1' => Kind::HardLink,
            b'2' => Kind::Symlink,
            b'5' => Kind::Dir,
            b'3' | b'4' | b'6' => Kind::Skip,
            other => {
                return Err(bad(format!(
                    "{}: tar entry type {:?} is not supported (sparse, multi-volume and \
                     incremental archives are not)",
                    String::from_utf8_lossy(&name),
                    char::from(other)
                )))
            }
        };
        if name.contains(&0) || link.contains(&0) {
            return Err(bad(format!(
                "{:?}: a name or link target with a NUL byte",
                String::from_utf8_lossy(&name)
            )));
        }
        let mode = u32::try_from(number(&h[100..108])? & 0o7777).unwrap_or(0o644);
        let data = if kind == Kind::File { body } else { &[][..] };
        entries.push(Entry {
            name,
            kind,
            mode,
            link,
            data,
        });
    }
    if long_name.is_some() || long_link.is_some() || !local.is_empty() {
        return Err(bad("the archive ends after a long-name or pax header"));
    }
    Ok(entries)
}

/// `name` as components below the archive's directory: `.` and empty parts dropped, absolute
/// names and `..` refused. Empty for the directory itself.
fn relative(name: &[u8], what: &str) -> Result<Vec<Vec<u8>>, Failure> {
    let shown = || String::from_utf8_lossy(name).into_owned();
    if name.first() == Some(&b'/') {
        return Err(bad(format!(
            "refusing the archive {what} {:?}: an absolute path",
            shown()
        )));
    }
    let mut parts = Vec::new();
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(bad(format!(
                    "refusing the archive {what} {:?}: it leaves the directory ('..')",
                    shown()
                )))
            }
            p => parts.push(p.to_vec()),
        }
    }
    Ok(parts)
}

fn join(dir: &Path, parts: &[Vec<u8>]) -> PathBuf {
    let mut p = dir.to_path_buf();
    for part in parts {
        p.push(OsStr::from_bytes(part));
    }
    p
}

/// What a path below the directory is, as the archive leaves it so far.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Seen {
    File,
    Dir,
    Symlink,
    Missing,
}

/// One checked step of an extraction.
struct Step<'a> {
    path: PathBuf,
    kind: Kind,
    mode: u32,
    link: PathBuf,
    data: &'a [u8],
}

/// Checks every entry against the directory and the entries before it, so that extraction
/// cannot be refused halfway: nothing leaves the directory by name, by hard link or through
/// a symlink (one on disk or one the archive makes), and nothing replaces a directory.
fn plan<'a>(dir: &Path, entries: &[Entry<'a>]) -> Result<Vec<Step<'a>>, Failure> {
    let mut made: HashMap<Vec<Vec<u8>>, Seen> = HashMap::new();
    let seen = |made: &HashMap<Vec<Vec<u8>>, Seen>, parts: &[Vec<u8>]| -> Seen {
        if let Some(s) = made.get(parts) {
            return *s;
        }
        match fs::symlink_metadata(join(dir, parts)) {
            Ok(m) if m.file_type().is_symlink() => Seen::Symlink,
            Ok(m) if m.is_dir() => Seen::Dir,
            Ok(_) => Seen::File,
            Err(_) => Seen::Missing,
        }
    };
    // The directories on the way to `parts` must be directories (or not exist yet).
    let check_way = |made: &HashMap<Vec<Vec<u8>>, Seen>, parts: &[Vec<u8>], name: &[u8]| {
        for i in 1..parts.len() {
            let shown = String::from_utf8_lossy(name);
            match seen(made, &parts[..i]) {
                Seen::Dir | Seen::Missing => {}
                Seen::Symlink => {
                    return Err(bad(format!(
                        "refusing the archive entry {shown:?}: it would write through the \
                         symlink {}",
                        join(dir, &parts[..i]).display()
                    )))
                }
                Seen::File => {
                    return Err(bad(format!(
                        "refusing the archive entry {shown:?}: {} is a file, not a directory",
                        join(dir, &parts[..i]).display()
                    )))
                }
            }
        }
        Ok(())
    };
    let mut steps = Vec::new();
    for e in entries {
        let parts = relative(&e.name, "entry")?;
        if parts.is_empty() || e.kind == Kind::Skip {
            continue;
        }
        let shown = String::from_utf8_lossy(&e.name).into_owned();
        check_way(&made, &parts, &e.name)?;
        let now = seen(&made, &parts);
        let mut link = PathBuf::new();
        match e.kind {
            Kind::Dir => {
                if now == Seen::File {
                    return Err(bad(format!(
                        "refusing the archive entry {shown:?}: a file is in the way"
                    )));
                }
                made.insert(parts.clone(), Seen::Dir);
            }
            Kind::File | Kind::Symlink | Kind::HardLink => {
                if now == Seen::Dir {
                    return Err((
                        WRONG_KIND,
                        format!(
                            "refusing the archive entry {shown:?}: {} is a directory",
                            join(dir, &parts).display()
                        ),
                    ));
                }
                if e.kind == Kind::Symlink {
                    if e.link.is_empty() {
                        return Err(bad(format!("the symlink {shown:?} has no target")));
                    }
                    link = PathBuf::from(OsStr::from_bytes(&e.link));
                }
                if e.kind == Kind::HardLink {
                    let target = relative(&e.link, "hard link target").map_err(|(c, m)| {
                        (c, format!("{m} (the hard link {shown:?} must stay inside)"))
                    })?;
                    check_way(&made, &target, &e.link).map_err(|(c, m)| {
                        (c, format!("{m} (the target of the hard link {shown:?})"))
                    })?;
                    if target.is_empty() || target == parts || seen(&made, &target) != Seen::File {
                        return Err(bad(format!(
                            "the hard link {shown:?} points to {:?}, which is not a file \
                             in the archive or the directory",
                            String::from_utf8_lossy(&e.link)
                        )));
                    }
                    link = join(dir, &target);
                }
                let kind = if e.kind == Kind::Symlink {
                    Seen::Symlink
                } else {
                    Seen::File
                };
                made.insert(parts.clone(), kind);
            }
            Kind::Skip => {}
        }
        steps.push(Step {
            path: join(dir, &parts),
            kind: e.kind,
            mode: e.mode,
            link,
            data: e.data,
        });
    }
    Ok(steps)
}

/// Extracts the tar archive `data` into `dir` (created if missing), all or nothing as far as
/// a refusal goes (see the module's documentation).
pub fn extract(dir: &Path, data: &[u8]) -> Result<(), Failure> {
    let entries = parse(data)?;
    if fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
        return Err((WRONG_KIND, format!("{} is not a directory", dir.display())));
    }
    let steps = plan(dir, &entries)?;
    let mut created = Vec::new();
    let result = apply(dir, &steps, &mut created);
    if result.is_err() {
        for path in created.iter().rev() {
            let _ = match fs::symlink_metadata(path) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(path),
                _ => fs::remove_file(path),
            };
        }
    }
    result
}

/// Creates the missing directories down to `path`, recording them in `created`.
fn make_dirs(path: &Path, created: &mut Vec<PathBuf>) -> Result<(), Failure> {
    let mut missing = Vec::new();
    let mut p = path;
    while fs::symlink_metadata(p).is_err() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    for d in missing.into_iter().rev() {
        fs::create_dir(&d).map_err(|e| fail_write(&d, "create", e))?;
        created.push(d);
    }
    Ok(())
}

/// Makes room for a new entry at `path`: a file or symlink there is removed (never followed).
fn clear(path: &Path, created: &mut Vec<PathBuf>) -> Result<(), Failure> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => fs::remove_file(path).map_err(|e| fail_write(path, "replace", e)),
        Err(_) => {
            created.push(path.to_path_buf());
            Ok(())
        }
    }
}

fn apply(dir: &Path, steps: &[Step<'_>], created: &mut Vec<PathBuf>) -> Result<(), Failure> {
    make_dirs(dir, created)?;
    let mut dir_modes = Vec::new();
    for s in steps {
        let path = &s.path;
        if let Some(parent) = path.parent() {
            make_dirs(parent, created)?;
        }
        match s.kind {
            Kind::Dir => {
                if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
                    fs::remove_file(path).map_err(|e| fail_write(path, "replace", e))?;
                }
                make_dirs(path, created)?;
                // Set last: a read-only directory must still take its entries.
                dir_modes.push((path, s.mode));
            }
            Kind::File => {
                clear(path, created)?;
                let mut f = File::create(path).map_err(|e| fail_write(path, "write", e))?;
                f.write_all(s.data)
                    .map_err(|e| fail_write(path, "write", e))?;
                fs::set_permissions(path, fs::Permissions::from_mode(s.mode & 0o777))
                    .map_err(|e| fail_write(path, "set the mode of", e))?;
            }
            Kind::Symlink => {
                clear(path, created)?;
                symlink(&s.link, path).map_err(|e| fail_write(path, "create", e))?;
            }
            Kind::HardLink => {
                clear(path, created)?;
                fs::hard_link(&s.link, path).map_err(|e| fail_write(path, "link", e))?;
            }
            Kind::Skip => {}
        }
    }
    for (path, mode) in dir_modes.into_iter().rev() {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o777))
            .map_err(|e| fail_write(path, "set the mode of", e))?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "tar_tests.rs"]
mod tests;
