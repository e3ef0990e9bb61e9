//! The rules for string values, one function a rule, each returning the end of the message
//! ("must ...") so the reader can put the key and the written value in front of it.
//! Rules that come from elsewhere (Docker, the kernel, our own naming) say so in the text,
//! because the operator reading the message needs the reason as much as we do.

use std::net::SocketAddr;

pub(super) fn check_pool_name(name: &str) -> Result<(), String> {
    let why = "it ends up in container names, network names and metric labels";
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !first_ok || !rest_ok {
        return Err(format!(
            "must match [a-z0-9][a-z0-9_-]* (lower-case letters, digits, '_' and '-', not \
             starting with '_' or '-'): {why}"
        ));
    }
    if name.len() > 32 {
        return Err(format!(
            "is {} characters long, more than 32: {why}",
            name.len()
        ));
    }
    Ok(())
}

pub(super) fn check_image(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        Err("must not be empty: set an image such as \"warmpool/agent:latest\"".to_string())
    } else if s.chars().any(char::is_whitespace) {
        Err("must not contain whitespace: an image reference has none".to_string())
    } else {
        Ok(())
    }
}

pub(super) fn check_workdir(s: &str) -> Result<(), String> {
    check_absolute(s)?;
    if s.trim_end_matches('/').is_empty() {
        return Err(
            "must not be \"/\": the workdir gets a tmpfs of its own and is wiped between tasks"
                .to_string(),
        );
    }
    if s.split('/').any(|c| c == "..") {
        return Err("must not contain \"..\"".to_string());
    }
    Ok(())
}

pub(super) fn check_absolute(s: &str) -> Result<(), String> {
    check_path(s)?;
    if s.starts_with('/') {
        Ok(())
    } else {
        Err("must be an absolute path (starting with '/')".to_string())
    }
}

pub(super) fn check_path(s: &str) -> Result<(), String> {
    if s.is_empty() {
        Err("must not be empty: leave the key out instead".to_string())
    } else if s.contains('\0') {
        Err("must not contain NUL".to_string())
    } else {
        Ok(())
    }
}

pub(super) fn check_listen(s: &str) -> Result<(), String> {
    if s.is_empty() || s.parse::<SocketAddr>().is_ok() {
        Ok(())
    } else {
        Err(
            "must be an IP address and port such as \"127.0.0.1:7070\" or \"[::1]:7070\" \
             (host names are not resolved); \"\" turns TCP off when unix_socket is set"
                .to_string(),
        )
    }
}

pub(super) fn check_docker_host(s: &str) -> Result<(), String> {
    let schemes = [
        "unix://", "tcp://", "http://", "https://", "npipe://", "ssh://",
    ];
    if schemes
        .iter()
        .any(|p| s.starts_with(p) && s.len() > p.len())
    {
        Ok(())
    } else {
        Err(
            "must be a URL such as \"unix:///var/run/docker.sock\" or \"tcp://host:2375\" \
             (schemes unix, tcp, http, https, npipe, ssh); leave it out to use DOCKER_HOST"
                .to_string(),
        )
    }
}

pub(super) fn check_network(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        Ok(())
    } else {
        Err(
            "must be \"none\", \"isolated\" (a bridge of the pool's own) or the name of an \
             existing Docker network ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"
                .to_string(),
        )
    }
}

pub(super) fn check_capability(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err("must be an upper-case capability name such as \"ALL\" or \"NET_RAW\"".to_string())
    }
}

pub(super) fn check_user(s: &str) -> Result<(), String> {
    let part_ok = |p: &str| {
        let digits = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        let mut chars = p.chars();
        let name = p.len() <= 32
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        digits || name
    };
    let ok = match s.split_once(':') {
        Some((user, group)) => part_ok(user) && part_ok(group),
        None => part_ok(s),
    };
    if ok {
        Ok(())
    } else {
        Err(
            "must be \"uid[:gid]\" such as \"1000:1000\", or a user name such as \"agent\" \
             (optionally \"name:group\")"
                .to_string(),
        )
    }
}

pub(super) fn check_runtime(s: &str) -> Result<(), String> {
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        Err(
            "must name an OCI runtime the engine knows, such as \"runsc\"; leave it out for \
             the engine's default"
                .to_string(),
        )
    } else {
        Ok(())
    }
}

/// A pool's `description`: non-blank and at most 1,000 characters, since it is read by
/// people in `GET /v1/pools` and by models in every MCP tool description.
pub(super) fn check_description(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        Err("must say what the pool is for; leave it out to have none".to_string())
    } else if s.chars().count() > 1000 {
        Err(format!(
            "is {} characters long; keep it to at most 1000 (a sentence or two)",
            s.chars().count()
        ))
    } else {
        Ok(())
    }
}
