//! Versions of one operation's handler or one queue's worker: each is a component, named by
//! its sha256.
//!
//! - [`Lineage`] is what the deployment log says: the version current for new work, the
//!   versions made current before it (a rollback goes back through them), and a version being
//!   ramped to a share of new work. Every host folds the same log, so all agree.
//! - [`Versions`] is what this host holds: the compiled versions, the runs of each in flight,
//!   and the choice of a version for new work. An operation is pinned to the version chosen
//!   when it is accepted and every attempt runs it. A version that is neither current nor
//!   ramping is *draining* while runs of it are in flight here, then *drained*: its compiled
//!   form is dropped from memory at once. It is compiled again (from the store's copy of its
//!   bytes) only if a pinned operation needs it, after a restart for instance.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, Utc};
use opshost_api::{DeployAction, DeploymentRecord};
use serde::Serialize;

/// Where a version stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum VersionState {
    /// New work runs it (all of it but a ramp's share).
    Current,
    /// A share of new work runs it.
    Ramping,
    /// No new work runs it; runs of it are still in flight on this host.
    Draining,
    /// No new work runs it and none is in flight here: unloaded.
    Drained,
}

/// One version, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    /// The component's sha256.
    pub sha256: String,
    /// Where it stands.
    pub state: VersionState,
    /// For a ramping version, the share of new work it gets, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    /// Runs of it in flight on this host now.
    pub in_flight: usize,
    /// Whether its compiled form is in this host's memory.
    pub loaded: bool,
    /// When it was last deployed (or loaded from the config).
    pub deployed_at: DateTime<Utc>,
    /// Who deployed it then: `subject@tenant`, or `config`.
    pub deployed_by: String,
}

/// What the deployment log says about one target: see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Lineage {
    /// Each version made current, oldest first; the last is current.
    stack: Vec<String>,
    /// The version ramping, with its share of new work in percent.
    ramp: Option<(String, u8)>,
    /// The version the config named at the last start that recorded one.
    config: Option<String>,
    /// Every version ever deployed: when, and by whom, last.
    deployed: BTreeMap<String, (DateTime<Utc>, String)>,
}

impl Lineage {
    /// The lineage of a target whose only version is the config's `sha256`, before the log is
    /// read.
    pub fn from_config(sha256: &str) -> Self {
        Self {
            stack: vec![sha256.to_owned()],
            ramp: None,
            config: Some(sha256.to_owned()),
            deployed: BTreeMap::from([(sha256.to_owned(), (Utc::now(), "config".to_owned()))]),
        }
    }

    /// Applies one record of the log.
    pub fn apply(&mut self, record: &DeploymentRecord) {
        let sha = &record.sha256;
        match record.action {
            DeployAction::Config => {
                if self.config.as_ref() == Some(sha) {
                    return;
                }
                self.config = Some(sha.clone());
                self.make_current(sha);
            }
            DeployAction::Deploy { percent } if percent < 100 => {
                if self.current() == Some(sha.as_str()) {
                    return;
                }
                self.ramp = Some((sha.clone(), percent.max(1)));
            }
            DeployAction::Deploy { .. } => self.make_current(sha),
            DeployAction::Rollback => {
                if self
                    .ramp
                    .as_ref()
                    .is_some_and(|(ramping, _)| ramping == sha)
                {
                    self.ramp = None;
                } else if self.stack.len() > 1 && self.current() == Some(sha.as_str()) {
                    self.stack.pop();
                }
                return;
            }
        }
        self.deployed
            .insert(sha.clone(), (record.at, record.by.clone()));
    }

    fn make_current(&mut self, sha: &str) {
        self.ramp = None;
        if self.current() != Some(sha) {
            self.stack.push(sha.to_owned());
        }
    }

    /// The version the config named at the last start that recorded one.
    pub fn config_version(&self) -> Option<&str> {
        self.config.as_deref()
    }

    /// The current version.
    pub fn current(&self) -> Option<&str> {
        self.stack.last().map(String::as_str)
    }

    /// The ramping version and its share, if any.
    pub fn ramp(&self) -> Option<(&str, u8)> {
        self.ramp
            .as_ref()
            .map(|(sha, percent)| (sha.as_str(), *percent))
    }

