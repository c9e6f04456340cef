//! Stopping and starting the app's containers, restart policies while it is down, and commands
//! run inside a running container (hooks). A start retries while dockerd restarts.
//!
//! Where it sits: Inside `docker`, an adapter: uses `app` for the containers it stops and starts.

use super::{App, engine_unreachable};
use anyhow::{Result, anyhow};
use bollard::Docker;
use bollard::query_parameters::{StartContainerOptions, StopContainerOptions};
use futures::StreamExt;
use std::time::Duration;

/// Docker's own grace period between SIGTERM and SIGKILL, for a container that sets none.
pub const DEFAULT_STOP_TIMEOUT: u32 = 10;

/// The containers lifeboat stopped, in start order, with each one's dependency level
/// ([`App::levels`]): exactly what it must start again, and in which groups.
#[derive(Debug, Default)]
pub struct Stopped {
    pub containers: Vec<(String, String)>,
    /// Aligned with `containers`; a container of an unknown level starts alone, last.
    pub levels: Vec<usize>,
}

impl Stopped {
    /// The containers' indices by level, lowest first: the groups that start together.
    fn groups(&self) -> Vec<Vec<usize>> {
        let mut by_level: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, _) in self.containers.iter().enumerate() {
            let level = self.levels.get(i).copied().unwrap_or(usize::MAX - i);
            by_level.entry(level).or_default().push(i);
        }
        by_level.into_values().collect()
    }
}

/// Stops the running containers of `app` like `docker compose stop`: dependents first, one
/// dependency level at a time, the containers of a level together, each with its own stop
/// timeout (`timeout_secs` overrides them all; Docker's 10 s when a container sets none).
/// Returns what it stopped even when a stop failed, so the caller can start those again;
/// after a failed level, no lower level is stopped.
pub async fn stop_running(
    docker: &Docker,
    app: &App,
    timeout_secs: Option<u32>,
) -> (Stopped, Result<()>) {
    let levels = app.levels();
    let mut stopped: Vec<usize> = Vec::new();
    let mut failures = Vec::new();
    for level in (0..=levels.iter().copied().max().unwrap_or(0)).rev() {
        let batch: Vec<usize> = (0..app.containers.len())
            .filter(|&i| levels[i] == level && app.containers[i].running)
            .collect();
        let results = futures::future::join_all(
            batch
                .iter()
                .map(|&i| stop_one(docker, &app.containers[i], timeout_secs)),
        )
        .await;
        for (&i, result) in batch.iter().zip(results) {
            // A container whose stop failed may have stopped anyway: starting it is still right.
            stopped.push(i);
            if let Err(e) = result {
                failures.push(e);
            }
        }
        if !failures.is_empty() {
            break;
        }
    }
    stopped.sort_unstable();
    let result = if failures.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("{}", failures.join("; ")))
    };
    (
        Stopped {
            containers: stopped
                .iter()
                .map(|&i| {
                    let c = &app.containers[i];
                    (c.id.clone(), c.name.clone())
                })
                .collect(),
            levels: stopped.iter().map(|&i| levels[i]).collect(),
        },
        result,
    )
}

/// Stops one container with its timeout; warns when it had to be killed.
async fn stop_one(
    docker: &Docker,
    container: &super::AppContainer,
    timeout_secs: Option<u32>,
) -> Result<(), String> {
    let timeout = timeout_secs
        .or(container.stop_timeout)
        .unwrap_or(DEFAULT_STOP_TIMEOUT);
    tracing::info!(container = %container.name, timeout_s = timeout, "stopping");
    let options = StopContainerOptions {
        t: Some(timeout as i32),
        ..Default::default()
    };
    let asked = std::time::Instant::now();
    docker
        .stop_container(&container.id, Some(options))
        .await
        .map_err(|e| format!("cannot stop container {}: {e}", container.name))?;
    if asked.elapsed() >= Duration::from_secs(timeout.into()) {
        tracing::warn!(container = %container.name,
            "did not stop within {timeout} s of SIGTERM and was killed; give it longer with stop_grace_period in the compose file, or --stop-timeout, if it needs longer to shut down cleanly");
    }
    Ok(())
}

