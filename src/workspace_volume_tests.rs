//! Persistent workspaces on a remote engine (`workspace::Home::Volume`), against the
//! in-memory engine with paused tokio time: a session's workspace is an engine volume, each
//! claim a cold start with it mounted, idle ends keep it, deletes remove it, and a failed
//! start leaves nothing behind.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{Config, MountKind, PoolConfig, WorkspaceMode};
use crate::metrics::Metrics;
use crate::runtime::fake::FakeRuntime;
use crate::supervisor::{Supervisor, TaskRequest};
use crate::workspace::WORKSPACE_PATH;

const REMOTE: &str = "tcp://engine.example:2375";
const VOLUME: &str = "warmpool-test-ws-s1";

fn cfg(root: &std::path::Path) -> PoolConfig {
    let mut c = PoolConfig::new("p", "img");
    c.min = 1;
    c.warm = 1;
    c.max = 3;
    c.session_workspace = WorkspaceMode::Persistent;
    c.workspace_root = root.display().to_string();
    c.session_idle_timeout = Duration::from_secs(5);
    c
}

async fn setup_on(fake: Arc<FakeRuntime>, cfg: PoolConfig) -> Arc<Supervisor> {
    let sup = Supervisor::new(fake, Arc::new(Metrics::new()), None, "test", 100);
    sup.set_engine_host(REMOTE);
    let config = Config {
        server: Default::default(),
        docker: Default::default(),
        pools: BTreeMap::from([(cfg.name.clone(), cfg)]),
    };
    sup.start(&config).await.unwrap();
    let pool = sup.pool("p").unwrap();
    assert!(
        pool.wait_for(Duration::from_secs(60), |c| c.idle == 1)
            .await,
        "the pool never warmed"
    );
    sup
}

async fn run(sup: &Supervisor, session: &str, argv: &[&str]) -> Result<String, String> {
    let (tx, _rx) = mpsc::unbounded_channel();
    let request = TaskRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    sup.session_task("p", session, request, tx)
        .await
        .map(|r| r.container)
        .map_err(|e| e.to_string())
}

/// The session's container now, if it holds one.
fn container_of(sup: &Supervisor, session: &str) -> Option<String> {
    sup.sessions.get(session)?.info().container
}

/// Waits (paused time) until `done`, at most 2 minutes of it.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..12_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

fn mounts_volume(fake: &FakeRuntime, container: &str, volume: &str) -> bool {
    fake.spec_of(container).is_some_and(|s| {
        s.mounts.iter().any(|m| {
            m.kind == MountKind::Volume
                && m.source.as_deref() == Some(volume)
                && m.target == WORKSPACE_PATH
                && !m.read_only
        })
    })
}

fn no_workspace_bind(fake: &FakeRuntime, container: &str) -> bool {
    let spec = fake.spec_of(container).expect("a container");
    !spec.binds.iter().any(|b| b.contains(WORKSPACE_PATH))
        && !spec.labels.contains_key(crate::workspace::LABEL_SLOT)
}

