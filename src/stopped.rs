//! The app's downtime window, the one place that guarantees the restart: record what is about
//! to be stopped (no record, no stop), stop the running containers, run the work as its own
//! task (so a panic in it is still followed by the restart), start again exactly what was
//! stopped — after success, error, panic or cancellation — and clear the record once the app
//! runs again.

use crate::docker::{self, App};
use anyhow::{Result, anyhow};
use bollard::Docker;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How the window went.
pub struct Window<T> {
    /// The work's result (or why it did not run).
    pub outcome: Result<T>,
    /// Starting the stopped containers again.
    pub restarted: Result<()>,
    /// From the first stop request to the last start.
    pub downtime: Duration,
}

/// Stops the running containers of `app`, runs `work`, and starts them again.
pub async fn while_stopped<T, F>(
    docker: &Docker,
    app: &App,
    app_name: &str,
    operation: &str,
    stop_timeout_secs: u32,
    cancel: &CancellationToken,
    work: F,
) -> Result<Window<T>>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let to_stop = app
        .containers
        .iter()
        .filter(|c| c.running)
        .map(|c| (c.id.clone(), c.name.clone()))
        .collect();
    let record = crate::state::write(&crate::state::state_dir(), app_name, operation, to_stop)?;
    let started = Instant::now();
    let (stopped, stop_result) = docker::stop_running(docker, app, stop_timeout_secs).await;
    let outcome = match stop_result {
        Ok(()) if cancel.is_cancelled() => Err(crate::error::interrupted()),
        Ok(()) => match tokio::spawn(work).await {
            Ok(result) => result,
            Err(join_error) => Err(anyhow!("the {operation} task failed: {join_error}")),
        },
        Err(stop_error) => Err(stop_error),
    };
    let restarted = docker::start_again(docker, &stopped).await;
    let downtime = started.elapsed();
    if restarted.is_ok() {
        record.clear();
    }
    Ok(Window {
        outcome,
        restarted,
        downtime,
    })
}
