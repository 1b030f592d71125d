//! `arkiv serve`: the daemon's process — runtime, listener (plain or TLS),
//! signals and the order things stop in.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::api;
use crate::config::Config;
use crate::daemon::{Daemon, DaemonError};
use crate::schedule::SystemClock;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("listen address {addr}: {error}")]
    Listen { addr: String, error: std::io::Error },
    #[error("TLS certificate {cert} / key {key}: {error}")]
    Tls { cert: String, key: String, error: std::io::Error },
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn serve(config: Config, config_path: &Path, exe: &Path) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("arkiv-daemon")
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(run(config, config_path, exe))
}

async fn run(config: Config, config_path: &Path, exe: &Path) -> Result<(), ServeError> {
    let addr: SocketAddr = config.daemon.listen.parse().map_err(|_| ServeError::Listen {
        addr: config.daemon.listen.clone(),
        error: std::io::ErrorKind::InvalidInput.into(),
    })?;
    let grace = config.daemon.shutdown_grace;
    let tls = match (&config.daemon.tls_cert, &config.daemon.tls_key) {
        (Some(cert), Some(key)) => {
            // Both aws-lc-rs and ring are linked (through other crates);
            // rustls then needs the process's provider named once.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let c = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await.map_err(|error| {
                ServeError::Tls { cert: cert.display().to_string(), key: key.display().to_string(), error }
            })?;
            Some(c)
        }
        _ => None,
    };
    // The catalog's lock, then the port, before anything is recorded: a
    // second daemon, or one whose port is taken, stops without touching
    // the first one's runs.
    let _lock = crate::catalog::Catalog::lock_for_daemon(&config.daemon.catalog).map_err(DaemonError::from)?;
    let listener =
        std::net::TcpListener::bind(addr).map_err(|error| ServeError::Listen { addr: addr.to_string(), error })?;
    let daemon = Daemon::new(config, config_path, exe, Arc::new(SystemClock))?;
    let requeued = daemon.recover()?;
    if !requeued.is_empty() {
        tracing::warn!(runs = requeued.len(), "queued again the runs the previous daemon did not finish or missed");
    }
    listener.set_nonblocking(true).map_err(|error| ServeError::Listen { addr: addr.to_string(), error })?;
    let local = listener.local_addr().unwrap_or(addr);
    tokio::spawn(daemon.clone().refresh_all());
    tokio::spawn(daemon.clone().run_loop());
    let app = api::router(api::Api::new(daemon.clone())).into_make_service_with_connect_info::<SocketAddr>();
    let handle = axum_server::Handle::new();
    let server = {
        let handle = handle.clone();
        async move {
            match tls {
                Some(c) => axum_server::from_tcp_rustls(listener, c).handle(handle).serve(app).await,
                None => axum_server::from_tcp(listener).handle(handle).serve(app).await,
            }
        }
    };
    tracing::info!(address = %local, tls = daemon.config.daemon.tls_cert.is_some(), "arkiv daemon listening");
    eprintln!("arkiv: serving on {}://{local}", if daemon.config.daemon.tls_cert.is_some() { "https" } else { "http" });
    let stopper = {
        let daemon = daemon.clone();
        let handle = handle.clone();
        async move {
            wait_for_signal().await;
            tracing::info!("stopping: no new jobs; running jobs get {}", humantime::format_duration(grace));
            daemon.shutdown(grace).await;
            handle.graceful_shutdown(Some(Duration::from_secs(5)));
        }
    };
    tokio::spawn(stopper);
    server.await.map_err(|error| ServeError::Listen { addr: local.to_string(), error })?;
    tracing::info!("arkiv daemon stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
