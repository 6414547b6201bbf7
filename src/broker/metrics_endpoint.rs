//! The `/metrics` listener (`metrics.listener`): served by shard 0 alone, which gathers every
//! shard's figures over the mesh at each scrape ([`Shard::broker_stats`]) and renders them in
//! the Prometheus text format. Nothing is kept between scrapes: a broker nobody scrapes pays
//! only for its counters.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;
use glommio::sync::Semaphore;
use kafka_protocol::messages::ApiKey;

use crate::kafka::handlers::error_codes::error_name;
use crate::metrics::exposition::{self, Names, Report};
use crate::metrics::http;
use crate::metrics::process::ProcessStats;
use crate::native::frame::Api;
use crate::shard::Shard;

/// How request codes are named in the exposition.
const NAMES: Names = Names {
    kafka_api: |key| ApiKey::try_from(key).map_or_else(|_| key.to_string(), |k| format!("{k:?}")),
    kafka_error: error_name,
    native_api: |code| Api::from_u8(code).map_or_else(|| code.to_string(), |a| format!("{a:?}")),
};

/// Binds the listener, when there is one to bind, and says where it listens (port 0 takes a
/// free port).
pub(super) fn bind(shard: &Shard) -> Result<Option<TcpListener>, String> {
    let Some(address) = shard.config.metrics_listener else {
        tracing::info!("metrics listener off");
        return Ok(None);
    };
    let listener =
        TcpListener::bind(address).map_err(|e| format!("metrics listener on {address}: {e}"))?;
    let bound = listener.local_addr().map_or_else(|_| address.to_string(), |a| a.to_string());
    tracing::info!(metrics = %bound, "metrics listener ready: http://{bound}/metrics");
    Ok(Some(listener))
}

/// Accepts scrapes until the shard stops, [`http::CONNECTIONS_MAX`] at once, rendering one at
/// a time: however many clients ask together, shard 0 gathers and encodes once per request in
/// turn, never all at once.
pub(super) async fn serve(shard: Rc<Shard>, listener: TcpListener) {
    let open = Rc::new(Cell::new(0usize));
    let renders = Rc::new(Semaphore::new(1));
    let mut last_refusal_logged: Option<Instant> = None;
    loop {
        let stream = match crate::transport::accept_until_stop(&shard, &listener).await {
            None => return,
            Some(Ok(stream)) => stream,
            Some(Err(e)) => {
                tracing::warn!("metrics listener: accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if open.get() >= http::CONNECTIONS_MAX {
            // One line a second at most: a flood of connections must not flood the log.
            if last_refusal_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                tracing::warn!("metrics listener: {} scrapes open, closing another", open.get());
                last_refusal_logged = Some(Instant::now());
            }
            continue;
        }
        open.set(open.get() + 1);
        let (shard, open, renders) = (shard.clone(), open.clone(), renders.clone());
        glommio::spawn_local(async move {
            let render = || async {
                let _turn = renders.acquire_permit(1).await.map_err(|e| e.to_string())?;
                render(&shard).await
            };
            if let Err(e) = http::serve_connection(stream, exposition::CONTENT_TYPE, render).await {
                tracing::debug!("metrics connection closed: {e}");
            }
            open.set(open.get() - 1);
        })
        .detach();
    }
}

/// One scrape's text.
async fn render(shard: &Rc<Shard>) -> Result<String, String> {
    let started = Instant::now();
    let stats = shard.broker_stats().await.map_err(|e| e.to_string())?;
    let gathered = started.elapsed();
    let process = match glommio::executor().spawn_blocking(ProcessStats::read).await {
        Ok(process) => Some(process),
        Err(e) => {
            tracing::warn!("reading /proc for /metrics: {e}");
            None
        }
    };
    let read_proc = started.elapsed() - gathered;
    let text = exposition::render(Report { stats, process, names: NAMES })
        .map_err(|_| "the metrics could not be written".to_string())?;
    tracing::debug!(
        gather_ms = gathered.as_secs_f64() * 1e3,
        proc_ms = read_proc.as_secs_f64() * 1e3,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        bytes = text.len(),
        "rendered /metrics"
    );
    Ok(text)
}
