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

/// The containers lifeboat stopped, in start order: exactly what it must start again.
#[derive(Debug, Default)]
pub struct Stopped {
    pub containers: Vec<(String, String)>,
}

/// Stops the running containers of `app`, dependents first. Returns what it stopped even when
/// a stop failed, so the caller can start those again.
pub async fn stop_running(docker: &Docker, app: &App, timeout_secs: u32) -> (Stopped, Result<()>) {
    let mut stopped = Vec::new();
    for container in app.containers.iter().rev().filter(|c| c.running) {
        tracing::info!(container = %container.name, "stopping");
        let options = StopContainerOptions {
            t: Some(timeout_secs as i32),
            ..Default::default()
        };
        let asked = std::time::Instant::now();
        match docker.stop_container(&container.id, Some(options)).await {
            Ok(()) => {
                if asked.elapsed() >= Duration::from_secs(timeout_secs.into()) {
                    tracing::warn!(container = %container.name,
                        "did not stop within {timeout_secs} s of SIGTERM and was killed; raise --stop-timeout if it needs longer to shut down cleanly");
                }
                stopped.push((container.id.clone(), container.name.clone()))
            }
            Err(e) => {
                // It may have stopped anyway; starting it again later is then still right.
                stopped.push((container.id.clone(), container.name.clone()));
                stopped.reverse();
                return (
                    Stopped {
                        containers: stopped,
                    },
                    Err(anyhow!("cannot stop container {}: {e}", container.name)),
                );
            }
        }
    }
    stopped.reverse();
    (
        Stopped {
            containers: stopped,
        },
        Ok(()),
    )
}

/// Starts the stopped containers in start order. Tries every one; the error names each that
/// failed.
pub async fn start_again(docker: &Docker, stopped: &Stopped) -> Result<()> {
    let mut failures = Vec::new();
    for (id, name) in &stopped.containers {
        tracing::info!(container = %name, "starting");
        if let Err(e) = start_retrying(docker, id, name).await {
            failures.push(format!("{name}: {e}"));
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
