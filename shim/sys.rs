//! The few libc calls std does not wrap, all in one place, and the two process-level helpers
//! beside them (`die`, `pid_of`). Values are those of Linux `x86_64` with glibc (the one target
//! this is built for).

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

pub const ECHILD: i32 = 10;
const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
const SA_RESTART: i32 = 0x1000_0000;
const O_CLOEXEC: i32 = 0o2_000_000;
const O_NONBLOCK: i32 = 0o4000;
const F_SETFL: i32 = 4;
const P_ALL: u32 = 0;
const WNOHANG: i32 = 1;
const WEXITED: i32 = 4;
const WNOWAIT: i32 = 0x0100_0000;
/// Also children whose exit signal is not SIGCHLD: PID 1 must reap whatever it inherits.
const WALL: i32 = 0x4000_0000;

/// glibc's `sigset_t`: 1024 bits.
#[repr(C)]
struct SigSet([u64; 16]);
/// glibc's `siginfo_t`: 128 bytes; its contents are not needed here.
#[repr(C)]
struct SigInfo([u64; 16]);
/// glibc's `struct sigaction` on x86_64 (152 bytes; `sigaction()` fills in the restorer).
#[repr(C)]
struct SigAction {
    handler: usize,
    mask: SigSet,
    flags: i32,
    restorer: usize,
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    fn waitid(idtype: u32, id: u32, info: *mut SigInfo, options: i32) -> i32;
    fn sigemptyset(set: *mut SigSet) -> i32;
    fn sigaction(sig: i32, act: *const SigAction, old: *mut SigAction) -> i32;
    fn pipe2(fds: *mut i32, flags: i32) -> i32;
    fn fcntl(fd: i32, cmd: i32, arg: i32) -> i32;
    fn read(fd: i32, buf: *mut u8, count: usize) -> isize;
    fn write(fd: i32, buf: *const u8, count: usize) -> isize;
    fn __errno_location() -> *mut i32;
    fn getpid() -> i32;
    fn geteuid() -> u32;
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
    fn shutdown(fd: i32, how: i32) -> i32;
    fn getsockopt(fd: i32, level: i32, name: i32, value: *mut Ucred, len: *mut u32) -> i32;
}

#[repr(C)]
#[derive(Default)]
struct Ucred {
    pid: i32,
    uid: u32,
    gid: u32,
}

const SOL_SOCKET: i32 = 1;
const SO_PEERCRED: i32 = 17;

/// The pid of a unix socket's peer as this process's pid namespace sees it: 0 for a process
/// outside it (the daemon, seen from a container), `None` if it cannot be told.
pub fn peer_pid(fd: std::os::fd::BorrowedFd<'_>) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let mut cred = Ucred::default();
    let mut len = std::mem::size_of::<Ucred>() as u32;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which outlives the call.
    let r = unsafe {
        getsockopt(
            fd.as_raw_fd(),
            SOL_SOCKET,
            SO_PEERCRED,
            &raw mut cred,
            &raw mut len,
        )
    };
    (r == 0).then_some(cred.pid)
}

const PR_SET_CHILD_SUBREAPER: i32 = 36;
const SHUT_RDWR: i32 = 2;

/// Shuts a socket down both ways, so that a thread blocked reading it sees end of input.
/// Errors (not a socket, already shut) are of no interest: the caller is giving up on it.
pub fn shutdown_socket(fd: std::os::fd::BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    // SAFETY: shutdown takes a descriptor that the borrow keeps open, and an integer.
    unsafe { shutdown(fd.as_raw_fd(), SHUT_RDWR) };
}

/// This process's effective uid.
pub fn my_euid() -> u32 {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { geteuid() }
}

/// This process's pid (in its own pid namespace: 1 when it is the container's init).
pub fn my_pid() -> i32 {
    // SAFETY: getpid takes nothing and cannot fail.
    unsafe { getpid() }
}

/// Make orphaned descendants reparent to this process rather than to the namespace's init,
/// so that it can find and reap them when it is not PID 1 itself.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// SIGKILL one process. ESRCH (already gone) is harmless; EPERM leaves it to the caller's
/// next look to notice.
pub fn kill_pid(pid: i32) {
    if pid > 1 {
        // SAFETY: kill takes plain integers and touches no memory of ours.
        unsafe { kill(pid, SIGKILL) };
    }
}

