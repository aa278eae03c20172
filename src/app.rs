//! Wiring: builds every part from the typed config and runs it.
//!
//! A **control runtime** (multi-threaded) owns the store, the refresher, the admin API and the
//! proactive refresh loop. The **proxy workers** are single-threaded runtimes, one per thread
//! with its own `SO_REUSEPORT` listener; they read grants from memory and hand refreshes to the
//! control runtime. This module must not contain request logic.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::callbacks::deliver::Deliverer;
use crate::config::Config;
use crate::connect::link::Links;
use crate::connect::public::Public;
use crate::connect::Connect;
use crate::connections::census;
use crate::connections::client::oauth_clients;
use crate::connections::credential::Accepts;
use crate::connections::crypto::Keyring;
use crate::connections::refresh::Refresher;
use crate::connections::token::OAuthClient;
use crate::connections::Connections;
use crate::proxy::ConnectionPolicy;
use crate::proxy::Proxy;
use crate::reload::{Baseline, Reloads};
use crate::rules::RuleSet;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::upstream;

pub use crate::connections::crypto::EXAMPLE_KEY;

/// A running grantd.
pub struct App {
    pub proxy_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    /// The public connect listener, when `connect.listen` is set.
    pub connect_addr: Option<SocketAddr>,
    /// The probes-and-scrapes listener, when `ops.listen` is set.
    pub ops_addr: Option<SocketAddr>,
    pub connect: Arc<Connect>,
    pub connections: Arc<Connections>,
    /// The store itself, for those that keep more than connections (tests, tools).
    pub store: Arc<dyn crate::store::Store>,
    pub refresher: Arc<Refresher>,
    reloads: Reloads,
    stop: watch::Sender<bool>,
    /// Sent once the proxy has drained: the ops listener answers readyz 503 until then.
    drained: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
    control: Option<tokio::runtime::Runtime>,
}

impl App {
    pub fn start(config: &Config, rule_sets: BTreeMap<String, RuleSet>) -> anyhow::Result<App> {
        let (keys, connect_keys) = keyrings(config)?;
        let control = control_runtime()?;
        let outbox =
            crate::callbacks::deliver::outbox(&config.callbacks).map_err(anyhow::Error::msg)?;
        let links = Links::new(connect_keys.clone(), &config.connect).map(Arc::new);
        // The delivery worker makes each authentication_error's reconnect_url when it sends it.
        let reconnect_links = links
            .clone()
            .map(|l| l as Arc<dyn crate::callbacks::body::ReconnectLinks>);
        let store = control.block_on(open_store(&config.store, outbox))?;
        // The one registry: every part counts into it, `/_grantd/metrics` renders it.
        let metrics = Arc::new(Metrics::default());
        let connections = Arc::new(
            Connections::with_cache(
                store.clone(),
                keys,
                config.store.cache_ttl,
                config.store.cache_size.0 as u64,
            )
            .with_metrics(metrics.clone()),
        );
        let clients = oauth_clients(config, &rule_sets)?;
        let tls = upstream::tls_config(&config.upstream)?;
        let token_client = upstream::client(&config.upstream, tls.clone());
        let refresher = Arc::new(Refresher::new(
            connections.clone(),
            token_client,
            clients.clone(),
            config.refresh.clone(),
            control.handle().clone(),
        ));
        let connect = Arc::new(Connect::new(
            connections.clone(),
            store.clone(),
            upstream::client(&config.upstream, tls.clone()),
            configured(&clients),
            connect_keys,
            links,
            config,
        ));
        let baseline = Baseline::of(&rule_sets);
        let proxy = proxy_with_connections(
            config,
            rule_sets,
            &connections,
            &refresher,
            &store,
            &metrics,
        )?;
        control.spawn(census::run(
            store.clone(),
            metrics.clone(),
            config.store.gauge_interval,
        ));
        let reloads = Reloads::start(
            proxy.clone(),
            &config.rules_dir,
            config.reload.watch,
            baseline,
            control.handle(),
        );
        let (stop, stop_rx) = watch::channel(false);

        let admin = admin_api(
            config,
            &proxy,
            &clients,
            &connections,
            &store,
            &refresher,
            &connect,
        );
        let admin_addr = match admin {
            Some(admin) => Some(serve_on(&control, config.admin.listen, "admin", |l| {
                admin.serve(l, config.server.clone(), stop_rx.clone())
            })?),
            None => None,
        };
        let connect_addr = serve_public(config, &connect, &control, &stop_rx)?;
        control.spawn(refresher.clone().run_proactive());
        control.spawn(crate::memory::release_periodically(Duration::from_secs(30)));
        control.spawn(proxy.clone().sync_cooldowns(config.ratelimit.sync_interval));
        let deliverer = Deliverer::new(
            store.clone(),
            upstream::client(&config.upstream, tls),
            &config.callbacks,
            reconnect_links,
        )
        .map_err(anyhow::Error::msg)?
        .with_metrics(&metrics);
        control.spawn(Arc::new(deliverer).run());

        let (drained, drained_rx) = watch::channel(false);
        let ops_addr = match config.ops.listen {
            Some(addr) => Some(serve_on(&control, addr, "ops.listen", |l| {
                let (config, draining) = (config.server.clone(), stop_rx.clone());
                proxy.clone().serve_ops(l, config, draining, drained_rx)
            })?),
            None => None,
        };
        let (proxy_addr, workers) = spawn_workers(config, &proxy, &stop_rx)?;
        let integrations = proxy.integrations();
        tracing::info!(listen = %proxy_addr, admin = ?admin_addr, ops = ?ops_addr, workers = config.workers, integrations = ?integrations, "grantd proxy listening");
        Ok(App {
            proxy_addr,
            admin_addr,
            connect_addr,
            ops_addr,
            connect,
            connections,
            store,
            refresher,
            reloads,
            stop,
            drained,
            workers,
            control: Some(control),
        })
    }

