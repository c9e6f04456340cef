//! The app's downtime window, the one place that stops and restarts the app: record what is
//! about to be stopped (no record, no stop), stop the running containers, run the work, start
//! again exactly what was stopped, and clear the record once the app runs again.
//!
//! [`while_stopped`] is the whole window for work that may always be followed by a restart
//! (a backup: the volumes are only read). A restore opens a [`Downtime`] itself, because a
//! failure after it began replacing volumes must leave the app stopped ([`Downtime::keep`]).
//! [`recover`] ends the downtime a killed run left behind: every backup and restore calls it
//! first, and it starts the containers that run stopped, saying so.
//!
//! The hooks stay with the operations: each has its own events around this window.
//!
//! Where it sits: Above `docker` and `state`, below the operations that bracket their work
//! with it.

use crate::docker::{self, App, Stopped};
use crate::state::{Record, StoppedRecord};
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

/// The app stopped, with the record that says so.
pub struct Downtime {
    record: Record,
    stopped: Stopped,
    started: Instant,
}

impl Downtime {
    /// Writes the record, then stops the running containers of `app`, dependents first. The
    /// error of a failed stop comes with the window, so that what did stop is started again.
    pub async fn begin(
        docker: &Docker,
        app: &App,
        app_name: &str,
        operation: &str,
        stop_timeout_secs: Option<u32>,
    ) -> Result<(Downtime, Result<()>)> {
        let to_stop = app
            .containers
            .iter()
            .filter(|c| c.running)
            .map(|c| (c.id.clone(), c.name.clone()))
            .collect();
        let record = crate::state::write(&crate::state::state_dir(), app_name, operation, to_stop)?;
        Ok(Self::stop(docker, app, record, stop_timeout_secs).await)
    }

    /// Goes on from a record an earlier run left (a restore being finished or rolled back):
    /// the containers it stopped are still to be started, and whatever runs now is stopped too.
    pub async fn resume(
        docker: &Docker,
        app: &App,
        mut record: Record,
        stop_timeout_secs: Option<u32>,
    ) -> Result<(Downtime, Result<()>)> {
        let running: Vec<(String, String)> = app
            .containers
            .iter()
            .filter(|c| c.running)
            .map(|c| (c.id.clone(), c.name.clone()))
            .collect();
        record.update(|r| {
            for container in running {
                if !r.containers.contains(&container) {
                    r.containers.push(container);
                }
            }
        })?;
        Ok(Self::stop(docker, app, record, stop_timeout_secs).await)
    }

    async fn stop(
        docker: &Docker,
        app: &App,
        record: Record,
        stop_timeout_secs: Option<u32>,
    ) -> (Downtime, Result<()>) {
        let started = Instant::now();
        let (mut stopped, result) = docker::stop_running(docker, app, stop_timeout_secs).await;
        // What the record lists is what gets started, in the app's start order.
        let order = |id: &str| app.containers.iter().position(|c| c.id == id);
        let mut all = record.get().containers.clone();
        all.sort_by_key(|(id, _)| order(id).unwrap_or(usize::MAX));
        let levels = app.levels();
        stopped.levels = all
            .iter()
            .enumerate()
            .map(|(i, (id, _))| order(id).map_or(usize::MAX - i, |at| levels[at]))
            .collect();
        stopped.containers = all;
        (
            Downtime {
                record,
                stopped,
                started,
            },
            result,
        )
    }

    pub fn record(&self) -> &StoppedRecord {
        self.record.get()
    }

    /// Changes the record and writes it before returning.
    pub fn update(&mut self, change: impl FnOnce(&mut StoppedRecord)) -> Result<()> {
        self.record.update(change)
    }

    /// Starts again what was stopped, in start order; clears the record once all run.
    pub async fn end(self, docker: &Docker) -> (Result<()>, Duration) {
        let restarted = docker::start_again(docker, &self.stopped).await;
        let downtime = self.started.elapsed();
        if restarted.is_ok() {
            self.record.clear();
        }
        (restarted, downtime)
    }

    /// Leaves the app stopped and the record in place, for the next run to refuse to run over.
    pub fn keep(self) -> Duration {
        let downtime = self.started.elapsed();
        self.record.keep();
        downtime
    }
}

/// Stops the running containers of `app`, runs `work` as its own task (so that a panic in it
/// is still followed by the restart), and starts them again — after success, error, panic or
/// cancellation.
pub async fn while_stopped<T, F>(
    docker: &Docker,
    app: &App,
    app_name: &str,
    operation: &str,
    stop_timeout_secs: Option<u32>,
    cancel: &CancellationToken,
    work: F,
) -> Result<Window<T>>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let (downtime, stop_result) =
        Downtime::begin(docker, app, app_name, operation, stop_timeout_secs).await?;
    let outcome = match stop_result {
        Ok(()) if cancel.is_cancelled() => Err(crate::error::interrupted()),
        Ok(()) => match tokio::spawn(work).await {
            Ok(result) => result,
            Err(join_error) => Err(anyhow!("the {operation} task failed: {join_error}")),
        },
        Err(stop_error) => Err(stop_error),
    };
    let (restarted, downtime) = downtime.end(docker).await;
    Ok(Window {
        outcome,
        restarted,
        downtime,
    })
}

/// Starts again the containers an interrupted earlier run left stopped. Returns the names it
/// started. A restore that did not finish replacing volumes is refused instead
/// ([`crate::state::IncompleteRestore`]); one interrupted while it only made safety copies has changed no
/// volume, so its app is started and its partial copies are removed. The caller holds the
/// app's [`crate::state::Claim`], so whoever wrote the record is gone.
pub async fn recover(docker: &Docker, dir: &std::path::Path, app: &str) -> Result<Vec<String>> {
    let path = crate::state::record_path(dir, app);
    let record = match crate::state::read(dir, app) {
        Ok(Some(record)) => record,
        Ok(None) => return Ok(vec![]),
        Err(e) => {
            tracing::warn!("ignoring the unreadable record {}: {e:#}", path.display());
            let _ = std::fs::remove_file(&path);
            return Ok(vec![]);
        }
    };
    if record.pid == std::process::id() {
        return Ok(vec![]);
    }
    if let Some(restore) = &record.restore {
        if restore.replacing {
            return Err(crate::state::IncompleteRestore {
                app: app.to_string(),
                record,
            }
            .into());
        }
        for copy in restore
            .targets
            .iter()
            .filter_map(|t| t.safety_copy.as_deref())
        {
            if let Err(e) = crate::docker::remove_volume(docker, copy).await {
                tracing::warn!("could not remove the partial safety copy {copy}: {e:#}");
            }
        }
    }
    let mut started = Vec::new();
    let mut failed = Vec::new();
    for (id, name) in &record.containers {
        let running = docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.running);
        if running == Some(false) {
            // One container that cannot start must not keep every later backup from running:
            // it is reported, and the operator starts it once its problem is fixed.
            match docker
                .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
                .await
            {
                Ok(()) => started.push(name.clone()),
                Err(e) => failed.push(format!("{name} ({e})")),
            }
        }
    }
    if !failed.is_empty() {
        tracing::error!(
            "containers an earlier lifeboat run left stopped still cannot start: {}; fix them and `docker start` them by hand",
            failed.join("; ")
        );
    }
    tracing::warn!(
        "an earlier lifeboat {} of {} (pid {}, since {}) ended without starting the app again; started again: {}",
        record.operation,
        record.app,
        record.pid,
        record.since,
        if started.is_empty() {
            "none needed it".to_string()
        } else {
            started.join(", ")
        }
    );
    let _ = std::fs::remove_file(&path);
    Ok(started)
}
