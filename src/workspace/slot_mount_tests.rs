//! Mount mode against the real kernel: a child process in a mount namespace of its own
//! stands in for a container (what it sees at the slot is what a container would see at
//! `/workspace`). Mounting needs root; as another user these tests say so and pass, and the
//! engine tests (tests/workspaces.rs) cover the daemon as root with a real container.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::*;
use crate::workspace::{slot_dir, Brought, Store};

fn root_or_skip() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("skipped: mounting needs root");
    }
    root
}

/// A workspace root in mount mode, released (every mount under it taken off) on drop, so a
/// failing test leaves no mount on the host.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().unwrap();
        assert!(enable(dir.path()), "root may mount: mount mode is on");
        Root { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    /// Its store, and the slot `c1` of a container made under it.
    fn store_and_slot(&self) -> (Store, PathBuf) {
        crate::workspace::prepare_slot(self.path(), "c1", "root").unwrap();
        (Store::new(self.path()), slot_dir(self.path(), "c1"))
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        release(self.dir.path());
    }
}

/// A process in a mount namespace of its own, made from ours with `propagation` (`slave`:
/// like a container's `rslave` bind; `private`: a container the mount cannot reach).
struct Contained(Child);

impl Contained {
    fn new(propagation: &str) -> Contained {
        let child = Command::new("unshare")
            .args(["-m", "--propagation", propagation, "sleep", "60"])
            .spawn()
            .expect("unshare(1) runs");
        let mine = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let ns = format!("/proc/{}/ns/mnt", child.id());
        while std::fs::read_link(&ns).ok().as_ref() == Some(&mine) {
            assert!(
                Instant::now() < deadline,
                "the child never entered its namespace"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Contained(child)
    }
    /// How the host sees `path` in the child's namespace.
    fn sees(&self, path: &Path) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{}", self.0.id(), path.display()))
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn mountinfo_is_read_bytewise_with_its_escapes_and_shared_flag() {
    let text = b"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
        90 27 254:0 /ws /srv/work\\040space rw shared:7 master:2 - ext4 /dev/vda rw\n\
        91 27 0:5 / /odd\\134name\\011x rw - tmpfs tmpfs rw\n";
    let m = parse_mountinfo(text);
    assert_eq!(m.len(), 3);
    assert_eq!((m[0].point.as_path(), m[0].shared), (Path::new("/"), false));
    assert_eq!(
        (m[1].point.as_path(), m[1].shared),
        (Path::new("/srv/work space"), true)
    );
    assert_eq!(m[2].point, PathBuf::from("/odd\\name\tx"));
    assert!(!m[2].shared, "a flag after '-' is not an optional field");
}

#[test]
fn a_bound_workspace_reaches_a_slave_namespace_at_once_and_leaves_it_on_detach() {
    if !root_or_skip() {
        return;
    }
    let root = Root::new();
    let (store, slot) = root.store_and_slot();
    let child = Contained::new("slave");
    // The workspace's files, written while it was idle.
    let data = root.path().join("store/s1");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..5_000 {
        std::fs::write(data.join(format!("f{i}")), "x").unwrap();
    }
    let started = Instant::now();
    let brought = store
        .attach("s1", "p", "c1", Some(&child.sees(&slot)), None)
        .unwrap();
    let took = started.elapsed();
    assert_eq!(brought, Brought::Mount);
    assert_eq!(
        std::fs::read_to_string(child.sees(&slot).join("f4999")).unwrap(),
        "x",
        "the contained process sees the workspace at its slot"
    );
    assert!(data.join("f0").exists(), "the files stay in the store");
    assert_eq!(store.files("s1"), data);
    eprintln!("5,000 top-level files attached in {took:?}");
    std::fs::write(child.sees(&slot).join("new"), "from the container").unwrap();
    store.detach("s1").unwrap();
    assert!(!slot.exists(), "the slot goes with its container");
    assert_eq!(
        std::fs::read_to_string(data.join("new")).unwrap(),
        "from the container"
    );
    assert!(
        !child.sees(&slot).join("f0").exists(),
        "the unmount reached the contained process"
    );
    let rec = store.record("s1").unwrap();
    assert_eq!((rec.slot, rec.mounted), (None, false));
    assert!(
        std::fs::read_dir(&data).unwrap().flatten().all(|e| !e
            .file_name()
            .to_string_lossy()
            .starts_with(".warmpool-unmounted")),
        "nothing was set aside"
    );
}

#[test]
fn a_bind_the_container_does_not_see_falls_back_to_renames() {
    if !root_or_skip() {
        return;
    }
    let root = Root::new();
    let (store, slot) = root.store_and_slot();
    let child = Contained::new("private");
    let data = root.path().join("store/s1");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f.txt"), "keep").unwrap();
    let brought = store
        .attach("s1", "p", "c1", Some(&child.sees(&slot)), None)
        .unwrap();
    assert_eq!(brought, Brought::Rename);
    assert!(
        !is_mount_point(&slot).unwrap(),
        "the useless mount is taken off"
    );
    assert_eq!(
        std::fs::read_to_string(child.sees(&slot).join("f.txt")).unwrap(),
        "keep",
        "the contained process sees the renamed files"
    );
    assert!(!store.record("s1").unwrap().mounted);
    store.detach("s1").unwrap();
    assert_eq!(std::fs::read_to_string(data.join("f.txt")).unwrap(), "keep");
}

#[test]
fn a_stale_mount_on_a_claimed_slot_is_taken_off_not_wiped_through() {
    if !root_or_skip() {
        return;
    }
    let root = Root::new();
    let (store, slot) = root.store_and_slot();
    // Another workspace bound there by a run that died before its record said so.
    let other = root.path().join("store/other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("precious"), "x").unwrap();
    bind(&other, &slot).unwrap();
    let child = Contained::new("slave");
    store
        .attach("s1", "p", "c1", Some(&child.sees(&slot)), None)
        .unwrap();
    assert!(
        other.join("precious").exists(),
        "the claim's wipe did not reach through the stale mount"
    );
    // Removing a mounted slot leaves the workspace bound there whole.
    crate::workspace::remove_slot(root.path(), "c1");
    assert!(!slot.exists());
    assert!(root.path().join("store/s1").is_dir());
}

#[test]
fn files_written_under_a_missing_mount_are_set_aside_not_lost() {
    if !root_or_skip() {
        return;
    }
    let root = Root::new();
    let (store, slot) = root.store_and_slot();
    let child = Contained::new("slave");
    store
        .attach("s1", "p", "c1", Some(&child.sees(&slot)), None)
        .unwrap();
    std::fs::write(root.path().join("store/s1/f.txt"), "in the store").unwrap();
    // Someone unmounted the slot by hand; a task then wrote into the bare slot.
    unmount(&slot).unwrap();
    std::fs::write(slot.join("f.txt"), "written meanwhile").unwrap();
    store.detach("s1").unwrap();
    let data = root.path().join("store/s1");
    assert_eq!(
        std::fs::read_to_string(data.join("f.txt")).unwrap(),
        "in the store",
        "nothing in the store was replaced"
    );
    let aside: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".warmpool-unmounted-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        std::fs::read_to_string(aside[0].path().join("f.txt")).unwrap(),
        "written meanwhile"
    );
}

#[test]
fn release_leaves_a_plain_directory_and_never_an_operators_mount() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    assert!(enable(dir.path()));
    assert!(is_mount_point(dir.path()).unwrap());
    crate::workspace::prepare_slot(dir.path(), "c1", "root").unwrap();
    let data = dir.path().join("store/s1");
    std::fs::create_dir_all(&data).unwrap();
    bind(&data, &slot_dir(dir.path(), "c1")).unwrap();
    release(dir.path());
    assert!(!is_mount_point(dir.path()).unwrap());
    assert!(!is_mount_point(&slot_dir(dir.path(), "c1")).unwrap());
    assert!(!dir.path().join(MARKER).exists());
    assert!(
        !modes().lock().contains_key(dir.path()),
        "its mode is forgotten"
    );

    // The operator's own shared mount (no marker): shared as it is, and left at release.
    let op = tempfile::tempdir().unwrap();
    let canon = op.path().canonicalize().unwrap();
    rustix::mount::mount_bind(&canon, &canon).unwrap();
    rustix::mount::mount_change(&canon, rustix::mount::MountPropagationFlags::SHARED).unwrap();
    assert!(enable(op.path()));
    release(op.path());
    let kept = is_mount_point(op.path()).unwrap();
    unmount(op.path()).unwrap();
    assert!(kept, "an operator's mount is not the daemon's to take off");
}

#[test]
fn a_new_container_never_gets_a_slot_that_holds_something_or_is_mounted() {
    let dir = tempfile::tempdir().unwrap();
    crate::workspace::prepare_slot(dir.path(), "c1", "root").unwrap();
    // A left-over slot of the same name, even an empty one, is never taken over.
    let e = crate::workspace::prepare_slot(dir.path(), "c1", "root").unwrap_err();
    assert!(e.to_string().contains("cannot be made new"), "{e}");
    if !root_or_skip() {
        return;
    }
    let root = Root::new();
    crate::workspace::prepare_slot(root.path(), "c2", "root").unwrap();
    let other = root.path().join("store/other");
    std::fs::create_dir_all(&other).unwrap();
    bind(&other, &slot_dir(root.path(), "c2")).unwrap();
    assert!(crate::workspace::prepare_slot(root.path(), "c2", "root").is_err());
}

#[test]
fn the_slot_sweep_leaves_mounted_and_recent_slots_alone() {
    if !root_or_skip() {
        return;
    }
    let root = Root::new();
    let store = Store::new(root.path());
    let old = std::time::SystemTime::now() + Duration::from_secs(600);
    // Unnamed, unlisted: one bound (a crash between the bind and its record), one plain.
    for key in ["bound", "plain"] {
        crate::workspace::prepare_slot(root.path(), key, "root").unwrap();
    }
    let data = root.path().join("store/s9");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("precious"), "x").unwrap();
    bind(&data, &slot_dir(root.path(), "bound")).unwrap();
    // Listed before the slots were made: both are too recent to judge.
    store.sweep_slots(&Default::default(), std::time::SystemTime::UNIX_EPOCH);
    assert!(slot_dir(root.path(), "plain").exists());
    // Listed long after: the plain one goes, the bound one stays whole.
    store.sweep_slots(&Default::default(), old);
    assert!(!slot_dir(root.path(), "plain").exists());
    assert!(slot_dir(root.path(), "bound").join("precious").exists());
    assert!(data.join("precious").exists());
}

#[test]
fn an_unmount_refused_for_want_of_root_says_how_to_get_out() {
    let path = Path::new("/var/lib/warmpool/workspaces/default/slots/c1");
    let why = unmount_failed(path, rustix::io::Errno::PERM, false);
    assert!(
        why.starts_with("unmount /var/lib/warmpool/workspaces/default/slots/c1: "),
        "{why}"
    );
    assert!(why.contains("this daemon is not root"), "{why}");
    assert!(
        why.contains("`umount -R /var/lib/warmpool/workspaces/default`"),
        "the instance's own root, not a placeholder: {why}"
    );
    let as_root = unmount_failed(path, rustix::io::Errno::PERM, true);
    assert!(as_root.contains("root without CAP_SYS_ADMIN"), "{as_root}");
    // Other failures are only named: the hint would be wrong for them.
    let other = unmount_failed(path, rustix::io::Errno::BUSY, false);
    assert!(!other.contains("umount -R"), "{other}");
}
