//! The protocol stream to the daemon: where every event the shim sends goes, attached or
//! direct. Its own file because both the request loop (`protocol.rs`) and the task's output
//! supervisor (`task.rs`) write to it, and neither should need the other for that.

use crate::shim_proto::{Event, PROTOCOL_VERSION};
use crate::sys::{self, die};
use crate::threads::lock;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::Mutex;

/// Largest output chunk per Stdout/Stderr frame: one pipe's worth, so a frame is never big.
pub const CHUNK: usize = 64 << 10;

/// The protocol stream to the daemon. One mutex, so that frames never interleave.
///
/// Attached (stdout): always there; a failed write ends the shim. Direct (a unix socket the
/// daemon connects to): `None` between connections, and a failed write only drops the
/// connection (the daemon went away; the next one connects again).
pub struct Output {
    pub stream: Mutex<Option<File>>,
    pub direct: bool,
}

impl Output {
    pub fn send(&self, event: &Event) {
        let mut frame = Vec::new();
        event.encode(&mut frame);
        let mut stream = lock(&self.stream);
        let Some(out) = stream.as_mut() else {
            return;
        };
        if let Err(e) = out.write_all(&frame) {
            if !self.direct {
                // Docker keeps the container's stdout open while it runs, so this is not a
                // detach: a shim that cannot talk is useless, and its exit tells the daemon.
                die(2, &format!("cannot write to stdout: {e}"));
            }
            eprintln!("warmpool-shim: writing to the daemon's connection: {e}; dropping it");
            // The reading side (the main thread) sees end of input and accepts the next one.
            sys::shutdown_socket(out.as_fd());
            *stream = None;
        }
    }

    /// A new daemon connection: events go to it from now on, starting with the greeting.
    pub fn connect(&self, stream: File) {
        *lock(&self.stream) = Some(stream);
        self.send(&Event::Hello {
            version: PROTOCOL_VERSION,
        });
    }

    pub fn disconnect(&self) {
        *lock(&self.stream) = None;
    }
}
