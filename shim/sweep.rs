//! Ending whatever a task left behind. Nothing a task started may outlive it: a loop that
//! left the task's process group (`setsid cmd &`) would otherwise keep running into the next
//! tenant's task, reading and writing its files.
//!
//! As the container's init (PID 1) the shim sees every process of the container in /proc:
//! after each task it SIGKILLs all of them but itself (`kill(-1)`, which the kernel makes
//! atomic against forks), lets the reaper reap them, and looks again until none is left or
//! the deadline passes. Outside a container's pid namespace (a shim started by hand), only
//! its own descendants are ended: `kill(-1)` would reach every process of the user.
//!
//! Processes started into the container from outside as the shim's own user (`docker exec`:
//! their parent is not in the namespace, so /proc shows ppid 0), their descendants, and the
//! members of their sessions (runc makes each exec'd process a session leader, so its orphans,
//! which the kernel gives to us, keep its session id) are spared: a task cannot start one
//! (whatever it forks has a parent inside, and cannot join another session), and one may be
//! another task of the same session running beside this one (`max_concurrent_tasks` above 1
//! runs the others through the engine's exec, as the container's user). One started as
//! another user (an operator's `docker exec -u 0`) is not spared: the shim cannot end it, so
//! the container is retired rather than handed to the next tenant with it inside. With any
//! process spared the others are killed one by one instead of by `kill(-1)`.

use crate::{dirs, sys};
use std::collections::HashSet;
use std::fs;
use std::io;
use std::thread;
use std::time::{Duration, Instant};

/// How long what a task left behind may take to die. Well inside the daemon's 5 s backstop
/// after a task's timeout.
pub const DEADLINE: Duration = Duration::from_secs(2);

/// Which processes to end.
#[derive(Clone, Copy)]
pub enum Scope {
    /// Every process of our pid namespace but ourselves (we are its init).
    Namespace,
    /// The descendants of this pid (not the pid itself).
    Below(i32),
}

impl Scope {
    /// The scope a shim running as `pid` may sweep.
    pub fn for_pid(pid: i32) -> Scope {
        if pid == 1 {
            Scope::Namespace
        } else {
            Scope::Below(pid)
        }
    }
}

/// One process as /proc shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    /// Its session id.
    pub sid: i32,
    pub state: char,
    pub comm: String,
}

