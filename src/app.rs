//! Wiring: builds every part from the typed config and runs it.
//!
//! A **control runtime** (multi-threaded) owns the store, the refresher, the admin API and the
//! proactive refresh loop. The **proxy workers** are single-threaded runtimes, one per thread
//! with its own `SO_REUSEPORT` listener; they read grants from memory and hand refreshes to the
//! control runtime. This module must not contain request logic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::config::Config;
use crate::connect::link::Links;
use crate::connect::public::Public;
use crate::connect::Connect;
use crate::grants::crypto::Keyring;
use crate::grants::refresh::Refresher;
use crate::grants::token::oauth_clients;
use crate::grants::Grants;
use crate::inject::Connections;
use crate::proxy::Proxy;
use crate::rules::RuleSet;
use crate::store::sqlite::SqliteStore;
use crate::upstream;

pub use crate::grants::crypto::EXAMPLE_KEY;

/// A running grantd.
pub struct App {
    pub proxy_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    /// The public connect listener, when `connect.listen` is set.
    pub connect_addr: Option<SocketAddr>,
    pub connect: Arc<Connect>,
    pub grants: Arc<Grants>,
    pub refresher: Arc<Refresher>,
    stop: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
    control: Option<tokio::runtime::Runtime>,
}

impl App {
    pub fn start(config: &Config, rule_sets: BTreeMap<String, RuleSet>) -> anyhow::Result<App> {
        let encryption = config.encryption.as_ref().context(
            "encryption.key is required: tokens are encrypted at rest (make one with: openssl rand -base64 32)",
        )?;
        let keys =
            Keyring::new(&encryption.key, &encryption.previous_keys).map_err(anyhow::Error::msg)?;
        if encryption.key.trim() == EXAMPLE_KEY {
            tracing::warn!("encryption.key is the example key from examples/grantd.yaml: fine for trying grantd, never for real tokens");
        }
        let control = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("grantd-control")
            .enable_all()
            .build()?;
        let outbox =
            crate::callbacks::deliver::outbox(&config.callbacks).map_err(anyhow::Error::msg)?;
        let connect_keys = Arc::new(
            Keyring::new(&encryption.key, &encryption.previous_keys).map_err(anyhow::Error::msg)?,
        );
        let links = Links::new(connect_keys.clone(), &config.connect).map(Arc::new);
        // The delivery worker makes each authentication_error's reconnect_url when it sends it.
        let reconnect_links = links
            .clone()
            .map(|l| l as Arc<dyn crate::callbacks::body::ReconnectLinks>);
        let store = control.block_on(open_store(&config.store, outbox))?;
        let grants = Arc::new(Grants::new(store.clone(), keys, config.store.cache_ttl));
        let clients = oauth_clients(config, &rule_sets)?;
        let tls = upstream::tls_config(&config.upstream)?;
        let token_client = upstream::client(&config.upstream, tls.clone());
        let refresher = Arc::new(Refresher::new(
            grants.clone(),
            token_client,
            clients.clone(),
            config.refresh.clone(),
            control.handle().clone(),
        ));
        let connect = Arc::new(Connect::new(
            grants.clone(),
            upstream::client(&config.upstream, tls.clone()),
            clients.clone(),
            connect_keys,
            links,
            config.connect.clone(),
            config.refresh.clone(),
        ));
        let injects = rule_sets
            .iter()
            .filter_map(|(name, set)| set.auth.as_ref().map(|a| (name.clone(), a.inject.clone())))
            .collect();
        let connections = Arc::new(Connections::new(grants.clone(), refresher.clone(), injects));
        let proxy = Arc::new(Proxy::new(config, rule_sets)?.with_connections(connections));
        let (stop, stop_rx) = watch::channel(false);

        let admin_addr = match &config.admin.token {
            Some(token) if !token.is_empty() => {
                let integrations = proxy
                    .urls()
                    .into_iter()
                    .map(|(name, urls)| {
                        let oauth_client = clients.contains_key(&name);
                        (name, crate::admin::Known { oauth_client, urls })
                    })
                    .collect();
                let admin = Arc::new(Admin::new(
                    grants.clone(),
                    refresher.clone(),
                    connect.clone(),
                    token,
                    integrations,
                ));
                let listener = control
                    .block_on(tokio::net::TcpListener::bind(config.admin.listen))
                    .with_context(|| format!("cannot listen on {} (admin)", config.admin.listen))?;
                let addr = listener.local_addr()?;
                control.spawn(admin.serve(listener, config.server.clone(), stop_rx.clone()));
                Some(addr)
            }
            _ => {
                tracing::warn!("admin.token is not set: the admin API is off");
                None
            }
        };
        let connect_addr = match config.connect.listen {
            Some(addr) => {
                let public = Arc::new(Public::new(
                    connect.clone(),
                    config.connect.default_redirect_uri().as_deref(),
                ));
                let listener = control
                    .block_on(tokio::net::TcpListener::bind(addr))
                    .with_context(|| format!("cannot listen on {addr} (connect.listen)"))?;
                let bound = listener.local_addr()?;
                control.spawn(public.serve(listener, config.server.clone(), stop_rx.clone()));
                Some(bound)
            }
            None => None,
        };
        control.spawn(refresher.clone().run_proactive());
        let callback_client = upstream::client(&config.upstream, tls);
        let deliverer = crate::callbacks::deliver::Deliverer::new(
            store,
            callback_client,
            &config.callbacks,
            reconnect_links,
        )
        .map_err(anyhow::Error::msg)?;
        control.spawn(Arc::new(deliverer).run());

        let listeners = bind_workers(config.listen, config.workers)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let proxy_addr = listeners[0].local_addr()?;
        let mut workers = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let (proxy, mut stop) = (proxy.clone(), stop_rx.clone());
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
        let integrations: Vec<&str> = proxy.integrations().collect();
        tracing::info!(listen = %proxy_addr, admin = ?admin_addr, workers = config.workers, integrations = ?integrations, "grantd proxy listening");
        Ok(App {
            proxy_addr,
            admin_addr,
            connect_addr,
            connect,
            grants,
            refresher,
            stop,
            workers,
            control: Some(control),
        })
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
