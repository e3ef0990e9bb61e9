//! Wire protocol between the warmpool daemon and its in-container shim.
//!
//! The daemon attaches once to the container's stdin/stdout (no TTY) and both sides exchange
//! frames over that single byte stream. Task output and stdin are arbitrary bytes, so the
//! framing is binary and length-prefixed rather than line-based JSON.
//!
//! Frame: `b"WP"` (2 bytes), kind (u8), body length (u32 big-endian), body.
//! Body fields: u8/u32/u64/i32 big-endian; bytes = u32 length + raw bytes; list = u32 count +
//! items; option = u8 flag (0 none, 1 some) + value; bool = u8 0/1; strings are UTF-8 bytes.
//! Request kinds (daemon to shim) are 0x01.., event kinds (shim to daemon) are 0x81.., so a
//! stream read in the wrong direction fails at once instead of decoding garbage.
//!
//! This file is shared: the daemon uses it as `crate::shim_proto`, the shim includes it with
//! `#[path]`, so it depends on std only.

// Each side uses one half: the daemon encodes requests and decodes events, the shim the reverse.
#![allow(dead_code)]

use std::fmt;

/// Version announced in [`Event::Hello`]; bump on any incompatible change of this file.
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest accepted frame body. Bigger frames are refused rather than buffered, so a corrupt
/// length cannot make either side allocate gigabytes.
pub const MAX_FRAME: usize = 64 << 20;

const MAGIC: [u8; 2] = *b"WP";
const HEADER_LEN: usize = 7;

const REQ_SPAWN: u8 = 0x01;
const REQ_PING: u8 = 0x02;
const REQ_KILL: u8 = 0x03;
const REQ_RESET: u8 = 0x04;

const EV_HELLO: u8 = 0x81;
const EV_STDOUT: u8 = 0x82;
const EV_STDERR: u8 = 0x83;
const EV_EXIT: u8 = 0x84;
const EV_PONG: u8 = 0x85;
const EV_RESET_DONE: u8 = 0x86;

/// A message from the daemon to the shim.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Run one task; answered by output events and then exactly one [`Event::Exit`].
    Spawn(Spawn),
    /// Liveness probe; answered at once with [`Event::Pong`], even while a task runs.
    Ping { nonce: u64 },
    /// SIGKILL the process group of the running task with this id (ignored if not running).
    Kill { id: u64 },
    /// Delete the contents of these directories (not the directories themselves).
    Reset { paths: Vec<Vec<u8>> },
}

/// One task to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Spawn {
    /// Chosen by the daemon; echoed in every event about this task.
    pub id: u64,
    /// `argv[0]` is looked up in `PATH` unless it contains a slash.
    pub argv: Vec<Vec<u8>>,
    /// Added to the shim's own environment; these win on conflicts.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// Working directory, created if missing; empty (or relative) = the container's working
    /// directory (or relative to it).
    pub workdir: Vec<u8>,
    /// Written to the task's stdin, which is then closed.
    pub stdin: Vec<u8>,
    /// Kill the task's process group after this long; 0 = no limit.
    pub timeout_ms: u64,
    /// Bytes forwarded per stream; the rest is drained and dropped; 0 = no limit.
    pub max_output: u64,
    /// Directories whose contents are wiped before the task starts (the previous pool task's
    /// files), as [`Request::Reset`] would, but without a round trip of its own. If the wipe
    /// fails the task is not started and its Exit carries `reset_error`.
    pub reset: Vec<Vec<u8>>,
}

