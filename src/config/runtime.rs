//! The `reload:` and `ratelimit:` sections: how rule files are reloaded, and how long grantd
//! remembers a provider's rate limit.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Reload when a file in `rules_dir` changes. Off: only SIGHUP reloads (e.g. a filesystem
    /// without inotify, or operators who want every change applied by hand).
    #[serde(default = "yes")]
    pub watch: bool,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig { watch: true }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// The longest cooldown grantd keeps, whatever `Retry-After` asks for: a provider (or a
    /// proxy in front of it) saying "come back tomorrow" must not silence an integration
    /// for a day.
    #[serde(with = "humantime_serde", default = "default_max_cooldown")]
    pub max_cooldown: Duration,
    /// How often each replica reads the cooldowns others recorded in a shared (PostgreSQL)
    /// store. Only cooldowns are read: nothing is read on the request path.
    #[serde(with = "humantime_serde", default = "default_sync_interval")]
    pub sync_interval: Duration,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            max_cooldown: default_max_cooldown(),
            sync_interval: default_sync_interval(),
        }
    }
}

fn default_max_cooldown() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_sync_interval() -> Duration {
    Duration::from_secs(1)
}