/// SIGKILL every process in `scope` and wait until /proc lists none, up to `deadline`.
/// `wake_reaper` runs whenever some are left, before waiting: the reaper takes the dead out
/// of /proc, and it may be asleep (see `task::Reaper`). Err describes those still there at
/// the deadline (unkillable: another user's, stuck in the kernel), for the caller to give up
/// on the container.
pub fn end_all(scope: Scope, deadline: Instant, wake_reaper: &dyn Fn()) -> Result<(), String> {
    let mut pause = Duration::from_micros(100);
    loop {
        let (left, spared) = match processes(scope) {
            Ok(found) => found,
            Err(e) => {
                // Without /proc nothing can be checked: kill what we can and say so.
                if matches!(scope, Scope::Namespace) {
                    sys::kill_namespace();
                }
                eprintln!("warmpool-shim: cannot list processes in /proc: {e}");
                return Ok(());
            }
        };
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(describe(&left));
        }
        // Zombies are dead already: the reaper (theirs is us, or becomes us once their parent
        // is killed) takes them out of /proc.
        if left.iter().any(|p| p.state != 'Z') {
            match scope {
                Scope::Namespace if !spared => {
                    sys::kill_namespace();
                }
                _ => left.iter().for_each(|p| sys::kill_pid(p.pid)),
            }
        }
        wake_reaper();
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// The processes in `scope` to end, from /proc, and whether any were spared as started
/// from outside (see the module's comment).
fn processes(scope: Scope) -> io::Result<(Vec<Proc>, bool)> {
    let me = sys::my_pid();
    // Through a kept /proc (`dirs.rs`) when there is one: no walk from `/` per look.
    let proc_dir = dirs::KEPT.kept(b"/proc");
    let mut pids = Vec::new();
    let mut note = |name: &[u8]| {
        let pid = std::str::from_utf8(name)
            .ok()
            .and_then(|n| n.parse::<i32>().ok());
        pids.extend(pid.filter(|pid| *pid != me));
        true
    };
    match proc_dir {
        Some(fd) => sys::list_dir(fd, note)?,
        None => {
            for entry in fs::read_dir("/proc")?.flatten() {
                note(entry.file_name().as_encoded_bytes());
            }
        }
    }
    let mut all = Vec::new();
    for pid in pids {
        let stat = match proc_dir {
            Some(fd) => sys::read_at(fd, format!("{pid}/stat").as_bytes()),
            None => fs::read(format!("/proc/{pid}/stat")),
        };
        // Gone between the listing and here: nothing to end.
        let Ok(stat) = stat else {
            continue;
        };
        if let Some(p) = parse_stat(pid, &stat) {
            all.push(p);
        }
    }
    Ok(match scope {
        Scope::Namespace => {
            let (outside, inside) = started_outside(all, &runs_as_us);
            (inside, !outside.is_empty())
        }
        Scope::Below(root) => (descendants(root, all), false),
    })
}

/// Splits a namespace's processes into those started from outside it (ppid 0: `docker
/// exec`) with all their descendants, and the rest.
///
/// `ours(pid)` says whether a process runs as the shim's user; only those are spared.
fn started_outside(all: Vec<Proc>, ours: &dyn Fn(i32) -> bool) -> (Vec<Proc>, Vec<Proc>) {
    let roots: HashSet<i32> = all
        .iter()
        .filter(|p| p.ppid == 0 && ours(p.pid))
        .map(|p| p.pid)
        .collect();
    if roots.is_empty() {
        return (Vec::new(), all);
    }
    // The roots, the members of their sessions, and everything below either.
    let mut family: HashSet<i32> = all
        .iter()
        .filter(|p| roots.contains(&p.pid) || roots.contains(&p.sid))
        .map(|p| p.pid)
        .collect();
    loop {
        let more: Vec<i32> = all
            .iter()
            .filter(|p| !family.contains(&p.pid) && family.contains(&p.ppid))
            .map(|p| p.pid)
            .collect();
        if more.is_empty() {
            break;
        }
        family.extend(more);
    }
    let (mut outside, inside): (Vec<Proc>, Vec<Proc>) =
        all.into_iter().partition(|p| family.contains(&p.pid));
    outside.sort_by_key(|p| p.pid);
    (outside, inside)
}

/// Whether process `pid` runs as our effective user (the owner of its /proc directory).
fn runs_as_us(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == sys::my_euid())
}

/// `/proc/PID/stat`: `pid (comm) state ppid ...`; comm may hold spaces and parentheses, so
/// it ends at the last `)`.
fn parse_stat(pid: i32, stat: &[u8]) -> Option<Proc> {
    let text = String::from_utf8_lossy(stat);
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let mut rest = text.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let _pgrp = rest.next()?;
    let sid = rest.next()?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        sid,
        state,
        comm,
    })
}

fn descendants(root: i32, all: Vec<Proc>) -> Vec<Proc> {
    let mut family: HashSet<i32> = HashSet::from([root]);
    let mut rest = all;
    let mut found = Vec::new();
    loop {
        let (mine, others): (Vec<Proc>, Vec<Proc>) =
            rest.into_iter().partition(|p| family.contains(&p.ppid));
        if mine.is_empty() {
            return found;
        }
        family.extend(mine.iter().map(|p| p.pid));
        found.extend(mine);
        rest = others;
    }
}