/// SIGKILL every process of our pid namespace but ourselves, in one call the kernel makes
/// atomic against forks (a fork bomb cannot outrun it). Only for the namespace's init: from
/// any other process `kill(-1)` reaches every process of the user, so this refuses then.
pub fn kill_namespace() -> bool {
    if my_pid() != 1 {
        return false;
    }
    // SAFETY: kill takes plain integers and touches no memory of ours. As PID 1, -1 means
    // every process of this namespace (and those below it) except ourselves.
    unsafe { kill(-1, SIGKILL) };
    true
}

/// SIGKILL a task: its process group (everything it started that did not leave the group)
/// and its main process `pid` itself, which may have left the group (`setpgid` into a
/// child's group) to dodge a timeout or Kill. The pid cannot name another process: the task
/// is not reaped until its supervisor takes its status, after this.
pub fn kill_task(pid: i32) {
    kill_group(pid);
    kill_pid(pid);
}

/// SIGKILL a whole process group: the task and everything it started that did not leave
/// the group.
pub fn kill_group(pgid: i32) {
    // Never 0 (our own group) or 1 (kill(-1) means every process we may signal).
    if pgid > 1 {
        // SAFETY: kill takes plain integers and touches no memory of ours. ESRCH (the
        // group is already gone) is the expected, harmless failure.
        unsafe { kill(-pgid, SIGKILL) };
    }
}