#[tokio::test(start_paused = true)]
async fn a_claim_creates_a_container_with_the_session_volume_and_no_slot() {
    let root = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let sup = setup_on(fake.clone(), cfg(root.path())).await;
    // The warm container has no slot, no bind, no workspace.
    let warm = fake.live();
    assert_eq!(warm.len(), 1);
    assert!(no_workspace_bind(&fake, &warm[0]));
    assert!(fake.spec_of(&warm[0]).unwrap().mounts.is_empty());

    sup.create_session("p", Some("s1".into()), None).unwrap();
    let container = run(&sup, "s1", &["echo", "hi"]).await.unwrap();
    assert!(!warm.contains(&container), "a cold start, not the warm one");
    assert!(mounts_volume(&fake, &container, VOLUME));
    assert!(no_workspace_bind(&fake, &container));
    let name = fake.name_of(&container).unwrap();
    assert_eq!(
        crate::session::session_of_name("p", &name).as_deref(),
        Some("s1")
    );
    // The volume is labelled as the containers are; the warm container is still the pool's.
    let labels = &fake.volumes()[VOLUME];
    assert_eq!(labels["warmpool.instance"], "test");
    assert_eq!(labels["warmpool.pool"], "p");
    assert_eq!(labels["warmpool.session"], "s1");
    assert!(fake.live().contains(&warm[0]));
    // No slot on the daemon's host; the record names the volume.
    assert!(!root.path().join("test").join("slots").exists());
    let record = crate::workspace::Store::new(root.path().join("test"))
        .record("s1")
        .unwrap();
    assert_eq!(record.volume.as_deref(), Some(VOLUME));
    // The helper that gave the fresh volume to the task user is gone: the warm container
    // and the session's are all that live.
    assert_eq!(fake.live().len(), 2, "{:?}", fake.live());
    // The next task of the session runs in the same container.
    assert_eq!(
        run(&sup, "s1", &["echo", "again"]).await.unwrap(),
        container
    );
}

#[tokio::test(start_paused = true)]
async fn idle_removes_the_container_keeps_the_volume_and_a_resume_mounts_it_again() {
    let root = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let sup = setup_on(fake.clone(), cfg(root.path())).await;
    sup.create_session("p", Some("s1".into()), None).unwrap();
    let first = run(&sup, "s1", &["touch", "f"]).await.unwrap();
    let creates = fake.creates.load(Ordering::SeqCst);

    // Idle past its timeout: the container goes, the volume and the session stay.
    until("the idle session let its container go", || {
        container_of(&sup, "s1").is_none()
    })
    .await;
    until("the container removed", || !fake.live().contains(&first)).await;
    assert!(fake.volumes().contains_key(VOLUME));
    assert_eq!(
        sup.sessions.get("s1").unwrap().info().state,
        crate::session::SessionState::Idle
    );

    // Resume: a new container (a cold start, no helper: the volume is not new) with the
    // same volume.
    let second = run(&sup, "s1", &["echo", "back"]).await.unwrap();
    assert_ne!(second, first);
    assert!(mounts_volume(&fake, &second, VOLUME));
    assert_eq!(fake.creates.load(Ordering::SeqCst), creates + 1);
    assert_eq!(fake.volumes().len(), 1);

    // Another session gets its own volume.
    sup.create_session("p", Some("s2".into()), None).unwrap();
    let other = run(&sup, "s2", &["echo"]).await.unwrap();
    assert!(mounts_volume(&fake, &other, "warmpool-test-ws-s2"));
    assert!(!mounts_volume(&fake, &other, VOLUME));

    // Ending keeps the volume; a later session of the same id mounts it again.
    sup.end_session("s1").await.unwrap();
    assert!(!fake.live().contains(&second));
    assert!(fake.volumes().contains_key(VOLUME));
    sup.create_session("p", Some("s1".into()), None).unwrap();
    let third = run(&sup, "s1", &["echo"]).await.unwrap();
    assert!(mounts_volume(&fake, &third, VOLUME));
}

/// A started remote-engine pool with sessions s1 and s2 that each ran a task (each holds a
/// container and its volume).
async fn two_sessions() -> (tempfile::TempDir, Arc<FakeRuntime>, Arc<Supervisor>) {
    let root = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let sup = setup_on(fake.clone(), cfg(root.path())).await;
    for id in ["s1", "s2"] {
        sup.create_session("p", Some(id.into()), None).unwrap();
        run(&sup, id, &["echo"]).await.unwrap();
    }
    (root, fake, sup)
}

