//! Which engine answers on the Docker API, and the differences between them that
//! [`super::docker::DockerRuntime`] handles: kept as pure functions so they are unit-tested
//! without an engine.
//!
//! Podman's service (`podman system service`) speaks the Docker Engine API, with differences
//! that matter to warmpool; each is handled where the request is made, decided by the
//! engine's own version answer, never by a config switch.

use super::RuntimeError;

/// The engine behind the socket, as its `GET /version` and `GET /info` describe it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Engine {
    pub kind: EngineKind,
    /// The engine's version (`Version`), for logs and errors.
    pub version: String,
    /// Podman run by an unprivileged user (in its own user namespace).
    pub rootless: bool,
    /// Podman's cgroup version (`v1`, `v2`) from `/libpod/info`; `None` for Docker.
    pub cgroup_version: Option<String>,
    /// The cgroup controllers rootless Podman may use (those delegated to its user).
    pub cgroup_controllers: Vec<String>,
}

/// What Podman's own `/libpod/info` adds to the Docker-compatible answers, which on 4.3
/// neither say rootless nor tell that limits will be ignored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodmanHost {
    pub rootless: bool,
    pub cgroup_version: Option<String>,
    pub cgroup_controllers: Vec<String>,
}

impl PodmanHost {
    /// From the JSON of `GET /libpod/info`.
    pub fn from_libpod_info(v: &serde_json::Value) -> PodmanHost {
        let host = &v["host"];
        PodmanHost {
            rootless: host["security"]["rootless"].as_bool().unwrap_or(false),
            cgroup_version: host["cgroupVersion"].as_str().map(str::to_string),
            cgroup_controllers: host["cgroupControllers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Set to `accept` to run pools on an engine that cannot enforce their memory, cpus and
/// pids limits (rootless Podman on cgroup v1), with a warning instead of the refusal.
pub const ACCEPT_UNENFORCED_LIMITS_ENV: &str = "WARMPOOL_UNENFORCED_LIMITS";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    #[default]
    Docker,
    Podman,
}

impl Engine {
    /// From the version answer: Podman names itself in `Platform.Name` or in a component
    /// (`"Podman Engine"`); Debian's 4.3 only does the latter
    /// (`Platform.Name` is `linux/amd64/debian-12`).
    pub fn detect(
        platform: Option<&str>,
        components: &[String],
        version: Option<&str>,
        security_options: &[String],
    ) -> Engine {
        let podman = platform.is_some_and(|p| p.to_ascii_lowercase().contains("podman"))
            || components
                .iter()
                .any(|c| c.to_ascii_lowercase().contains("podman"));
        Engine {
            kind: if podman {
                EngineKind::Podman
            } else {
                EngineKind::Docker
            },
            version: version.unwrap_or("unknown").to_string(),
            // Docker (and Podman 5) list `name=rootless` in `SecurityOptions` when run
            // without root; Podman 4 says so in `/libpod/info` only (see `with_podman_host`).
            rootless: security_options
                .iter()
                .any(|o| o.split(',').any(|kv| kv == "name=rootless")),
            cgroup_version: None,
            cgroup_controllers: vec![],
        }
    }

    /// Adds what Podman's `/libpod/info` tells.
    pub fn with_podman_host(mut self, host: PodmanHost) -> Engine {
        self.rootless |= host.rootless;
        self.cgroup_version = host.cgroup_version;
        self.cgroup_controllers = host.cgroup_controllers;
        self
    }

    /// The limits of `spec` this engine would silently not enforce, by cgroup controller.
    ///
    /// Rootless Podman on cgroup v1 ignores memory, cpu and pids limits (its CLI warns
    /// "Resource limits are not supported and ignored on cgroups V1 rootless systems"; its
    /// API creates the container without them, `HostConfig.Memory` 0). On cgroup v2 it can
    /// only use the controllers delegated to its user.
    pub fn unenforced_limits(&self, spec: &super::ContainerSpec) -> Vec<&'static str> {
        if !self.is_podman() || !self.rootless {
            return vec![];
        }
        let mut wanted = vec![];
        if spec.memory_bytes.is_some() {
            wanted.push("memory");
        }
        if spec.nano_cpus.is_some() {
            wanted.push("cpu");
        }
        if spec.pids_limit > 0 {
            wanted.push("pids");
        }
        match self.cgroup_version.as_deref() {
            Some("v2") => wanted
                .into_iter()
                .filter(|c| !self.cgroup_controllers.iter().any(|d| d == c))
                .collect(),
            // v1, or not said: rootless Podman has no cgroups of its own there.
            _ => wanted,
        }
    }

    /// The refusal for limits this engine would not enforce (see [`Self::unenforced_limits`]).
    pub fn limits_refusal(&self, missing: &[&str]) -> RuntimeError {
        let cgroups = self.cgroup_version.as_deref().unwrap_or("unknown");
        RuntimeError::Refused(format!(
            "{} on cgroup {cgroups} cannot enforce the pool's {} limits: it would create the \
             container without them (\"Resource limits are not supported and ignored on cgroups \
             V1 rootless systems\"); what to do: run Podman rootful, or rootless on cgroup v2 \
             with the {} controllers delegated to its user (systemd: Delegate= in \
             user@.service), see docs/operations.md; {ACCEPT_UNENFORCED_LIMITS_ENV}=accept \
             runs the pools without these limits",
            self.describe(),
            missing.join(", "),
            missing.join(", "),
        ))
    }

    /// The refusal of a spec naming an OCI runtime (`security.runtime`) on an engine that
    /// would not use it: Podman's Docker-compatible API ignores `HostConfig.Runtime` (found
    /// with Podman 4.3: a container asked for a runtime that does not exist starts under the
    /// default one), so a pool asking for e.g. gVisor would silently run without it.
    pub fn runtime_refusal(&self, spec: &super::ContainerSpec) -> Option<RuntimeError> {
        let runtime = spec.runtime.as_deref().filter(|_| self.is_podman())?;
        Some(RuntimeError::Refused(format!(
            "{} ignores the OCI runtime a container asks for through its Docker-compatible API \
             (HostConfig.Runtime): the pool's security.runtime {runtime:?} would not be used{}\
             leave security.runtime out of the pool and make {runtime:?} Podman's runtime in \
             containers.conf ([engine] runtime = {runtime:?}), see docs/operations.md",
            self.describe(),
            super::WHAT_TO_DO,
        )))
    }

    pub fn is_podman(&self) -> bool {
        self.kind == EngineKind::Podman
    }

    /// How the engine calls itself in messages.
    pub fn describe(&self) -> String {
        let name = match self.kind {
            EngineKind::Docker => "Docker",
            EngineKind::Podman => "Podman",
        };
        let mode = if self.rootless { " (rootless)" } else { "" };
        format!("{name} {}{mode}", self.version)
    }

    /// The tmpfs options as this engine takes them.
    ///
    /// Podman (4.3 at least) refuses `uid=`/`gid=` (`unknown mount option "uid=1000"`); its
    /// own `U` option chows the tmpfs to the container's user instead, which is where warmpool
    /// takes those ids from, and maps them through the user namespace when rootless. Podman
    /// also copies the image's directory into a tmpfs unless told `notmpcopyup`; Docker
    /// mounts it empty, and so must Podman, so that a workdir starts empty on both.
    pub fn tmpfs_options(&self, options: &str) -> String {
        if !self.is_podman() {
            return options.to_string();
        }
        let mut owned = false;
        let mut out: Vec<&str> = Vec::new();
        for opt in options.split(',').filter(|o| !o.is_empty()) {
            if opt.starts_with("uid=") || opt.starts_with("gid=") {
                owned = true;
            } else if opt != "U" && opt != "notmpcopyup" && opt != "tmpcopyup" {
                out.push(opt);
            }
        }
        if owned {
            out.push("U");
        }
        out.push("notmpcopyup");
        out.join(",")
    }

    /// Mounts the engine adds on its own that warmpool must mask, as more tmpfs entries.
    ///
    /// Podman gives a read-only container writable tmpfs on /run, /tmp and /var/tmp
    /// (`--read-only-tmpfs`, on by default and not settable through the Docker API). Docker
    /// leaves them read-only, and warmpool promises that only /tmp and the workdir are
    /// writable: so /run and /var/tmp get a read-only tmpfs of warmpool's own (Podman adds
    /// none where the request already mounts something), holding a copy of the image's files.
    pub fn read_only_masks(&self, read_only_rootfs: bool, taken: &[&str]) -> Vec<(String, String)> {
        if !self.is_podman() || !read_only_rootfs {
            return vec![];
        }
        ["/run", "/var/tmp"]
            .iter()
            .filter(|p| !taken.contains(p))
            .map(|p| {
                (
                    p.to_string(),
                    "ro,nosuid,nodev,noexec,tmpcopyup".to_string(),
                )
            })
            .collect()
    }

    /// Driver options of a pool's bridge network, keeping containers apart.
    ///
    /// Docker: `enable_icc=false`, so the pool's own containers cannot reach each other either
    /// (bridges never route to each other). Podman's netavark has no such switch and ignores
    /// Docker's; `isolate=true` keeps its bridges from reaching each other, while containers
    /// of the same pool can reach each other (docs/operations.md says so).
    pub fn network_options(&self) -> Vec<(String, String)> {
        match self.kind {
            EngineKind::Docker => vec![(
                "com.docker.network.bridge.enable_icc".to_string(),
                "false".to_string(),
            )],
            EngineKind::Podman => vec![("isolate".to_string(), "true".to_string())],
        }
    }
}

/// The volumes' sizes in an engine's disk usage answer (`GET /system/df`), by name. API
/// before 1.52 lists them under `Volumes`, 1.52 on under `VolumeUsage.Items`; each has
/// `UsageData.Size`, -1 when the engine does not know it (a driver other than `local`),
/// which leaves the volume out.
pub fn volume_sizes(df: &serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    let items = df["Volumes"]
        .as_array()
        .or_else(|| df["VolumeUsage"]["Items"].as_array());
    items
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let name = v["Name"].as_str()?;
            let size = v["UsageData"]["Size"].as_i64().filter(|s| *s >= 0)?;
            Some((name.to_string(), size as u64))
        })
        .collect()
}