/// A message from the shim to the daemon.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// First frame the shim writes after it starts.
    Hello {
        version: u32,
    },
    Stdout {
        id: u64,
        data: Vec<u8>,
    },
    Stderr {
        id: u64,
        data: Vec<u8>,
    },
    /// The task is over; no more output events for this id follow. Sent once every process
    /// the task started has been ended (the shim kills every other process of the container).
    /// When one cannot be ended, the shim sends this Exit and then exits itself, so that the
    /// container is replaced rather than reused.
    Exit(Exit),
    Pong {
        nonce: u64,
        busy: bool,
    },
    /// `error` lists what could not be removed, if anything.
    ResetDone {
        error: Option<String>,
    },
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub id: u64,
    /// Exit code when the main process exited normally.
    pub code: Option<i32>,
    /// Signal number when the main process was killed by a signal.
    pub signal: Option<i32>,
    /// The shim killed the task because `timeout_ms` elapsed.
    pub timed_out: bool,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// The task never ran (bad argv, exec failure, shim busy); code and signal are then None.
    pub spawn_error: Option<String>,
    /// The wipe asked by [`Spawn::reset`] failed (what could not be removed); the task was
    /// not started.
    pub reset_error: Option<String>,
}

/// A malformed or oversized frame. The stream cannot be resynchronised after one.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtoError(pub String);

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shim protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtoError {}

impl Request {
    /// Append this request as one frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Request::Spawn(s) => frame(out, REQ_SPAWN, |b| {
                put_u64(b, s.id);
                put_list(b, &s.argv, |b, a| put_bytes(b, a));
                put_list(b, &s.env, |b, (k, v)| {
                    put_bytes(b, k);
                    put_bytes(b, v);
                });
                put_bytes(b, &s.workdir);
                put_bytes(b, &s.stdin);
                put_u64(b, s.timeout_ms);
                put_u64(b, s.max_output);
                put_list(b, &s.reset, |b, p| put_bytes(b, p));
            }),
            Request::Ping { nonce } => frame(out, REQ_PING, |b| put_u64(b, *nonce)),
            Request::Kill { id } => frame(out, REQ_KILL, |b| put_u64(b, *id)),
            Request::Reset { paths } => frame(out, REQ_RESET, |b| {
                put_list(b, paths, |b, p| put_bytes(b, p));
            }),
        }
    }

    /// Decode the first frame of `buf`: `Ok(None)` if more bytes are needed, otherwise the
    /// request and the number of bytes it used.
    ///
    /// # Errors
    /// Bad magic, a body over [`MAX_FRAME`], an unknown kind or a malformed body. The stream
    /// cannot be resynchronised after any of them.
    pub fn decode(buf: &[u8]) -> Result<Option<(Request, usize)>, ProtoError> {
        let Some((kind, body, used)) = split_frame(buf)? else {
            return Ok(None);
        };
        let mut r = Reader { buf: body };
        let req = match kind {
            REQ_SPAWN => Request::Spawn(Spawn {
                id: r.u64()?,
                argv: r.list(Reader::bytes)?,
                env: r.list(|r| Ok((r.bytes()?, r.bytes()?)))?,
                workdir: r.bytes()?,
                stdin: r.bytes()?,
                timeout_ms: r.u64()?,
                max_output: r.u64()?,
                reset: r.list(Reader::bytes)?,
            }),
            REQ_PING => Request::Ping { nonce: r.u64()? },
            REQ_KILL => Request::Kill { id: r.u64()? },
            REQ_RESET => Request::Reset {
                paths: r.list(Reader::bytes)?,
            },
            k => return Err(ProtoError(format!("unknown request kind {k:#04x}"))),
        };
        r.finish()?;
        Ok(Some((req, used)))
    }
}