fn describe(left: &[Proc]) -> String {
    const SHOWN: usize = 10;
    let mut text: Vec<String> = left
        .iter()
        .take(SHOWN)
        .map(|p| format!("pid {} ({}, state {})", p.pid, p.comm, p.state))
        .collect();
    if left.len() > SHOWN {
        text.push(format!("and {} more", left.len() - SHOWN));
    }
    text.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn stat_lines_are_parsed_even_with_odd_command_names() {
        let p = parse_stat(42, b"42 (a) b (c)) S 7 40 41 0 -1 4194560 1 0").unwrap();
        assert_eq!(
            p,
            Proc {
                pid: 42,
                ppid: 7,
                sid: 41,
                state: 'S',
                comm: "a) b (c)".into()
            }
        );
        assert_eq!(parse_stat(1, b"garbage"), None);
    }

    #[test]
    fn processes_started_from_outside_as_our_user_and_their_family_are_spared() {
        let p = |pid, ppid, sid| Proc {
            pid,
            ppid,
            sid,
            state: 'S',
            comm: String::new(),
        };
        let pids = |v: &[Proc]| {
            let mut v: Vec<i32> = v.iter().map(|p| p.pid).collect();
            v.sort_unstable();
            v
        };
        // 5 came in by `docker exec` (ppid 0, its own session) and forked 6, which forked
        // 9; 10 is an orphan of 5's session that the kernel gave to us (ppid 1), with a
        // child 11; 7 was left by the task (ppid 1, the task's session 3), with a child 8.
        let all = || {
            vec![
                p(5, 0, 5),
                p(6, 5, 5),
                p(7, 1, 3),
                p(8, 7, 3),
                p(9, 6, 5),
                p(10, 1, 5),
                p(11, 10, 11),
            ]
        };
        let (outside, inside) = started_outside(all(), &|_| true);
        assert_eq!(pids(&outside), [5, 6, 9, 10, 11]);
        assert_eq!(pids(&inside), [7, 8]);
        // Started from outside as another user (root, when the shim is not): not spared,
        // so the shim's failure to end it retires the container.
        let (outside, inside) = started_outside(all(), &|pid| pid != 5);
        assert!(outside.is_empty());
        assert_eq!(pids(&inside), [5, 6, 7, 8, 9, 10, 11]);
        // Nothing from outside: every process is the task's.
        let (outside, inside) = started_outside(vec![p(7, 1, 3), p(8, 7, 3)], &|_| true);
        assert!(outside.is_empty());
        assert_eq!(pids(&inside), [7, 8]);
    }

    #[test]
    fn descendants_are_found_at_any_depth_and_nothing_else() {
        let p = |pid, ppid| Proc {
            pid,
            ppid,
            sid: pid,
            state: 'S',
            comm: String::new(),
        };
        let found = descendants(10, vec![p(13, 12), p(11, 10), p(99, 1), p(12, 11)]);
        let mut pids: Vec<i32> = found.iter().map(|p| p.pid).collect();
        pids.sort_unstable();
        assert_eq!(pids, [11, 12, 13]);
    }

    /// A loop that left its session (setsid) is found below its ancestor and ended.
    #[test]
    fn a_setsid_loop_below_a_process_is_ended() {
        let mut sh = Command::new("sh")
            .args([
                "-c",
                "setsid sh -c 'while :; do sleep 0.05; done' </dev/null >/dev/null 2>&1 & wait",
            ])
            .spawn()
            .unwrap();
        let root = i32::try_from(sh.id()).unwrap();
        let start = Instant::now();
        while processes(Scope::Below(root)).unwrap().0.is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the loop never started"
            );
            thread::sleep(Duration::from_millis(10));
        }
        let wakes = std::sync::atomic::AtomicUsize::new(0);
        let wake = || {
            wakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        end_all(Scope::Below(root), Instant::now() + DEADLINE, &wake).unwrap();
        assert_eq!(processes(Scope::Below(root)).unwrap().0, []);
        assert!(
            wakes.into_inner() > 0,
            "the reaper is woken to take the dead out of /proc"
        );
        sh.wait().unwrap();
    }

    #[test]
    fn what_cannot_be_ended_is_reported_at_the_deadline() {
        // The `true` subshell becomes a zombie of a `sleep` that never reaps it: nothing the sweep can end.
        let mut parent = Command::new("sh")
            .args(["-c", "true & exec sleep 5"])
            .spawn()
            .unwrap();
        let root = i32::try_from(parent.id()).unwrap();
        let start = Instant::now();
        let zombie = loop {
            let below = processes(Scope::Below(root)).unwrap().0;
            if let Some(p) = below.into_iter().find(|p| p.state == 'Z') {
                break p;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no zombie appeared"
            );
            thread::sleep(Duration::from_millis(10));
        };
        let err = end_all(
            Scope::Below(root),
            Instant::now() + Duration::from_millis(100),
            &|| {},
        );
        parent.kill().unwrap();
        parent.wait().unwrap();
        let err = err.unwrap_err();
        let expected = format!("pid {} ({}, state Z)", zombie.pid, zombie.comm);
        assert!(err.contains(&expected), "{err}");
    }
}