/// What the engine's error text says the operator must do, when it says so clearly. `None`
/// is not "retry": the status code decides that (see [`classify`]).
fn remedy(message: &str) -> Option<&'static str> {
    let m = message.to_ascii_lowercase();
    let known: &[(&[&str], &'static str)] = &[
        (
            &["unknown mount option", "invalid mount option"],
            "the engine does not take one of the pool's tmpfs options; \
             warmpool translates them for Docker and Podman 4+, so check the engine's version",
        ),
        (
            // Docker, for a `mounts` bind whose source is missing. pools.toml checks it on a
            // local engine; a remote engine's host only the engine sees.
            &["bind source path does not exist"],
            "a bind mount's source must exist on the engine's host (with a remote engine, that \
             host, not the daemon's): create it there or fix the pool's mounts, then reload",
        ),
        (
            &["error setting rlimit"],
            "the engine cannot raise the containers' ulimits to its defaults (it lacks \
             CAP_SYS_RESOURCE, e.g. when it runs in a container): set `default_ulimits` in \
             containers.conf to at most the service's own hard limits (`ulimit -Hn`, \
             `ulimit -Hu`) and restart the service; see docs/operations.md",
        ),
        (
            &["/.warmpool/shim: permission denied"],
            "the container's user cannot read the shim the daemon bind-mounts: every directory \
             of WARMPOOL_SHIM_DIR must be searchable by others (o+x) and the file readable; \
             with rootless Podman the container's users are subordinate ids of the daemon's \
             user, so a 0700 directory (such as $XDG_RUNTIME_DIR) does not do",
        ),
        (
            &[
                "unknown or invalid runtime name",
                "unknown runtime",
                "runtime not found",
            ],
            "the pool's security.runtime is not installed on the engine: install it or \
             remove the key",
        ),
        (
            &[
                "memory.limit_in_bytes",
                "cgroup v1",
                "cgroups v1",
                "cgroupv1",
            ],
            "the engine cannot apply memory/cpus/pids limits here (rootless Podman needs \
             cgroup v2 with the controllers delegated to the user): run it rootful, or on \
             cgroup v2, or drop the limits; see docs/operations.md",
        ),
        (
            &["no such file or directory", "executable file not found"],
            "the container's entrypoint is not in the image (or the shim bind mount is \
             missing): check the pool's image and exec mode",
        ),
    ];
    known
        .iter()
        .find(|(needles, _)| needles.iter().any(|n| m.contains(n)))
        .map(|(_, what)| *what)
}