impl Event {
    /// Append this event as one frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Event::Hello { version } => frame(out, EV_HELLO, |b| put_u32(b, *version)),
            Event::Stdout { id, data } => frame(out, EV_STDOUT, |b| {
                put_u64(b, *id);
                put_bytes(b, data);
            }),
            Event::Stderr { id, data } => frame(out, EV_STDERR, |b| {
                put_u64(b, *id);
                put_bytes(b, data);
            }),
            Event::Exit(e) => frame(out, EV_EXIT, |b| {
                put_u64(b, e.id);
                put_option(b, e.code.as_ref(), |b, c| put_i32(b, *c));
                put_option(b, e.signal.as_ref(), |b, s| put_i32(b, *s));
                put_bool(b, e.timed_out);
                put_bool(b, e.stdout_truncated);
                put_bool(b, e.stderr_truncated);
                put_option(b, e.spawn_error.as_ref(), |b, s| put_bytes(b, s.as_bytes()));
                put_option(b, e.reset_error.as_ref(), |b, s| put_bytes(b, s.as_bytes()));
            }),
            Event::Pong { nonce, busy } => frame(out, EV_PONG, |b| {
                put_u64(b, *nonce);
                put_bool(b, *busy);
            }),
            Event::ResetDone { error } => frame(out, EV_RESET_DONE, |b| {
                put_option(b, error.as_ref(), |b, s| put_bytes(b, s.as_bytes()));
            }),
        }
    }

    /// Decode the first frame of `buf`: `Ok(None)` if more bytes are needed, otherwise the
    /// event and the number of bytes it used.
    ///
    /// # Errors
    /// Bad magic, a body over [`MAX_FRAME`], an unknown kind or a malformed body. The stream
    /// cannot be resynchronised after any of them.
    pub fn decode(buf: &[u8]) -> Result<Option<(Event, usize)>, ProtoError> {
        let Some((kind, body, used)) = split_frame(buf)? else {
            return Ok(None);
        };
        let mut r = Reader { buf: body };
        let ev = match kind {
            EV_HELLO => Event::Hello { version: r.u32()? },
            EV_STDOUT => Event::Stdout {
                id: r.u64()?,
                data: r.bytes()?,
            },
            EV_STDERR => Event::Stderr {
                id: r.u64()?,
                data: r.bytes()?,
            },
            EV_EXIT => Event::Exit(Exit {
                id: r.u64()?,
                code: r.option(Reader::i32)?,
                signal: r.option(Reader::i32)?,
                timed_out: r.bool()?,
                stdout_truncated: r.bool()?,
                stderr_truncated: r.bool()?,
                spawn_error: r.option(Reader::string)?,
                reset_error: r.option(Reader::string)?,
            }),
            EV_PONG => Event::Pong {
                nonce: r.u64()?,
                busy: r.bool()?,
            },
            EV_RESET_DONE => Event::ResetDone {
                error: r.option(Reader::string)?,
            },
            k => return Err(ProtoError(format!("unknown event kind {k:#04x}"))),
        };
        r.finish()?;
        Ok(Some((ev, used)))
    }
}

/// Write a frame header, let `body` fill in the body, then patch in the body length.
fn frame(out: &mut Vec<u8>, kind: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.push(kind);
    out.extend_from_slice(&[0; 4]);
    body(out);
    // A body over u32::MAX cannot be expressed; saturating makes the peer refuse it as
    // oversized instead of silently misreading a wrapped length.
    let len = u32::try_from(out.len() - start - HEADER_LEN).unwrap_or(u32::MAX);
    out[start + 3..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
}

/// Check the header of the first frame; returns its kind, its body and its total length once
/// the whole frame is in `buf`. Bad magic and oversize are reported as soon as they are seen.
fn split_frame(buf: &[u8]) -> Result<Option<RawFrame<'_>>, ProtoError> {
    let seen = buf.len().min(MAGIC.len());
    if buf[..seen] != MAGIC[..seen] {
        return Err(ProtoError(format!(
            "bad frame magic {:02x?} (expected \"WP\")",
            &buf[..seen]
        )));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if len > MAX_FRAME {
        return Err(ProtoError(format!(
            "frame of {len} bytes is larger than the limit of {MAX_FRAME}"
        )));
    }
    let total = HEADER_LEN + len;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((buf[2], &buf[HEADER_LEN..total], total)))
}

/// A complete frame found by [`split_frame`]: kind, body, bytes used including the header.
type RawFrame<'a> = (u8, &'a [u8], usize);

fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

fn put_bool(out: &mut Vec<u8>, v: bool) {
    put_u8(out, u8::from(v));
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    put_u32(out, u32::try_from(n).unwrap_or(u32::MAX));
}

