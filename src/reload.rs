//! Hot reload of rule files, on SIGHUP ([`Reloads::request`]) and when a file in `rules_dir`
//! changes (a `notify` watcher on the directory, debounced).
//!
//! A reload loads and validates the whole directory exactly as startup does, checks that it
//! changes nothing only a restart may change ([`Baseline`]), then swaps the proxy's routing
//! table at once ([`Proxy::reload`]): requests in flight finish on the table they started with.
//! On any problem the running rules stay, each problem is logged (`file:line: what`) and
//! `grantd_rules_reload_errors_total` counts the rejected reload. It must not touch readiness,
//! listeners, the store or keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use serde_yaml_ng::Value;
use tokio::sync::mpsc;

use crate::proxy::Proxy;
use crate::rules::{self, RuleSet};

/// A burst of file events (an editor's write-and-rename, a ConfigMap's symlink swap) ends when
/// none follows within this; a reload then sees the files as they were left.
const SETTLE: Duration = Duration::from_millis(100);
/// A directory that never stops changing is still reloaded this often.
const SETTLE_AT_MOST: Duration = Duration::from_millis(1000);

/// The reload machinery of a running grantd; dropping it stops watching.
pub struct Reloads {
    trigger: mpsc::Sender<()>,
    _watcher: Option<RecommendedWatcher>,
}

impl Reloads {
    /// Starts the reload task on `runtime`, and the watcher on `dir` when `watch` is set.
    pub fn start(
        proxy: Arc<Proxy>,
        dir: &Path,
        watch: bool,
        baseline: Baseline,
        runtime: &tokio::runtime::Handle,
    ) -> Reloads {
        // One pending reload is enough: it reads the directory as it is when it runs.
        let (trigger, pending) = mpsc::channel(1);
        let watcher = watch.then(|| watcher(dir, trigger.clone())).flatten();
        let reloader = Reloader {
            proxy,
            dir: dir.to_path_buf(),
            baseline,
        };
        runtime.spawn(reloader.run(pending));
        Reloads {
            trigger,
            _watcher: watcher,
        }
    }

    /// Asks for a reload (SIGHUP); a reload already pending covers this one.
    pub fn request(&self) {
        let _ = self.trigger.try_send(());
    }
}

/// Watches `dir` (not its subdirectories: rule files live at the top; a ConfigMap's `..data`
/// symlink swap happens there too). Without a watcher SIGHUP still reloads.
fn watcher(dir: &Path, trigger: mpsc::Sender<()>) -> Option<RecommendedWatcher> {
    let on_event = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Opening and reading files (a reload does) and metadata changes are not edits.
        if !matches!(
            event.kind,
            EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_))
        ) {
            let _ = trigger.try_send(());
        }
    };
    let watched = notify::recommended_watcher(on_event)
        .and_then(|mut w| w.watch(dir, RecursiveMode::NonRecursive).map(|()| w));
    match watched {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch rules_dir: only SIGHUP reloads rules");
            None
        }
    }
}

/// What of each rule file only a restart applies, as the process started with it.
pub struct Baseline(BTreeMap<String, (String, Value)>);

impl Baseline {
    pub fn of(sets: &BTreeMap<String, RuleSet>) -> Baseline {
        let parts = sets
            .iter()
            .map(|(name, s)| (name.clone(), (s.file.clone(), s.restart_only.clone())))
            .collect();
        Baseline(parts)
    }

    /// Every change in `sets` a reload cannot apply, one message each.
    fn refused(&self, sets: &BTreeMap<String, RuleSet>) -> Vec<String> {
        let restart = "only a restart applies it";
        let mut out = Vec::new();
        for (name, (file, _)) in &self.0 {
            if !sets.contains_key(name) {
                out.push(format!("{file}: integration `{name}` is gone: {restart}"));
            }
        }
        for (name, set) in sets {
            let file = &set.file;
            match self.0.get(name) {
                None => out.push(format!("{file}: integration `{name}` is new: {restart}")),
                Some((_, before)) if *before != set.restart_only => {
                    let keys = changed_keys(before, &set.restart_only).join("`, `");
                    out.push(format!("{file}: `{keys}` changed: {restart}"));
                }
                Some(_) => {}
            }
        }
        out
    }
}