/// The [`RuntimeError`] for an engine's error answer: `status` is the HTTP status code.
///
/// Docker answers a request it will never accept with a 4xx (400 bad parameter, 403 ...),
/// Podman often with a 500 whose text names the cause (`invalid mount option`, `OCI
/// permission denied`): both are [`RuntimeError::Refused`], permanent. 404 is
/// [`RuntimeError::NotFound`] and 409 (name in use, removal in progress)
/// [`RuntimeError::Conflict`], which a retry with other names or later can get past.
pub fn classify(status: u16, message: String) -> RuntimeError {
    match status {
        404 => RuntimeError::NotFound(message),
        // Podman answers an attach that initialises a container the OCI runtime refuses
        // with 409 (`preparing container ... for attach: runc create failed: ...`).
        _ if is_refusal(&message) => refused(message),
        409 => RuntimeError::Conflict(message),
        s if s < 500 => refused(message),
        _ => RuntimeError::Other(message),
    }
}

/// A 500 from the OCI runtime refusing the container's configuration (as opposed to the
/// engine failing): the same request fails the same way every time.
fn is_refusal(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "unknown mount option",
        "invalid mount option",
        "error setting rlimit",
        "unknown or invalid runtime name",
        "oci permission denied",
        "oci runtime error",
        "executable file not found",
        "invalid argument",
    ]
    .iter()
    .any(|n| m.contains(n))
}