fn put_bytes(out: &mut Vec<u8>, v: &[u8]) {
    put_len(out, v.len());
    out.extend_from_slice(v);
}

fn put_list<T>(out: &mut Vec<u8>, items: &[T], mut put: impl FnMut(&mut Vec<u8>, &T)) {
    put_len(out, items.len());
    for item in items {
        put(out, item);
    }
}

fn put_option<T>(out: &mut Vec<u8>, v: Option<&T>, put: impl FnOnce(&mut Vec<u8>, &T)) {
    match v {
        None => put_u8(out, 0),
        Some(v) => {
            put_u8(out, 1);
            put(out, v);
        }
    }
}

/// Cursor over one complete frame body; running past its end is an error, not "need more".
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if n > self.buf.len() {
            return Err(ProtoError(format!(
                "field of {n} bytes runs past the end of the frame ({} left)",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtoError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.array::<1>()?[0])
    }

    fn bool(&mut self) -> Result<bool, ProtoError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(ProtoError(format!("bad bool {v}"))),
        }
    }

    fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, ProtoError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, ProtoError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }

    fn string(&mut self) -> Result<String, ProtoError> {
        String::from_utf8(self.bytes()?).map_err(|_| ProtoError("string is not UTF-8".into()))
    }

    fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, ProtoError>,
    ) -> Result<Vec<T>, ProtoError> {
        let n = self.u32()? as usize;
        // Every item takes at least 4 bytes on the wire, so a corrupt count cannot reserve
        // more than the frame could hold.
        let mut items = Vec::with_capacity(n.min(self.buf.len() / 4));
        for _ in 0..n {
            items.push(item(self)?);
        }
        Ok(items)
    }

    fn option<T>(
        &mut self,
        value: impl FnOnce(&mut Self) -> Result<T, ProtoError>,
    ) -> Result<Option<T>, ProtoError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(value(self)?)),
            v => Err(ProtoError(format!("bad option flag {v}"))),
        }
    }

    fn finish(&self) -> Result<(), ProtoError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtoError(format!(
                "{} unexpected bytes at the end of the frame",
                self.buf.len()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests() -> Vec<Request> {
        vec![
            Request::Spawn(Spawn {
                id: 7,
                argv: vec![b"sh".to_vec(), b"-c".to_vec(), b"printf '\xff'".to_vec()],
                env: vec![
                    (b"K".to_vec(), b"V\0\xfe".to_vec()),
                    (b"E".to_vec(), vec![]),
                ],
                workdir: b"/work".to_vec(),
                stdin: (0..=255).collect(),
                timeout_ms: 30_000,
                max_output: 4 << 20,
                reset: vec![b"/work".to_vec(), b"/tmp".to_vec()],
            }),
            Request::Spawn(Spawn {
                id: u64::MAX,
                argv: vec![],
                env: vec![],
                workdir: vec![],
                stdin: vec![],
                timeout_ms: 0,
                max_output: 0,
                reset: vec![],
            }),
            Request::Ping { nonce: 42 },
            Request::Kill { id: 9 },
            Request::Reset {
                paths: vec![b"/work".to_vec(), b"/tmp".to_vec()],
            },
            Request::Reset { paths: vec![] },
        ]
    }

    fn events() -> Vec<Event> {
        vec![
            Event::Hello {
                version: PROTOCOL_VERSION,
            },
            Event::Stdout {
                id: 1,
                data: b"out\n\xff".to_vec(),
            },
            Event::Stderr {
                id: 1,
                data: vec![],
            },
            Event::Exit(Exit {
                id: 1,
                code: Some(-3),
                signal: None,
                timed_out: false,
                stdout_truncated: true,
                stderr_truncated: false,
                spawn_error: None,
                reset_error: None,
            }),
            Event::Exit(Exit {
                id: 2,
                code: None,
                signal: Some(9),
                timed_out: true,
                stdout_truncated: false,
                stderr_truncated: true,
                spawn_error: Some("cannot run \"x\": é".into()),
                reset_error: Some("/work/a: Permission denied".into()),
            }),
            Event::Pong {
                nonce: 5,
                busy: true,
            },
            Event::ResetDone { error: None },
            Event::ResetDone {
                error: Some("/work/x: Permission denied".into()),
            },
        ]
    }

    #[test]
    fn every_request_round_trips() {
        for req in requests() {
            let mut buf = Vec::new();
            req.encode(&mut buf);
            assert_eq!(Request::decode(&buf), Ok(Some((req, buf.len()))));
        }
    }

    #[test]
    fn every_event_round_trips() {
        for ev in events() {
            let mut buf = Vec::new();
            ev.encode(&mut buf);
            assert_eq!(Event::decode(&buf), Ok(Some((ev, buf.len()))));
        }
    }

    #[test]
    fn back_to_back_frames_decode_one_at_a_time() {
        let mut buf = Vec::new();
        for ev in events() {
            ev.encode(&mut buf);
        }
        let mut got = Vec::new();
        let mut at = 0;
        while let Some((ev, used)) = Event::decode(&buf[at..]).unwrap() {
            got.push(ev);
            at += used;
        }
        assert_eq!(at, buf.len());
        assert_eq!(got, events());
    }

    #[test]
    fn every_strict_prefix_needs_more_bytes() {
        for req in requests() {
            let mut buf = Vec::new();
            req.encode(&mut buf);
            for cut in 0..buf.len() {
                assert_eq!(Request::decode(&buf[..cut]), Ok(None), "cut at {cut}");
            }
        }
        for ev in events() {
            let mut buf = Vec::new();
            ev.encode(&mut buf);
            for cut in 0..buf.len() {
                assert_eq!(Event::decode(&buf[..cut]), Ok(None), "cut at {cut}");
            }
        }
    }

    #[test]
    fn bad_magic_is_an_error_as_soon_as_seen() {
        assert!(Request::decode(b"X").is_err());
        assert!(Request::decode(b"WX").is_err());
        assert!(Event::decode(b"HTTP/1.1 200 OK").is_err());
    }

    #[test]
    fn oversize_is_an_error_before_the_body_arrives() {
        let len = u32::try_from(MAX_FRAME + 1).unwrap();
        let mut buf = b"WP\x02".to_vec();
        buf.extend_from_slice(&len.to_be_bytes());
        let err = Request::decode(&buf).unwrap_err();
        assert!(err.to_string().contains("larger than the limit"), "{err}");
        assert!(Event::decode(&buf).is_err());
    }

    #[test]
    fn a_frame_of_the_other_direction_is_refused() {
        let mut buf = Vec::new();
        Request::Ping { nonce: 1 }.encode(&mut buf);
        assert!(Event::decode(&buf).is_err());
        buf.clear();
        Event::Pong {
            nonce: 1,
            busy: false,
        }
        .encode(&mut buf);
        assert!(Request::decode(&buf).is_err());
    }

    #[test]
    fn inconsistent_bodies_are_errors() {
        // A bytes field whose length runs past the frame.
        let mut buf = b"WP\x04\0\0\0\x08".to_vec();
        buf.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0xff, 0xff]);
        assert!(Request::decode(&buf).is_err());
        // Trailing bytes after the last field.
        let mut buf = Vec::new();
        Request::Kill { id: 1 }.encode(&mut buf);
        buf[6] += 1;
        buf.push(0);
        assert!(Request::decode(&buf).is_err());
        // A bool that is neither 0 nor 1.
        let mut buf = Vec::new();
        Event::Pong {
            nonce: 1,
            busy: true,
        }
        .encode(&mut buf);
        *buf.last_mut().unwrap() = 2;
        assert!(Event::decode(&buf).is_err());
        // A corrupt list count does not allocate for it.
        let buf = b"WP\x04\0\0\0\x04\xff\xff\xff\xff";
        assert!(Request::decode(buf).is_err());
    }
}