    /// Reloads the rule files (what SIGHUP does); the outcome is logged and counted.
    pub fn reload(&self) {
        self.reloads.request();
    }

    /// Stops accepting, drains the workers' connections, stops the control plane.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        for worker in std::mem::take(&mut self.workers) {
            match worker.join() {
                Ok(result) => result?,
                Err(_) => anyhow::bail!("a worker thread panicked"),
            }
        }
        let _ = self.drained.send(true);
        if let Some(control) = self.control.take() {
            control.shutdown_timeout(Duration::from_secs(5));
        }
        Ok(())
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(control) = self.control.take() {
            control.shutdown_background();
        }
    }
}

/// The control runtime: store, refresher, admin, connect, callbacks. Proxy workers have their
/// own runtimes (see `spawn_workers`).
fn control_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("grantd-control")
        .enable_all()
        .build()
}

/// The clients the authorization-code flow can use: those with a configured client id.
fn configured(clients: &HashMap<String, OAuthClient>) -> HashMap<String, OAuthClient> {
    clients
        .iter()
        .filter(|(_, c)| c.configured())
        .map(|(n, c)| (n.clone(), c.clone()))
        .collect()
}

/// The encryption keys, twice: one for the tokens (`grants`), one for connect states and links.
fn keyrings(config: &Config) -> anyhow::Result<(Keyring, Arc<Keyring>)> {
    let encryption = config.encryption.as_ref().context(
        "encryption.key is required: tokens are encrypted at rest (make one with: openssl rand -base64 32)",
    )?;
    if encryption.key.trim() == EXAMPLE_KEY {
        tracing::warn!("encryption.key is the example key from examples/grantd.yaml: fine for trying grantd, never for real tokens");
    }
    let keyring =
        || Keyring::new(&encryption.key, &encryption.previous_keys).map_err(anyhow::Error::msg);
    Ok((keyring()?, Arc::new(keyring()?)))
}