/// Block until some child has exited, without reaping it (so that a spawn in progress
/// can still reap its own failed child). Err(ECHILD) when there is no child at all.
pub fn wait_for_exited_child() -> io::Result<()> {
    let mut info = SigInfo([0; 16]);
    // SAFETY: `info` is a properly sized, writable siginfo_t that outlives the call.
    let r = unsafe { waitid(P_ALL, 0, &raw mut info, WEXITED | WNOWAIT | WALL) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reap one exited child if there is one.
pub fn reap_any() -> Option<(i32, ExitStatus)> {
    let mut status = 0;
    // SAFETY: `status` is a valid, writable int for the duration of the call.
    let pid = unsafe { waitpid(-1, &raw mut status, WNOHANG | WALL) };
    (pid > 0).then(|| (pid, ExitStatus::from_raw(status)))
}

/// The write end of the pipe the signal handler writes to, and its read end.
static SIGNAL_WRITE: AtomicI32 = AtomicI32::new(-1);
static SIGNAL_READ: AtomicI32 = AtomicI32::new(-1);

/// Writes the signal's number to the pipe: nothing else, since only async-signal-safe
/// calls may be made here. The write end is non-blocking (a full pipe drops the byte; one
/// is enough), and errno is put back for the code the signal interrupted.
extern "C" fn on_shutdown_signal(sig: i32) {
    // SAFETY: errno is this thread's own; write() is async-signal-safe and reads one byte
    // that outlives the call.
    unsafe {
        let errno = __errno_location();
        let saved = *errno;
        let byte = sig as u8;
        write(SIGNAL_WRITE.load(Ordering::Relaxed), &raw const byte, 1);
        *errno = saved;
    }
}

/// Catch SIGTERM and SIGINT with [`on_shutdown_signal`] (the self-pipe trick), so that
/// [`wait_shutdown_signal`] can take them on a thread of its own. A caught signal is
/// delivered even to PID 1, which the kernel spares signals left at their default action.
/// Nothing is blocked, so the tasks' signal mask stays empty; exec (and posix_spawn,
/// before it runs anything in the child) resets caught signals to their default action.
/// `SA_RESTART` keeps the other threads' blocking calls going.
pub fn catch_shutdown_signals() -> io::Result<()> {
    let mut fds = [-1i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { pipe2(fds.as_mut_ptr(), O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl on a descriptor we own, with an integer argument.
    if unsafe { fcntl(fds[1], F_SETFL, O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    SIGNAL_READ.store(fds[0], Ordering::Relaxed);
    SIGNAL_WRITE.store(fds[1], Ordering::Relaxed);
    let mut action = SigAction {
        handler: on_shutdown_signal as extern "C" fn(i32) as usize,
        mask: SigSet([0; 16]),
        flags: SA_RESTART,
        restorer: 0,
    };
    // SAFETY: `action` is a valid struct sigaction for the duration of the calls, its
    // handler an `extern "C" fn(i32)`; a null old-action pointer is allowed.
    unsafe {
        sigemptyset(&raw mut action.mask);
        for sig in [SIGTERM, SIGINT] {
            if sigaction(sig, &raw const action, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Block until SIGTERM or SIGINT arrives; returns its number.
pub fn wait_shutdown_signal() -> i32 {
    let fd = SIGNAL_READ.load(Ordering::Relaxed);
    loop {
        let mut byte = 0u8;
        // SAFETY: reads at most one byte into `byte`, which outlives the call.
        let n = unsafe { read(fd, &raw mut byte, 1) };
        if n == 1 {
            return i32::from(byte);
        }
        let e = io::Error::last_os_error();
        if n < 0 && e.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // We hold the write end, so neither EOF nor an error can happen; do not spin.
        eprintln!("warmpool-shim: reading the signal pipe: {e}");
        loop {
            std::thread::park();
        }
    }
}

/// Report on stderr and exit; PID 1 exiting takes the whole container down.
pub fn die(code: i32, msg: &str) -> ! {
    eprintln!("warmpool-shim: {msg}");
    std::process::exit(code)
}

/// Linux pids fit in an i32 (`pid_max` is at most 2^22), the type the libc calls take.
#[allow(clippy::cast_possible_wrap)]
pub fn pid_of(child: &std::process::Child) -> i32 {
    child.id() as i32
}

/// One entry of `poll(2)`'s array.
#[repr(C)]
pub struct PollFd {
    pub fd: i32,
    pub events: i16,
    pub revents: i16,
}

/// Readable (or, for a pidfd, the process has exited).
pub const POLLIN: i16 = 0x1;

extern "C" {
    fn poll(fds: *mut PollFd, nfds: u64, timeout: i32) -> i32;
    fn syscall(number: i64, ...) -> i64;
}

const SYS_PIDFD_OPEN: i64 = 434;

/// Wait until one of `fds` is ready or `timeout` passes (`None`: no limit). Returns how many
/// are ready; `revents` says which. EINTR comes back as `Interrupted`.
pub fn poll_fds(fds: &mut [PollFd], timeout: Option<std::time::Duration>) -> io::Result<usize> {
    // Rounded up, so that a wait for a deadline does not spin through its last millisecond.
    let ms = timeout.map_or(-1, |t| {
        i32::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
    });
    // SAFETY: `fds` is a valid, writable array of `fds.len()` pollfd structs for the call.
    let n = unsafe { poll(fds.as_mut_ptr(), fds.len() as u64, ms) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// A pidfd for `pid` (Linux 5.3+): it becomes readable when the process exits, which lets
/// one thread wait for the task's exit and its output at once. `None` if the kernel has none.
pub fn pidfd_open(pid: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags (0: close-on-exec is implied) and returns a new
    // descriptor that nothing else owns.
    let fd = unsafe { syscall(SYS_PIDFD_OPEN, i64::from(pid), 0i64) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: `fd` was just returned by the kernel and is ours alone.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Reap `pid` if it has exited (a zombie); `None` if it is still running (or not our child).
pub fn reap_pid(pid: i32) -> Option<ExitStatus> {
    let mut status = 0;
    // SAFETY: `status` is a valid, writable int for the duration of the call.
    let r = unsafe { waitpid(pid, &raw mut status, WNOHANG | WALL) };
    (r == pid).then(|| ExitStatus::from_raw(status))
}

/// Linux's `struct statx` (256 bytes); only the fields read here are named.
#[repr(C)]
struct Statx {
    mask: u32,
    _blksize: u32,
    attributes: u64,
    _nlink_uid_gid: [u32; 3],
    mode: u16,
    _pad: u16,
    _ino_size_blocks_attrmask: [u64; 4],
    _times: [u64; 8],
    _devs: [u32; 4],
    mnt_id: u64,
    _rest: [u64; 13],
}

extern "C" {
    fn openat(dirfd: i32, path: *const std::ffi::c_char, flags: i32, ...) -> i32;
    fn fchdir(fd: i32) -> i32;
    fn fchmod(fd: i32, mode: u32) -> i32;
    fn statx(
        dirfd: i32,
        path: *const std::ffi::c_char,
        flags: i32,
        mask: u32,
        buf: *mut Statx,
    ) -> i32;
}

const AT_FDCWD: i32 = -100;
const AT_EMPTY_PATH: i32 = 0x1000;
const O_DIRECTORY: i32 = 0o200_000;
const O_NOFOLLOW: i32 = 0o400_000;
const STATX_TYPE: u32 = 0x1;
const STATX_MODE: u32 = 0x2;
const STATX_MNT_ID: u32 = 0x1000;
const STATX_ATTR_MOUNT_ROOT: u64 = 0x2000;
const S_IFMT: u16 = 0o170_000;
const S_IFREG: u16 = 0o100_000;
const SYS_GETDENTS64: i64 = 217;

fn c_path(path: &[u8]) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Open `name` relative to `dir` (`None`: the cwd, for an absolute `name` the root) with
/// `flags` and close-on-exec.
fn open_at(
    dir: Option<std::os::fd::BorrowedFd<'_>>,
    name: &[u8],
    flags: i32,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let name = c_path(name)?;
    let dirfd = dir.map_or(AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `name` is a NUL-terminated string that outlives the call; no mode is passed
    // because `flags` never holds O_CREAT or O_TMPFILE.
    let fd = unsafe { openat(dirfd, name.as_ptr(), flags | O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned `fd`; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Open the directory at absolute `path` without following a symlink in its last component.
pub fn open_dir_nofollow(path: &[u8]) -> io::Result<std::os::fd::OwnedFd> {
    open_at(None, path, O_DIRECTORY | O_NOFOLLOW)
}

/// Read the file `name` below the directory `dir` (e.g. `PID/stat` below /proc).
pub fn read_at(dir: std::os::fd::BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut data = Vec::new();
    std::fs::File::from(open_at(Some(dir), name, 0)?).read_to_end(&mut data)?;
    Ok(data)
}

/// What statx says of an open file: whether it is the root of a mount, that mount's id
/// (Linux 5.8+; `None` before), its mode bits, and whether it is a regular file.
pub struct FdStat {
    pub mount_root: bool,
    pub mnt_id: Option<u64>,
    pub mode: u32,
    pub regular_file: bool,
}

/// statx of an open file (an `O_PATH` descriptor will do).
pub fn stat_fd(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<FdStat> {
    use std::os::fd::AsRawFd;
    // SAFETY: all-zero bytes are a valid `Statx` (plain integers).
    let mut st: Statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a static empty C string and `st` is a writable statx buffer.
    let r = unsafe {
        statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            AT_EMPTY_PATH,
            STATX_TYPE | STATX_MODE | STATX_MNT_ID,
            &raw mut st,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(FdStat {
        mount_root: st.attributes & STATX_ATTR_MOUNT_ROOT != 0,
        mnt_id: (st.mask & STATX_MNT_ID != 0).then_some(st.mnt_id),
        mode: u32::from(st.mode) & 0o7777,
        regular_file: st.mode & S_IFMT == S_IFREG,
    })
}

/// Set the mode bits of an open directory.
pub fn chmod_fd(fd: std::os::fd::BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain integer arguments.
    if unsafe { fchmod(fd.as_raw_fd(), mode) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Make the open directory `fd` the working directory (no path walk).
pub fn chdir_fd(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain integer argument.
    if unsafe { fchdir(fd.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Call `each` with the name of every entry of the directory `dir` but `.` and `..`, until
/// it returns false. Reads through a descriptor of its own, so callers on several threads
/// never share a position.
pub fn list_dir(
    dir: std::os::fd::BorrowedFd<'_>,
    mut each: impl FnMut(&[u8]) -> bool,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let own = open_at(Some(dir), b".", O_DIRECTORY)?;
    // u64s, so that the records' 8-byte fields are aligned.
    let mut buf = [0u64; 1024];
    loop {
        // SAFETY: `buf` is writable for its whole size for the duration of the call.
        let n = unsafe {
            syscall(
                SYS_GETDENTS64,
                i64::from(own.as_raw_fd()),
                buf.as_mut_ptr(),
                std::mem::size_of_val(&buf) as i64,
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        if n == 0 {
            return Ok(());
        }
        // SAFETY: the kernel filled the first `n` bytes of `buf`.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
        // linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name (NUL-ended).
        let mut at = 0;
        while at + 19 < n {
            let reclen = usize::from(u16::from_ne_bytes([bytes[at + 16], bytes[at + 17]]));
            // The fixed part and at least a NUL: anything shorter is not a record.
            if reclen < 20 || at + reclen > n {
                return Err(io::Error::from(io::ErrorKind::InvalidData));
            }
            let name = &bytes[at + 19..at + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if name != b"." && name != b".." && !each(name) {
                return Ok(());
            }
            at += reclen;
        }
    }
}

/// glibc's `struct statvfs` on x86_64; only the flags are read.
#[repr(C)]
struct StatVfs {
    _sizes_and_counts: [u64; 9],
    flag: u64,
    _namemax: u64,
    _spare: [i32; 6],
}

extern "C" {
    fn fstatvfs(fd: i32, buf: *mut StatVfs) -> i32;
    fn faccessat(dirfd: i32, path: *const std::ffi::c_char, mode: i32, flags: i32) -> i32;
}

const SYS_OPENAT2: i64 = 437;
const O_PATH: u64 = 0o10_000_000;
const RESOLVE_NO_XDEV: u64 = 0x01;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const ST_RDONLY: u64 = 1;
const X_OK: i32 = 1;
const AT_EACCESS: i32 = 0x200;

/// Linux's `struct open_how` (openat2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Whether the file system of `fd` is mounted read-only.
pub fn read_only_fs(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: all-zero bytes are a valid `StatVfs` (plain integers).
    let mut st: StatVfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a writable statvfs buffer for the call.
    if unsafe { fstatvfs(fd.as_raw_fd(), &raw mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.flag & ST_RDONLY != 0)
}

/// An `O_PATH` descriptor of `rel` below `dir`, resolved without leaving `dir`'s mount (no
/// mount point, symlink target or `..` on another one: `EXDEV`) or following a magic link
/// (Linux 5.6+, openat2; `ENOSYS` or `EPERM` from a seccomp profile without it).
pub fn open_on_same_mount(
    dir: std::os::fd::BorrowedFd<'_>,
    rel: &[u8],
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let rel = c_path(rel)?;
    let how = OpenHow {
        flags: O_PATH | O_CLOEXEC as u64,
        mode: 0,
        resolve: RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `rel` is NUL-terminated and `how` a valid open_how of the size passed, both
    // outliving the call.
    let fd = unsafe {
        syscall(
            SYS_OPENAT2,
            i64::from(dir.as_raw_fd()),
            rel.as_ptr(),
            &raw const how,
            std::mem::size_of::<OpenHow>() as i64,
        )
    };
    let fd = i32::try_from(fd)
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(io::Error::last_os_error)?;
    // SAFETY: the kernel just returned `fd`; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Whether we may execute `rel` below `dir` (our effective ids; a `noexec` mount says no).
pub fn executable(dir: std::os::fd::BorrowedFd<'_>, rel: &[u8]) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(rel) = c_path(rel) else {
        return false;
    };
    // SAFETY: `rel` is a NUL-terminated string that outlives the call.
    unsafe { faccessat(dir.as_raw_fd(), rel.as_ptr(), X_OK, AT_EACCESS) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    /// A task's main process that left its group (here: never in a group of its own pid)
    /// is still killed: a timeout or Kill cannot be dodged by `setpgid`.
    #[test]
    fn kill_task_reaches_a_main_process_outside_its_group() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = pid_of(&child);
        kill_task(pid);
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(SIGKILL), "{status:?}");
    }

    #[test]
    fn a_directory_listing_skips_dot_entries_and_can_stop_early() {
        let base = std::env::temp_dir().join(format!("shim-list-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        use std::os::fd::AsFd;
        use std::os::unix::ffi::OsStrExt;
        let fd = open_dir_nofollow(base.as_os_str().as_bytes()).unwrap();
        let names = |stop_after: usize| {
            let mut seen = Vec::new();
            list_dir(fd.as_fd(), |n| {
                seen.push(n.to_vec());
                seen.len() < stop_after
            })
            .unwrap();
            seen.sort();
            seen
        };
        assert!(names(usize::MAX).is_empty());
        for name in [".hidden", "..x", "plain"] {
            std::fs::write(base.join(name), b"").unwrap();
        }
        let all = names(usize::MAX);
        assert_eq!(
            all,
            vec![b"..x".to_vec(), b".hidden".to_vec(), b"plain".to_vec()]
        );
        assert_eq!(names(1).len(), 1);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