fn refused(message: String) -> RuntimeError {
    let what = remedy(&message).unwrap_or(super::FIX_AND_RELOAD);
    RuntimeError::Refused(format!("{message}{}{what}", super::WHAT_TO_DO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn podman() -> Engine {
        Engine {
            kind: EngineKind::Podman,
            version: "4.3.1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn podman_refuses_a_pool_runtime_it_would_ignore() {
        let spec = crate::runtime::ContainerSpec {
            runtime: Some("runsc".into()),
            ..Default::default()
        };
        let refusal = podman().runtime_refusal(&spec).expect("refused");
        let (words, fix) = refusal.refusal().unwrap();
        assert!(words.contains("\"runsc\" would not be used"), "{words}");
        assert!(fix.contains("leave security.runtime out"), "{fix}");
        assert!(podman()
            .runtime_refusal(&crate::runtime::ContainerSpec::default())
            .is_none());
        let docker = Engine::default();
        assert!(docker.runtime_refusal(&spec).is_none(), "Docker uses it");
    }

    #[test]
    fn rootless_podman_limits_need_cgroup_controllers() {
        let info = serde_json::json!({"host": {
            "security": {"rootless": true},
            "cgroupVersion": "v1",
            "cgroupControllers": []
        }});
        let host = PodmanHost::from_libpod_info(&info);
        assert!(host.rootless);
        let v1 = podman().with_podman_host(host);
        assert!(v1.rootless);
        let spec = super::super::ContainerSpec {
            memory_bytes: Some(1 << 26),
            pids_limit: 64,
            ..Default::default()
        };
        assert_eq!(v1.unenforced_limits(&spec), ["memory", "pids"]);
        let e = v1.limits_refusal(&v1.unenforced_limits(&spec));
        assert!(e.is_permanent());
        assert!(e.to_string().contains("cgroup v1"), "{e}");
        let v2 = podman().with_podman_host(PodmanHost {
            rootless: true,
            cgroup_version: Some("v2".into()),
            cgroup_controllers: vec!["memory".into(), "pids".into()],
        });
        assert!(v2.unenforced_limits(&spec).is_empty());
        let spec_cpu = super::super::ContainerSpec {
            nano_cpus: Some(500_000_000),
            ..spec.clone()
        };
        assert_eq!(v2.unenforced_limits(&spec_cpu), ["cpu"]);
        // Rootful Podman and Docker enforce them all.
        assert!(podman().unenforced_limits(&spec_cpu).is_empty());
        assert!(Engine::default().unenforced_limits(&spec_cpu).is_empty());
    }

    #[test]
    fn detects_podman_from_its_components_or_platform() {
        let debian = Engine::detect(
            Some("linux/amd64/debian-12"),
            &["Podman Engine".into(), "Conmon".into()],
            Some("4.3.1"),
            &["name=seccomp,profile=default".into()],
        );
        assert!(debian.is_podman());
        assert!(!debian.rootless);
        assert_eq!(debian.describe(), "Podman 4.3.1");
        let by_platform = Engine::detect(Some("Podman Engine"), &[], None, &[]);
        assert!(by_platform.is_podman());
        let docker = Engine::detect(
            Some("Docker Engine - Community"),
            &["Engine".into(), "containerd".into(), "runc".into()],
            Some("20.10.24"),
            &[
                "name=seccomp,profile=default".into(),
                "name=cgroupns".into(),
            ],
        );
        assert_eq!(docker.kind, EngineKind::Docker);
        let rootless = Engine::detect(
            None,
            &["Podman Engine".into()],
            Some("4.3.1"),
            &[
                "name=rootless".into(),
                "name=seccomp,profile=default".into(),
            ],
        );
        assert!(rootless.rootless);
        assert_eq!(rootless.describe(), "Podman 4.3.1 (rootless)");
    }

    #[test]
    fn podman_tmpfs_ownership_becomes_its_u_option() {
        let e = podman();
        assert_eq!(
            e.tmpfs_options("rw,exec,nosuid,size=1g,mode=0755,uid=1000,gid=1000"),
            "rw,exec,nosuid,size=1g,mode=0755,U,notmpcopyup"
        );
        assert_eq!(
            e.tmpfs_options("rw,size=256m,mode=1777"),
            "rw,size=256m,mode=1777,notmpcopyup"
        );
        let docker = Engine::default();
        assert_eq!(
            docker.tmpfs_options("rw,mode=0755,uid=1000,gid=1000"),
            "rw,mode=0755,uid=1000,gid=1000"
        );
    }

    #[test]
    fn podman_read_only_roots_keep_run_and_var_tmp_read_only() {
        let e = podman();
        let masks = e.read_only_masks(true, &["/tmp", "/work"]);
        let paths: Vec<&str> = masks.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["/run", "/var/tmp"]);
        assert!(masks.iter().all(|(_, o)| o.starts_with("ro,")));
        assert_eq!(e.read_only_masks(true, &["/tmp", "/run"]).len(), 1);
        assert!(e.read_only_masks(false, &[]).is_empty());
        assert!(Engine::default().read_only_masks(true, &[]).is_empty());
    }

    #[test]
    fn volume_sizes_are_read_from_either_df_format() {
        let old = serde_json::json!({"Volumes": [
            {"Name": "a", "UsageData": {"Size": 12, "RefCount": 1}},
            {"Name": "b", "UsageData": {"Size": -1, "RefCount": -1}},
            {"Name": "c"}
        ]});
        let sizes = volume_sizes(&old);
        assert_eq!(sizes.get("a"), Some(&12));
        assert_eq!(sizes.len(), 1, "unknown sizes are left out: {sizes:?}");
        let new = serde_json::json!({"VolumeUsage": {"Items": [
            {"Name": "d", "UsageData": {"Size": 0, "RefCount": 0}}
        ]}});
        assert_eq!(volume_sizes(&new).get("d"), Some(&0));
        assert!(volume_sizes(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn network_isolation_options_per_engine() {
        assert_eq!(
            Engine::default().network_options(),
            [(
                "com.docker.network.bridge.enable_icc".to_string(),
                "false".to_string()
            )]
        );
        assert_eq!(
            podman().network_options(),
            [("isolate".to_string(), "true".to_string())]
        );
    }

    #[test]
    fn engine_errors_are_classified_by_what_a_retry_can_do() {
        let e = classify(
            500,
            "container create: unknown mount option \"uid=1000\": invalid mount option".into(),
        );
        assert!(e.is_permanent(), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("unknown mount option \"uid=1000\""), "{text}");
        assert!(text.contains("what to do"), "{text}");
        let e = classify(
            500,
            "runc: runc create failed: unable to start container process: error during container \
             init: error setting rlimits for ready process: error setting rlimit type 7: operation \
             not permitted: OCI permission denied"
                .into(),
        );
        assert!(e.is_permanent());
        assert!(e.to_string().contains("default_ulimits"), "{e}");
        assert!(classify(400, "invalid reference format".into()).is_permanent());
        // A remote engine's answer to a bind source missing on its host.
        let bind = classify(
            400,
            "invalid mount config for type \"bind\": bind source path does not exist: /srv/repo"
                .into(),
        );
        let (words, fix) = bind.refusal().expect("a refusal");
        assert!(words.contains("/srv/repo"), "{words}");
        assert!(fix.contains("engine's host"), "{fix}");
        let shim = classify(
            409,
            "preparing container 68fc for attach: runc: runc create failed: unable to start \
             container process: exec: \"/.warmpool/shim\": stat /.warmpool/shim: permission \
             denied: OCI permission denied"
                .into(),
        );
        assert!(shim.is_permanent(), "{shim:?}");
        assert!(shim.to_string().contains("WARMPOOL_SHIM_DIR"), "{shim}");
        assert!(matches!(
            classify(404, "no such image".into()),
            RuntimeError::NotFound(_)
        ));
        let conflict = classify(409, "name is already in use".into());
        assert!(matches!(conflict, RuntimeError::Conflict(_)));
        assert!(!conflict.is_permanent());
        let busy = classify(500, "error creating overlay mount: device busy".into());
        assert!(!busy.is_permanent());
        assert!(!RuntimeError::Unreachable("gone".into()).is_permanent());
    }

    #[test]
    fn a_refusal_splits_into_the_engines_words_and_the_fix() {
        // Docker's answer to a create naming a runtime it does not have.
        let e = classify(
            400,
            "unknown or invalid runtime name: warmpool-no-such-runtime".into(),
        );
        let (words, fix) = e.refusal().expect("a refusal");
        assert_eq!(
            words,
            "unknown or invalid runtime name: warmpool-no-such-runtime"
        );
        assert!(fix.contains("security.runtime"), "{fix}");
        // A refusal whose text names no fix gets the general one; other errors none.
        let (words, fix) = RuntimeError::Refused("no".into()).refusal().unwrap();
        assert_eq!(
            (words.as_str(), fix.as_str()),
            ("no", super::super::FIX_AND_RELOAD)
        );
        assert!(RuntimeError::Other("x".into()).refusal().is_none());
        assert!(classify(409, "name is already in use".into())
            .refusal()
            .is_none());
    }
}
