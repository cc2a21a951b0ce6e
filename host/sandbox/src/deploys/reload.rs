//! Reloading the config without a restart: changed limits and grants apply to runs that
//! start from then on. Every version held is linked again under the new settings first, and
//! the reload is refused as a whole, changing nothing, when one would not link.

use std::path::Path;
use std::sync::PoisonError;

use opshost_api::DeployTarget;

use super::Deployments;
use super::build::Settings;
use crate::error::SandboxError;
use crate::grants::Grants;
use crate::limits::Limits;

impl Deployments {
    /// Applies `settings` to new runs: see [`crate::WasmHost::reload`].
    pub(crate) fn reload(&self, settings: Settings) -> Result<Vec<String>, SandboxError> {
        let _changing = self
            .deployer
            .changing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.deployer.settings().clone();
        let mut changes = Vec::new();
        let mut problems = Vec::new();
        let mut relinked = Vec::new();
        let tables = [
            (
                &old.handlers,
                &settings.handlers,
                DeployTarget::Operation as fn(String) -> _,
            ),
            (
                &old.workers,
                &settings.workers,
                DeployTarget::Queue as fn(String) -> _,
            ),
        ];
        for (before, after, target_of) in tables {
            for (name, (limits, grants)) in after {
                let target = target_of(name.clone());
                let Some((old_limits, old_grants)) = before.get(name) else {
                    changes.push(format!("{target}: new in the config; a restart serves it"));
                    continue;
                };
                let changed = config_changes(old_limits, limits, old_grants, grants);
                if changed.is_empty() {
                    continue;
                }
                if limits.memory_bytes > self.deployer.max_memory_bytes {
                    problems.push(format!(
                        "{target}: limits.memory_mb above the {} MiB the engine was built for \
                         takes a restart",
                        self.deployer.max_memory_bytes >> 20
                    ));
                }
                let held = self.versions(&target).map(|v| v.components());
                for (sha256, component) in held.unwrap_or_default() {
                    let label = Path::new(&sha256);
                    match self.deployer.link_with(
                        &target,
                        label,
                        &component,
                        *limits,
                        grants.clone(),
                    ) {
                        Ok(built) => relinked.push((target.clone(), sha256, built)),
                        Err(error) => problems.push(format!("{target}: {error}")),
                    }
                }
                changes.extend(
                    changed
                        .into_iter()
                        .map(|change| format!("{target}: {change}")),
                );
            }
            for name in before.keys().filter(|name| !after.contains_key(*name)) {
                let target = target_of(name.clone());
                changes.push(format!(
                    "{target}: gone from the config; a restart stops serving it"
                ));
            }
        }
        if !problems.is_empty() {
            return Err(SandboxError::ReloadRefused { problems });
        }
        {
            let mut current = self
                .deployer
                .settings
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for (name, entry) in settings.handlers {
                if let Some(kept) = current.handlers.get_mut(&name) {
                    *kept = entry;
                }
            }
            for (name, entry) in settings.workers {
                if let Some(kept) = current.workers.get_mut(&name) {
                    *kept = entry;
                }
            }
        }
        for (target, sha256, built) in relinked {
            if let Some(versions) = self.versions(&target) {
                versions.replace(&sha256, built);
            }
        }
        for change in &changes {
            tracing::info!(change = %change, "config reloaded");
        }
        Ok(changes)
    }
}

/// What differs between two limits and grants of one target, one line each. Environment
/// values are not shown, only the names whose values changed.
fn config_changes(
    old_limits: &Limits,
    limits: &Limits,
    old_grants: &Grants,
    grants: &Grants,
) -> Vec<String> {
    let mut changes = Vec::new();
    let mut compare = |name: &str, before: String, after: String| {
        if before != after {
            changes.push(format!("{name} {before} -> {after}"));
        }
    };
    macro_rules! fields {
        ($prefix:literal, $old:expr, $new:expr, [$($field:ident),*]) => {
            $(compare(
                concat!($prefix, stringify!($field)),
                format!("{:?}", $old.$field),
                format!("{:?}", $new.$field),
            );)*
        };
    }
    fields!(
        "limits.",
        old_limits,
        limits,
        [
            memory_bytes,
            cpu,
            deadline,
            progress_per_second,
            max_payload_bytes,
            max_history_bytes,
            max_events,
            log_lines_per_second,
            log_bytes_per_second
        ]
    );
    fields!(
        "limits.http.",
        old_limits.http,
        limits.http,
        [
            connect_timeout,
            first_byte_timeout,
            between_bytes_timeout,
            max_response_bytes,
            max_request_bytes,
            max_in_flight,
            max_requests
        ]
    );
    let names = old_grants.env.keys().chain(grants.env.keys());
    let mut env: Vec<&String> = names
        .filter(|name| old_grants.env.get(*name) != grants.env.get(*name))
        .collect();
    env.sort();
    env.dedup();
    if !env.is_empty() {
        let env: Vec<&str> = env.into_iter().map(String::as_str).collect();
        changes.push(format!("grants.env changed: {}", env.join(", ")));
    }
    if format!("{:?}", old_grants.dirs) != format!("{:?}", grants.dirs) {
        changes.push(format!(
            "grants.dirs {:?} -> {:?}",
            old_grants.dirs, grants.dirs
        ));
    }
    if format!("{:?}", old_grants.http) != format!("{:?}", grants.http) {
        let allow = |grants: &Grants| grants.http.as_ref().map(|http| http.allow.clone());
        changes.push(format!(
            "grants.http changed: allow {:?} -> {:?}",
            allow(old_grants),
            allow(grants)
        ));
    }
    changes
}