#[tokio::test(start_paused = true)]
async fn deletes_remove_the_volume() {
    let (_root, fake, sup) = two_sessions().await;
    fake.set_volume_size(VOLUME, 4096);
    let listed = sup.sessions.workspaces().await;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].volume.as_deref(), Some(VOLUME));
    assert_eq!(listed[0].bytes, 4096, "the engine's df size");

    // `DELETE /v1/sessions/s1?workspace=delete`: container, then volume, then record.
    let held = container_of(&sup, "s1").unwrap();
    sup.sessions.end_with("s1", true).await.unwrap();
    assert!(!fake.live().contains(&held));
    assert!(!fake.volumes().contains_key(VOLUME));

    // `DELETE /v1/workspaces/s2` of an idle session.
    until("s2 idle", || container_of(&sup, "s2").is_none()).await;
    assert!(sup.sessions.delete_workspace("s2").await.unwrap());
    assert!(fake.volumes().is_empty());
    assert!(sup.sessions.workspaces().await.is_empty());
    assert!(!sup.sessions.delete_workspace("s2").await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn workspace_ttl_removes_the_volume() {
    let root = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let mut c = cfg(root.path());
    c.workspace_ttl = Duration::from_secs(1);
    let sup = setup_on(fake.clone(), c).await;
    sup.create_session("p", Some("s1".into()), None).unwrap();
    run(&sup, "s1", &["echo"]).await.unwrap();
    assert!(fake.volumes().contains_key(VOLUME));
    // The record's last use is wall-clock seconds, which paused time does not move.
    std::thread::sleep(Duration::from_millis(2100));
    until("the volume removed", || fake.volumes().is_empty()).await;
    assert!(sup.sessions.get("s1").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_failed_cold_start_leaves_nothing_behind() {
    let root = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let sup = setup_on(fake.clone(), cfg(root.path())).await;
    let warm = fake.live();
    sup.create_session("p", Some("s1".into()), None).unwrap();

    // The engine refuses every create from here: the volume owner helper's first.
    let attempts = fake.create_attempts.load(Ordering::SeqCst);
    *fake.refuse_creates.lock() = Some("no such image".into());
    let e = run(&sup, "s1", &["echo"]).await.unwrap_err();
    assert!(e.contains("session s1") && e.contains(VOLUME), "{e}");
    assert!(e.contains("nothing was left behind"), "{e}");
    assert!(fake.create_attempts.load(Ordering::SeqCst) > attempts);
    assert_eq!(fake.live(), warm, "no container left");
    assert!(fake.volumes().is_empty(), "the new volume went with it");
    assert!(sup.sessions.workspaces().await.is_empty(), "and its record");
    assert!(container_of(&sup, "s1").is_none());

    // The helper runs, the session container's create fails: the same.
    *fake.refuse_creates.lock() = None;
    sup.end_session("s1").await.unwrap();
    sup.create_session("p", Some("s1".into()), None).unwrap();
    let creates = fake.creates.load(Ordering::SeqCst);
    *fake.create_delay.lock() = Duration::from_secs(1);
    let claim = {
        let sup = sup.clone();
        tokio::spawn(async move { run(&sup, "s1", &["echo"]).await })
    };
    until("the helper created", || {
        fake.creates.load(Ordering::SeqCst) > creates
    })
    .await;
    fake.fail_creates.store(1, Ordering::SeqCst);
    let e = claim.await.unwrap().unwrap_err();
    assert!(e.contains("scripted create failure"), "{e}");
    assert_eq!(fake.live(), warm, "no container left");
    assert!(fake.volumes().is_empty(), "the new volume went with it");
    *fake.create_delay.lock() = Duration::ZERO;

    // A failed start of a resume keeps the volume (it holds the session's files).
    *fake.refuse_creates.lock() = None;
    let first = run(&sup, "s1", &["echo"]).await.unwrap();
    sup.end_session("s1").await.unwrap();
    assert!(!fake.live().contains(&first));
    sup.create_session("p", Some("s1".into()), None).unwrap();
    fake.fail_creates.store(1, Ordering::SeqCst);
    run(&sup, "s1", &["echo"]).await.unwrap_err();
    assert_eq!(fake.live(), warm, "no container left");
    assert!(fake.volumes().contains_key(VOLUME));
    // And the next task gets its container.
    let again = run(&sup, "s1", &["echo"]).await.unwrap();
    assert!(mounts_volume(&fake, &again, VOLUME));
}

#[tokio::test(start_paused = true)]
async fn workspace_max_size_is_checked_by_the_engines_size_after_each_task() {
    let root = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let mut c = cfg(root.path());
    c.workspace_max_size = Some(100);
    let sup = setup_on(fake.clone(), c).await;
    sup.create_session("p", Some("s1".into()), None).unwrap();
    run(&sup, "s1", &["echo"]).await.unwrap();
    // A task took it over the bound: it ran (no watch while it runs), the next is refused.
    fake.set_volume_size(VOLUME, 200);
    run(&sup, "s1", &["echo"]).await.unwrap();
    let e = run(&sup, "s1", &["echo"]).await.unwrap_err();
    assert!(
        e.contains("holds 200 bytes") && e.contains("workspace_max_size (100 bytes)"),
        "{e}"
    );
    assert!(e.contains("DELETE /v1/workspaces/s1"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_restarted_daemon_resumes_a_session_with_its_volume() {
    let root = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let sup = setup_on(fake.clone(), cfg(root.path())).await;
    sup.create_session("p", Some("s1".into()), None).unwrap();
    run(&sup, "s1", &["echo"]).await.unwrap();
    until("s1 idle", || container_of(&sup, "s1").is_none()).await;
    sup.shutdown(Duration::from_secs(5)).await;
    assert!(fake.volumes().contains_key(VOLUME), "shutdown keeps it");

    let sup = setup_on(fake.clone(), cfg(root.path())).await;
    assert_eq!(
        sup.sessions.get("s1").unwrap().info().state,
        crate::session::SessionState::Idle
    );
    let container = run(&sup, "s1", &["echo"]).await.unwrap();
    assert!(mounts_volume(&fake, &container, VOLUME));
}

#[tokio::test(start_paused = true)]
async fn a_labelled_volume_without_a_record_is_restored_at_start() {
    let root = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let sup = setup_on(fake.clone(), cfg(root.path())).await;
    sup.create_session("p", Some("s1".into()), None).unwrap();
    run(&sup, "s1", &["echo"]).await.unwrap();
    sup.shutdown(Duration::from_secs(5)).await;
    // The records are lost (another host, a wiped workspace_root); the volume is not.
    std::fs::remove_dir_all(root.path().join("test")).unwrap();
    // A volume of another instance is not this daemon's.
    let theirs = crate::workspace::volume_labels("other", "p", "s9");
    crate::runtime::Runtime::ensure_volume(&*fake, "warmpool-other-ws-s9", &theirs)
        .await
        .unwrap();

    let sup = setup_on(fake.clone(), cfg(root.path())).await;
    let listed = sup.sessions.workspaces().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].volume.as_deref(), Some(VOLUME));
    assert_eq!(
        sup.sessions.get("s1").unwrap().info().state,
        crate::session::SessionState::Idle
    );
    assert!(sup.sessions.get("s9").is_none());
    let container = run(&sup, "s1", &["echo"]).await.unwrap();
    assert!(mounts_volume(&fake, &container, VOLUME));
}

/// The volume's `chown` helper runs on each claim until one succeeded: a daemon that died
/// between creating the volume and giving it to the task user (the volume exists, its record
/// says it was not given) gives it on the next claim, and only once.
#[tokio::test(start_paused = true)]
async fn a_volume_never_given_to_the_task_user_is_given_on_its_next_claim() {
    let root = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let sup = setup_on(fake.clone(), cfg(root.path())).await;
    // What the crash left: the record (written first) and the volume, no chown.
    let store = crate::workspace::Store::new(root.path().join("test"));
    store.record_volume("s1", "p", VOLUME).unwrap();
    let labels = crate::workspace::volume_labels("test", "p", "s1");
    crate::runtime::Runtime::ensure_volume(&*fake, VOLUME, &labels)
        .await
        .unwrap();
    assert!(!store.record("s1").unwrap().volume_owned);

    let creates = fake.creates.load(Ordering::SeqCst);
    sup.create_session("p", Some("s1".into()), None).unwrap();
    run(&sup, "s1", &["echo"]).await.unwrap();
    assert_eq!(
        fake.creates.load(Ordering::SeqCst),
        creates + 2,
        "the helper, then the session's container"
    );
    assert!(store.record("s1").unwrap().volume_owned);

    // Resumed after an idle end: no helper any more.
    until("the idle session let its container go", || {
        container_of(&sup, "s1").is_none()
    })
    .await;
    let creates = fake.creates.load(Ordering::SeqCst);
    run(&sup, "s1", &["echo"]).await.unwrap();
    assert_eq!(fake.creates.load(Ordering::SeqCst), creates + 1);
    assert!(
        store.record("s1").unwrap().volume_owned,
        "kept by the claim's record"
    );
}

/// A volume the engine will not remove is not reported removed: the delete is an error that
/// says the workspace stays listed, its record stays, and a later delete removes it.
#[tokio::test(start_paused = true)]
async fn a_volume_the_engine_keeps_is_not_answered_deleted() {
    let (root, fake, sup) = two_sessions().await;
    sup.end_session("s1").await.unwrap();
    let store = crate::workspace::Store::new(root.path().join("test"));

    // A workspace without a session.
    fake.down.store(true, Ordering::SeqCst);
    let err = sup.sessions.delete_workspace("s1").await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains(VOLUME) && text.contains("stays"), "{text}");
    assert!(
        matches!(
            err,
            crate::session::SessionError::Submit(crate::task::SubmitError::Exec(
                crate::exec::ExecError::Engine(_)
            ))
        ),
        "503 engine_unavailable: {err:?}"
    );
    assert!(store.record("s1").is_some(), "still listed");

    // A live session's, by `?workspace=delete`: the session ends, the error says the
    // workspace did not go.
    let err = sup.sessions.end_with("s2", true).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("ended, but its workspace was not deleted"),
        "{err}"
    );
    assert!(sup.sessions.get("s2").is_none());
    assert!(store.record("s2").is_some());

    // The engine back: the next deletes remove them.
    fake.down.store(false, Ordering::SeqCst);
    until("the session's container removed by the reaper", || {
        fake.live().len() == 1
    })
    .await;
    assert!(sup.sessions.delete_workspace("s1").await.unwrap());
    assert!(sup.sessions.delete_workspace("s2").await.unwrap());
    assert!(fake.volumes().is_empty(), "{:?}", fake.volumes());
    assert!(store.record("s1").is_none() && store.record("s2").is_none());
}

/// A failed pool (the engine refuses its containers) answers a remote session's claim as it
/// answers a pool task, `pool_failed` with the engine's words, and creates nothing for it.
#[tokio::test(start_paused = true)]
async fn a_failed_pool_refuses_a_remote_sessions_claim_without_a_create() {
    let root = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let sup = setup_on(fake.clone(), cfg(root.path())).await;
    let pool = sup.pool("p").unwrap();
    // The image is gone from the engine; the warm container dies, its replacement is refused.
    fake.missing_images.lock().insert("img".to_string());
    fake.kill(&fake.live()[0]);
    until("the pool failed", || pool.failure().is_some()).await;

    let attempts = fake.create_attempts.load(Ordering::SeqCst);
    sup.create_session("p", Some("s1".into()), None).unwrap();
    let err = run(&sup, "s1", &["echo"]).await.unwrap_err();
    assert!(
        err.contains("pool p is failed") && err.contains("img"),
        "{err}"
    );
    assert_eq!(
        fake.create_attempts.load(Ordering::SeqCst),
        attempts,
        "no create tried"
    );
    assert!(
        fake.volumes().is_empty(),
        "the volume made for the claim went with it"
    );
}