/// The proxy, with connections (injection, refresh, pausing) on `grants` and `store`.
fn proxy_with_connections(
    config: &Config,
    rule_sets: BTreeMap<String, RuleSet>,
    connections: &Arc<Connections>,
    refresher: &Arc<Refresher>,
    store: &Arc<dyn Store>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<Proxy>> {
    let connections = Arc::new(ConnectionPolicy::new(
        connections.clone(),
        refresher.clone(),
    ));
    let proxy = Proxy::new_in(config, rule_sets, metrics.clone())?
        .with_connections(connections, store.clone());
    Ok(Arc::new(proxy))
}

/// The admin API, when `admin.token` is set.
fn admin_api(
    config: &Config,
    proxy: &Proxy,
    clients: &HashMap<String, OAuthClient>,
    connections: &Arc<Connections>,
    store: &Arc<dyn Store>,
    refresher: &Arc<Refresher>,
    connect: &Arc<Connect>,
) -> Option<Arc<Admin>> {
    let Some(token) = config.admin.token.as_deref().filter(|t| !t.is_empty()) else {
        tracing::warn!("admin.token is not set: the admin API is off");
        return None;
    };
    let accepts: HashMap<String, Accepts> = proxy
        .rule_sets()
        .into_iter()
        .map(|(name, set)| (name, Accepts::of(&set)))
        .collect();
    let integrations = proxy
        .urls()
        .into_iter()
        .map(|(name, urls)| {
            let oauth_client = clients.get(&name).is_some_and(|c| c.configured());
            let accepts = accepts.get(&name).cloned().unwrap_or_default();
            let known = crate::admin::Known {
                oauth_client,
                accepts,
                urls,
            };
            (name, known)
        })
        .collect();
    Some(Arc::new(Admin::new(
        connections.clone(),
        store.clone(),
        refresher.clone(),
        connect.clone(),
        token,
        integrations,
    )))
}

/// The public connect pages, when `connect.listen` is set.
fn serve_public(
    config: &Config,
    connect: &Arc<Connect>,
    control: &tokio::runtime::Runtime,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(addr) = config.connect.listen else {
        return Ok(None);
    };
    let redirect = config.connect.default_redirect_uri();
    let public = Arc::new(Public::new(connect.clone(), redirect.as_deref()));
    let bound = serve_on(control, addr, "connect.listen", |l| {
        public.serve(l, config.server.clone(), stop.clone())
    })?;
    Ok(Some(bound))
}

/// Binds `addr` and spawns `serve` on the control runtime; the bound address comes back.
fn serve_on<F>(
    control: &tokio::runtime::Runtime,
    addr: SocketAddr,
    what: &str,
    serve: impl FnOnce(tokio::net::TcpListener) -> F,
) -> anyhow::Result<SocketAddr>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = bind(control, addr, what)?;
    let bound = listener.local_addr()?;
    control.spawn(serve(listener));
    Ok(bound)
}

/// A listener for the control runtime, named in the error when the address is taken.
fn bind(
    control: &tokio::runtime::Runtime,
    addr: SocketAddr,
    what: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    control
        .block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// One thread per proxy listener (`workers`, bound with `SO_REUSEPORT`), each with its own
/// single-threaded runtime, serving until `stop` turns true.
type Workers = Vec<std::thread::JoinHandle<anyhow::Result<()>>>;

fn spawn_workers(
    config: &Config,
    proxy: &Arc<Proxy>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, Workers)> {
    let listeners = bind_workers(config.listen, config.workers)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let proxy_addr = listeners[0].local_addr()?;
    let mut workers = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let (proxy, mut stop) = (proxy.clone(), stop.clone());
        workers.push(
            std::thread::Builder::new()
                .name(format!("grantd-worker-{i}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(async move {
                        let listener = tokio::net::TcpListener::from_std(listener)?;
                        proxy
                            .serve(listener, async move {
                                let _ = stop.wait_for(|s| *s).await;
                            })
                            .await;
                        anyhow::Ok(())
                    })?;
                    runtime.shutdown_background();
                    Ok(())
                })?,
        );
    }
    Ok((proxy_addr, workers))
}

/// SQLite by default; PostgreSQL (fleet mode) when `store.url` is given.
async fn open_store(
    config: &crate::config::StoreConfig,
    outbox: crate::store::Outbox,
) -> anyhow::Result<Arc<dyn crate::store::Store>> {
    match &config.url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let store =
                crate::store::postgres::PostgresStore::open(url, config.schema.as_deref(), outbox)
                    .await
                    .context("store.url")?;
            Ok(Arc::new(store))
        }
        Some(_) => anyhow::bail!(
            "store.url must be postgres://... (leave it out for the embedded SQLite store)"
        ),
        None => {
            let store = SqliteStore::open(&config.path, config.busy_timeout, outbox)
                .await
                .with_context(|| format!("store {}", config.path.display()))?;
            Ok(Arc::new(store))
        }
    }
}

/// `n` listening sockets on one address (SO_REUSEPORT). With port 0 the first socket picks the
/// port and the others join it.
fn bind_workers(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    // SO_REUSEPORT would let a second grantd on this port silently share the traffic; a plain
    // bind first makes "address in use" an error as usual.
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    let mut addr = addr;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}
