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
}

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
            // Both engines list `name=rootless` in `SecurityOptions` when run without root.
            rootless: security_options
                .iter()
                .any(|o| o.split(',').any(|kv| kv == "name=rootless")),
        }
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
            &["error setting rlimit"],
            "the engine cannot raise the containers' ulimits to its defaults (it lacks \
             CAP_SYS_RESOURCE, e.g. when it runs in a container): set `default_ulimits` in \
             containers.conf to at most the service's own hard limits (`ulimit -Hn`, \
             `ulimit -Hu`) and restart the service; see docs/operations.md",
        ),
        (
            &["unknown or invalid runtime name", "unknown runtime", "runtime not found"],
            "the pool's security.runtime is not installed on the engine: install it or \
             remove the key",
        ),
        (
            &["memory.limit_in_bytes", "cgroup v1", "cgroups v1", "cgroupv1"],
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
        409 => RuntimeError::Conflict(message),
        s if s < 500 => refused(message),
        _ if is_refusal(&message) => refused(message),
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
    let what = remedy(&message).unwrap_or(
        "fix the pool's configuration (docs/configuration.md) or the engine, then reload",
    );
    RuntimeError::Refused(format!("{message}; what to do: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn podman() -> Engine {
        Engine {
            kind: EngineKind::Podman,
            version: "4.3.1".into(),
            rootless: false,
        }
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
            &["name=seccomp,profile=default".into(), "name=cgroupns".into()],
        );
        assert_eq!(docker.kind, EngineKind::Docker);
        let rootless = Engine::detect(
            None,
            &["Podman Engine".into()],
            Some("4.3.1"),
            &["name=rootless".into(), "name=seccomp,profile=default".into()],
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
}