/// The top-level keys whose values differ (`rules` here means the `on: token` rules).
fn changed_keys(before: &Value, after: &Value) -> Vec<String> {
    let (Some(a), Some(b)) = (before.as_mapping(), after.as_mapping()) else {
        return vec!["(file)".into()];
    };
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

struct Reloader {
    proxy: Arc<Proxy>,
    dir: PathBuf,
    baseline: Baseline,
}

impl Reloader {
    async fn run(self, mut pending: mpsc::Receiver<()>) {
        while pending.recv().await.is_some() {
            settle(&mut pending).await;
            let dir = self.dir.clone();
            // Compiling every expression is CPU work: off the control runtime's workers.
            let loaded = tokio::task::spawn_blocking(move || rules::load_dir(&dir)).await;
            let loaded = match loaded {
                Ok(loaded) => loaded.map_err(|e| e.0),
                Err(e) => Err(vec![format!("{}: loading failed: {e}", self.dir.display())]),
            };
            let metrics = &self.proxy.metrics().runtime;
            match loaded.and_then(|sets| self.apply(sets)) {
                Ok(count) => {
                    metrics.reloads.inc();
                    tracing::info!(dir = %self.dir.display(), integrations = count, "rules reloaded");
                }
                Err(problems) => {
                    metrics.reload_errors.inc();
                    for problem in problems {
                        tracing::warn!(%problem, "rules reload rejected; the previous rules stay");
                    }
                }
            }
        }
    }

    /// Swaps in `sets` when a restart is not needed for them; the number of integrations.
    fn apply(&self, sets: BTreeMap<String, RuleSet>) -> Result<usize, Vec<String>> {
        let refused = self.baseline.refused(&sets);
        if !refused.is_empty() {
            return Err(refused);
        }
        self.proxy
            .reload(sets)
            .map_err(|e| vec![format!("{e:#}")])?;
        Ok(self.proxy.integrations().len())
    }
}

/// Waits until the triggers stop (at most [`SETTLE_AT_MOST`]).
async fn settle(pending: &mut mpsc::Receiver<()>) {
    let until = tokio::time::Instant::now() + SETTLE_AT_MOST;
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout(SETTLE, pending.recv()).await {
            Ok(Some(())) => continue,
            Ok(None) | Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str) -> BTreeMap<String, RuleSet> {
        let set = rules::file::parse("rules/lab.yaml", text, Some("lab")).unwrap();
        BTreeMap::from([("lab".to_string(), set)])
    }

    const HEAD: &str = "integration: lab\nbase_url: https://lab.example\n";

    #[test]
    fn api_rules_tests_and_description_reload_but_urls_and_token_rules_need_a_restart() {
        let before = Baseline::of(&set(HEAD));
        let api_rule = "rules:\n  - name: r\n    expr: 'false'\ndescription: x\n";
        assert!(before
            .refused(&set(&format!("{HEAD}{api_rule}")))
            .is_empty());
        let moved = set("integration: lab\nbase_url: https://elsewhere.example\n");
        assert_eq!(
            before.refused(&moved),
            ["rules/lab.yaml: `base_url` changed: only a restart applies it"]
        );
        let token_rule = "rules:\n  - name: t\n    on: token\n    expr: 'false'\n";
        let refused = before.refused(&set(&format!("{HEAD}{token_rule}")));
        assert_eq!(
            refused,
            ["rules/lab.yaml: `rules` changed: only a restart applies it"]
        );
        assert_eq!(
            before.refused(&BTreeMap::new()),
            ["rules/lab.yaml: integration `lab` is gone: only a restart applies it"]
        );
    }
}