    /// The version a rollback would roll back: the ramping one, else the current one when
    /// there is one before it.
    pub fn rollback_target(&self) -> Option<&str> {
        match &self.ramp {
            Some((sha, _)) => Some(sha),
            None if self.stack.len() > 1 => self.current(),
            None => None,
        }
    }

    /// The versions new work may run: the current one and the ramping one.
    pub fn live(&self) -> impl Iterator<Item = &str> {
        self.current()
            .into_iter()
            .chain(self.ramp().map(|(sha, _)| sha))
    }

    /// Whether new work may run `sha`.
    fn is_live(&self, sha: &str) -> bool {
        self.live().any(|live| live == sha)
    }
}

struct State<T: ?Sized> {
    lineage: Lineage,
    /// Compiled versions by sha256.
    loaded: HashMap<String, Arc<T>>,
    /// Runs in flight, by sha256.
    in_flight: HashMap<String, Arc<AtomicUsize>>,
}

/// The versions of one target on this host: see the module docs.
pub(crate) struct Versions<T: ?Sized> {
    state: RwLock<State<T>>,
    /// Counts choices, to give a ramp its share.
    chosen: AtomicU64,
}

impl<T: ?Sized> Versions<T> {
    /// The versions of a target whose only version is `item`, the config's `sha256`.
    pub fn new(sha256: &str, item: Arc<T>) -> Arc<Self> {
        Arc::new(Self {
            state: RwLock::new(State {
                lineage: Lineage::from_config(sha256),
                loaded: HashMap::from([(sha256.to_owned(), item)]),
                in_flight: HashMap::new(),
            }),
            chosen: AtomicU64::new(0),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State<T>> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State<T>> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the lineage.
    pub fn lineage(&self) -> Lineage {
        self.read().lineage.clone()
    }

    /// Replaces the lineage (after reading the log) and keeps the compiled versions `items`,
    /// at once, dropping what drained.
    pub fn set_lineage(&self, lineage: Lineage, items: Vec<(String, Arc<T>)>) {
        let mut state = self.write();
        for (sha256, item) in items {
            state.loaded.entry(sha256).or_insert(item);
        }
        state.lineage = lineage;
        unload_drained(&mut state);
    }

    /// The version new work runs: the ramping one for its share, else the current one. A
    /// version this host could not load is passed over for the newest one before it that is
    /// loaded, so that new work runs rather than fails.
    pub fn choose(&self) -> Option<String> {
        let state = self.read();
        let loaded = |sha: &str| state.loaded.contains_key(sha);
        if let Some((sha, percent)) = state.lineage.ramp()
            && loaded(sha)
        {
            // Spread evenly: of every 100 choices in a row, `percent` go to the ramp.
            let turn = self.chosen.fetch_add(1, Ordering::Relaxed) % 100;
            let share = |n: u64| n * u64::from(percent) / 100;
            if share(turn + 1) > share(turn) {
                return Some(sha.to_owned());
            }
        }
        let stack = &state.lineage.stack;
        stack
            .iter()
            .rev()
            .find(|sha| loaded(sha))
            .or(stack.last())
            .cloned()
    }

    /// The compiled version `sha256`, if loaded.
    pub fn get(&self, sha256: &str) -> Option<Arc<T>> {
        self.read().loaded.get(sha256).cloned()
    }

    /// Keeps `item` as the compiled version `sha256` (unless one is kept already); answers the
    /// one kept.
    pub fn insert(&self, sha256: &str, item: Arc<T>) -> Arc<T> {
        Arc::clone(self.write().loaded.entry(sha256.to_owned()).or_insert(item))
    }

    /// Counts a run of `sha256` in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>, sha256: &str) -> InFlight<T> {
        let counter = {
            let mut state = self.write();
            let counter = Arc::clone(state.in_flight.entry(sha256.to_owned()).or_default());
            // Counted under the lock, so that no unload sees the version idle meanwhile.
            counter.fetch_add(1, Ordering::SeqCst);
            counter
        };
        InFlight {
            versions: Arc::clone(self),
            sha256: sha256.to_owned(),
            counter,
        }
    }

    /// Every version deployed, the current one first, then ramping, then by deploy time,
    /// newest first.
    pub fn list(&self) -> Vec<VersionInfo> {
        let state = self.read();
        let lineage = &state.lineage;
        let mut versions: Vec<VersionInfo> = lineage
            .deployed
            .iter()
            .map(|(sha256, (at, by))| {
                let in_flight = state
                    .in_flight
                    .get(sha256)
                    .map_or(0, |count| count.load(Ordering::SeqCst));
                let ramp = lineage.ramp().filter(|(ramping, _)| ramping == sha256);
                let state_of = if lineage.current() == Some(sha256) {
                    VersionState::Current
                } else if ramp.is_some() {
                    VersionState::Ramping
                } else if in_flight > 0 {
                    VersionState::Draining
                } else {
                    VersionState::Drained
                };
                VersionInfo {
                    sha256: sha256.clone(),
                    state: state_of,
                    percent: ramp.map(|(_, percent)| percent),
                    in_flight,
                    loaded: state.loaded.contains_key(sha256),
                    deployed_at: *at,
                    deployed_by: by.clone(),
                }
            })
            .collect();
        versions.sort_by(|a, b| {
            (a.state as u8)
                .min(2)
                .cmp(&(b.state as u8).min(2))
                .then(b.deployed_at.cmp(&a.deployed_at))
        });
        versions
    }

    /// Every compiled version, to rebuild them (after a config reload).
    pub fn loaded(&self) -> Vec<(String, Arc<T>)> {
        let state = self.read();
        state
            .loaded
            .iter()
            .map(|(sha, item)| (sha.clone(), Arc::clone(item)))
            .collect()
    }

    /// Whether `check` holds for every compiled version, without copying the list.
    pub fn all_loaded(&self, check: impl Fn(&T) -> bool) -> bool {
        self.read().loaded.values().all(|item| check(item))
    }

    /// Replaces the compiled version `sha256` by `item`, if it is still held: new runs use it.
    pub fn replace(&self, sha256: &str, item: Arc<T>) {
        if let Some(held) = self.write().loaded.get_mut(sha256) {
            *held = item;
        }
    }
}

/// Drops the compiled form of every version the log knows that new work cannot run and none
/// runs here. A version compiled for a deploy not yet read from the log is kept.
fn unload_drained<T: ?Sized>(state: &mut State<T>) {
    let State {
        lineage,
        loaded,
        in_flight,
    } = state;
    // While the current version is not loaded here, new work runs the newest one that is.
    let fallback = match lineage.current() {
        Some(current) if !loaded.contains_key(current) => lineage
            .stack
            .iter()
            .rev()
            .find(|sha| loaded.contains_key(*sha))
            .cloned(),
        _ => None,
    };
    loaded.retain(|sha, _| {
        let busy = in_flight
            .get(sha)
            .is_some_and(|count| count.load(Ordering::SeqCst) > 0);
        let keep = busy
            || lineage.is_live(sha)
            || fallback.as_ref() == Some(sha)
            || !lineage.deployed.contains_key(sha);
        if !keep {
            tracing::info!(sha256 = %sha, "version drained; unloaded");
        }
        keep
    });
}

/// A run of one version in flight: see [`Versions::begin`]. The last run of a version that
/// new work no longer runs unloads it.
pub(crate) struct InFlight<T: ?Sized> {
    versions: Arc<Versions<T>>,
    sha256: String,
    counter: Arc<AtomicUsize>,
}

impl<T: ?Sized> Drop for InFlight<T> {
    fn drop(&mut self) {
        if self.counter.fetch_sub(1, Ordering::SeqCst) == 1 {
            let mut state = self.versions.write();
            if !state.lineage.is_live(&self.sha256) {
                unload_drained(&mut state);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use opshost_api::DeployTarget;

    use super::*;

    fn record(action: DeployAction, sha: &str) -> DeploymentRecord {
        DeploymentRecord {
            seq: 0,
            target: DeployTarget::Operation("Op".into()),
            action,
            sha256: sha.into(),
            by: "ops@acme".into(),
            at: Utc::now(),
        }
    }

    fn full(sha: &str) -> DeploymentRecord {
        record(DeployAction::Deploy { percent: 100 }, sha)
    }

    #[test]
    fn a_rollback_goes_back_through_the_versions_made_current() {
        let mut lineage = Lineage::from_config("a");
        lineage.apply(&full("b"));
        lineage.apply(&full("c"));
        lineage.apply(&record(DeployAction::Rollback, "c"));
        assert_eq!(lineage.current(), Some("b"));
        lineage.apply(&record(DeployAction::Rollback, "b"));
        assert_eq!(lineage.current(), Some("a"));
        assert_eq!(lineage.rollback_target(), None);
        lineage.apply(&record(DeployAction::Rollback, "a"));
        assert_eq!(lineage.current(), Some("a"), "the first version stays");
    }

    #[test]
    fn two_hosts_rolling_back_the_same_version_roll_back_once() {
        let mut lineage = Lineage::from_config("a");
        lineage.apply(&full("b"));
        lineage.apply(&full("c"));
        lineage.apply(&record(DeployAction::Rollback, "c"));
        lineage.apply(&record(DeployAction::Rollback, "c"));
        assert_eq!(lineage.current(), Some("b"));
    }

    #[test]
    fn a_ramp_is_ended_by_its_rollback_or_by_a_full_deploy() {
        let mut lineage = Lineage::from_config("a");
        lineage.apply(&record(DeployAction::Deploy { percent: 10 }, "b"));
        assert_eq!(lineage.ramp(), Some(("b", 10)));
        assert_eq!(lineage.rollback_target(), Some("b"));
        lineage.apply(&record(DeployAction::Rollback, "b"));
        assert_eq!((lineage.current(), lineage.ramp()), (Some("a"), None));
        lineage.apply(&record(DeployAction::Deploy { percent: 50 }, "b"));
        lineage.apply(&full("b"));
        assert_eq!((lineage.current(), lineage.ramp()), (Some("b"), None));
    }

    #[test]
    fn the_configs_version_is_made_current_only_when_the_config_changes() {
        let mut lineage = Lineage::default();
        lineage.apply(&record(DeployAction::Config, "a"));
        lineage.apply(&full("b"));
        lineage.apply(&record(DeployAction::Config, "a"));
        assert_eq!(lineage.current(), Some("b"), "a restart on the same config");
        lineage.apply(&record(DeployAction::Config, "c"));
        assert_eq!(lineage.current(), Some("c"), "a changed config");
    }

    #[test]
    fn a_ramp_gets_its_share_of_new_work() {
        let versions = Versions::new("a", Arc::new(()));
        versions.insert("b", Arc::new(()));
        let mut lineage = versions.lineage();
        lineage.apply(&record(DeployAction::Deploy { percent: 25 }, "b"));
        versions.set_lineage(lineage, Vec::new());
        let chosen: Vec<bool> = (0..400)
            .map(|_| versions.choose().as_deref() == Some("b"))
            .collect();
        assert_eq!(chosen.iter().filter(|to_b| **to_b).count(), 100);
        assert!(
            chosen
                .chunks(4)
                .all(|four| four.iter().filter(|to_b| **to_b).count() == 1),
            "spread evenly"
        );
    }

    #[test]
    fn new_work_passes_over_a_version_this_host_could_not_load() {
        let versions = Versions::new("a", Arc::new(()));
        let mut lineage = versions.lineage();
        lineage.apply(&full("b"));
        lineage.apply(&record(DeployAction::Deploy { percent: 50 }, "c"));
        versions.set_lineage(lineage, Vec::new());
        assert!((0..10).all(|_| versions.choose().as_deref() == Some("a")));
        versions.insert("b", Arc::new(()));
        assert_eq!(versions.choose().as_deref(), Some("b"));
    }

    #[test]
    fn a_version_no_longer_live_is_unloaded_when_its_last_run_ends() {
        let versions = Versions::new("a", Arc::new(()));
        let run = versions.begin("a");
        versions.insert("b", Arc::new(()));
        let mut lineage = versions.lineage();
        lineage.apply(&full("b"));
        versions.set_lineage(lineage.clone(), Vec::new());
        lineage.apply(&record(DeployAction::Config, "c"));
        versions.insert("c", Arc::new(()));
        versions.set_lineage(lineage, Vec::new());
        assert!(
            versions.get("a").is_some(),
            "draining while its run is in flight"
        );
        assert!(versions.get("b").is_none(), "b was no longer live and idle");
        let listed = versions.list();
        let a = listed.iter().find(|v| v.sha256 == "a").unwrap();
        assert_eq!((a.state, a.in_flight), (VersionState::Draining, 1));
        drop(run);
        assert!(versions.get("a").is_none());
        let listed = versions.list();
        assert_eq!(listed[0].state, VersionState::Current);
        assert!(
            listed[1..]
                .iter()
                .all(|v| v.state == VersionState::Drained && !v.loaded)
        );
    }
}
