//! The per-binary HTTP server: Prometheus `/metrics`, liveness `/healthz`, readiness `/readyz`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Readiness state shared between the pipeline and the server. Clones share the state.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<Option<String>>>,
}

impl Health {
    /// A new handle, not ready until [`Health::set_ready`].
    pub fn new() -> Self {
        Health { inner: Arc::new(Mutex::new(Some("starting".into()))) }
    }

    /// Marks the process ready to do its job.
    pub fn set_ready(&self) {
        *self.inner.lock().expect("health lock") = None;
    }

    /// Marks the process not ready, with a reason shown by `/readyz`.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.inner.lock().expect("health lock") = Some(reason.into());
    }

    /// `None` when ready, else the reason.
    pub fn not_ready_reason(&self) -> Option<String> {
        self.inner.lock().expect("health lock").clone()
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    health: Health,
}

/// The router, exposed for tests.
pub fn router(registry: Arc<Registry>, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, health })
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
            .into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.health.not_ready_reason() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")).into_response(),
    }
}

/// Binds `listen` and serves until `shutdown` is cancelled. Returns the bound address once
/// listening (useful with port 0) and the task serving it.
pub async fn spawn(
    listen: &str,
    registry: Arc<Registry>,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = router(registry, health);
    let task = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
    });
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let mut registry = Registry::with_prefix("sluice");
        let counter = Counter::<u64>::default();
        registry.register("test_events", "Test events", counter.clone());
        counter.inc_by(3);
        let health = Health::new();
        let token = CancellationToken::new();
        let (addr, task) = spawn("127.0.0.1:0", Arc::new(registry), health.clone(), token.clone()).await.unwrap();

        assert!(get(addr, "/metrics").await.contains("sluice_test_events_total 3"));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503") && not_ready.contains("starting"), "{not_ready}");
        health.set_ready();
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));

        token.cancel();
        task.await.unwrap().unwrap();
    }
}