/// Starts the stopped containers, one dependency level at a time, the containers of a level
/// together. Tries every one; the error names each that failed.
pub async fn start_again(docker: &Docker, stopped: &Stopped) -> Result<()> {
    let mut failures = Vec::new();
    for group in stopped.groups() {
        let starts = group.iter().map(|&i| {
            let (id, name) = &stopped.containers[i];
            async move {
                tracing::info!(container = %name, "starting");
                start_retrying(docker, id, name)
                    .await
                    .map_err(|e| format!("{name}: {e}"))
            }
        });
        for result in futures::future::join_all(starts).await {
            if let Err(failure) = result {
                failures.push(failure);
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "could not start again: {}; start them by hand (`docker start NAME`) and check `docker logs NAME`",
            failures.join("; ")
        ))
    }
}

/// Runs `argv` in a running container (`docker exec`), waits for it, and returns its exit code
/// and its output lines (stdout and stderr interleaved).
pub async fn exec(
    docker: &Docker,
    container: &str,
    argv: Vec<String>,
    env: Vec<String>,
    user: Option<String>,
) -> Result<(i64, Vec<String>)> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(argv),
                env: Some(env),
                user,
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow!("docker exec in {container}: {e}"))?;
    let mut text = Vec::new();
    if let StartExecResults::Attached { mut output, .. } = docker
        .start_exec(&created.id, None)
        .await
        .map_err(|e| anyhow!("docker exec in {container}: {e}"))?
    {
        while let Some(chunk) = output.next().await {
            let chunk = chunk.map_err(|e| anyhow!("docker exec in {container}: {e}"))?;
            text.extend_from_slice(&chunk.into_bytes());
        }
    }
    let code = docker
        .inspect_exec(&created.id)
        .await
        .map_err(|e| anyhow!("docker exec in {container}: {e}"))?
        .exit_code
        .unwrap_or(-1);
    let lines = String::from_utf8_lossy(&text)
        .lines()
        .map(str::to_string)
        .collect();
    Ok((code, lines))
}

/// How long a start keeps retrying while the Docker engine does not answer (restarting).
const ENGINE_RETURN_WAIT: Duration = Duration::from_secs(120);

/// Starts one container; while the engine cannot be reached (dockerd restarting), retries for
/// up to [`ENGINE_RETURN_WAIT`]. An answer from the engine (even an error) is final.
async fn start_retrying(
    docker: &Docker,
    id: &str,
    name: &str,
) -> Result<(), bollard::errors::Error> {
    let deadline = std::time::Instant::now() + ENGINE_RETURN_WAIT;
    let mut delay = Duration::from_millis(250);
    loop {
        match docker
            .start_container(id, None::<StartContainerOptions>)
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) if engine_unreachable(&e) && std::time::Instant::now() < deadline => {
                tracing::warn!(container = %name, "the Docker engine does not answer ({e}); retrying the start");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether dockerd may start this container by itself when it restarts, even though it was
/// stopped: `always`, and `on-failure` (a container stopped by a signal exited non-zero).
pub fn restarts_with_the_engine(policy: Option<&bollard::models::RestartPolicy>) -> bool {
    use bollard::models::RestartPolicyNameEnum::{ALWAYS, ON_FAILURE};
    matches!(policy.and_then(|p| p.name), Some(ALWAYS | ON_FAILURE))
}

/// Sets a container's restart policy (`docker update --restart`).
pub async fn set_restart_policy(
    docker: &Docker,
    id: &str,
    policy: bollard::models::RestartPolicy,
) -> Result<()> {
    let body = bollard::models::ContainerUpdateBody {
        restart_policy: Some(policy),
        ..Default::default()
    };
    docker
        .update_container(id, body)
        .await
        .map_err(|e| anyhow!("cannot change the restart policy of container {id}: {e}"))
}
