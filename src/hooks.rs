//! Hooks: the operator's commands around a backup, around each volume, and around a restore —
//! on the host, or inside a container through `docker exec` (a database dump, GitLab's
//! `gitlab-backup create`).
//!
//! Configured as `[[hook]]` tables in the config file. A `before-*` hook that fails (non-zero
//! exit, timeout, or cannot start) aborts what it precedes: a failing `before-backup` hook
//! leaves the app running and untouched, a failing `before-volume` hook fails the backup (and
//! the app is started again as always). `after-*` hooks run on failure too, with the outcome in
//! their environment; their own failure is reported but never turns stored data into a failed
//! backup. Every hook has a timeout; a host command that overruns is killed with its whole
//! process group.
//!
//! Where it sits: An adapter beside `docker` (it runs `docker exec` through it); operations call
//! it.

use crate::docker::App;
use anyhow::{Result, anyhow};
use bollard::Docker;
use serde::Deserialize;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookEvent {
    /// Before anything is stopped; failure: no backup, the app keeps running.
    BeforeBackup,
    /// After the backup, whatever its outcome, once the app runs again.
    AfterBackup,
    /// Before each volume is read (the app is stopped).
    BeforeVolume,
    /// After each volume, whatever its outcome (the app is still stopped).
    AfterVolume,
    /// After verification, before the app is stopped for a restore.
    BeforeRestore,
    /// After a restore, whatever its outcome, once the app runs again.
    AfterRestore,
}

impl HookEvent {
    pub fn name(self) -> &'static str {
        match self {
            Self::BeforeBackup => "before-backup",
            Self::AfterBackup => "after-backup",
            Self::BeforeVolume => "before-volume",
            Self::AfterVolume => "after-volume",
            Self::BeforeRestore => "before-restore",
            Self::AfterRestore => "after-restore",
        }
    }

    fn is_after(self) -> bool {
        matches!(
            self,
            Self::AfterBackup | Self::AfterVolume | Self::AfterRestore
        )
    }
}

/// A command: a string runs through `sh -c`, a list runs as is.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum HookCommand {
    Shell(String),
    Argv(Vec<String>),
}

impl HookCommand {
    fn argv(&self) -> Vec<String> {
        match self {
            Self::Shell(script) => vec!["sh".into(), "-c".into(), script.clone()],
            Self::Argv(argv) => argv.clone(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Shell(script) => script.clone(),
            Self::Argv(argv) => argv.join(" "),
        }
    }
}

/// One `[[hook]]` table of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// before-backup, after-backup, before-volume, after-volume, before-restore, after-restore
    pub on: HookEvent,
    pub command: HookCommand,
    /// Run inside this container (a service of the app, or any container's name) with
    /// `docker exec`; it must be running at that moment. Default: on the host.
    pub container: Option<String>,
    /// `docker exec --user`.
    pub user: Option<String>,
    /// For volume hooks: only around this volume (full or compose name).
    pub volume: Option<String>,
    /// How long the hook may run (`30s`, `10m`, `1h`) [default: 5m].
    pub timeout: Option<String>,
}

/// A validated hook.
#[derive(Debug, Clone)]
struct Hook {
    on: HookEvent,
    command: HookCommand,
    container: Option<String>,
    user: Option<String>,
    volume: Option<String>,
    timeout: Duration,
}

/// What a hook is told through its environment (`LIFEBOAT_*`).
#[derive(Debug, Clone, Default)]
pub struct HookContext {
    pub app: String,
    pub backup_id: String,
    /// Full volume name, for volume hooks.
    pub volume: Option<String>,
    /// The compose name of the volume, when it has one.
    pub compose_volume: Option<String>,
    /// For after-hooks: `None` success, `Some(error)` failure.
    pub failure: Option<Option<String>>,
}

impl HookContext {
    fn env(&self, event: HookEvent) -> Vec<(String, String)> {
        let mut env = vec![
            ("LIFEBOAT_EVENT".to_string(), event.name().to_string()),
            ("LIFEBOAT_APP".into(), self.app.clone()),
            ("LIFEBOAT_BACKUP_ID".into(), self.backup_id.clone()),
        ];
        if let Some(volume) = &self.volume {
            env.push(("LIFEBOAT_VOLUME".into(), volume.clone()));
        }
        if let Some(failure) = &self.failure {
            let outcome = if failure.is_some() {
                "failure"
            } else {
                "success"
            };
            env.push(("LIFEBOAT_OUTCOME".into(), outcome.into()));
            if let Some(error) = failure {
                env.push(("LIFEBOAT_ERROR".into(), error.clone()));
            }
        }
        env
    }
}

/// The configured hooks.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    hooks: Vec<Hook>,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Output lines kept for the error message of a failed hook.
const TAIL_LINES: usize = 20;

impl Hooks {
    pub fn from_config(configs: &[HookConfig]) -> Result<Self> {
        let mut hooks = Vec::with_capacity(configs.len());
        for (index, config) in configs.iter().enumerate() {
            let what = format!("[[hook]] #{} ({})", index + 1, config.on.name());
            if config.command.argv().first().is_none_or(|c| c.is_empty()) {
                return Err(crate::error::usage(format!("{what}: command is empty")));
            }
            if config.volume.is_some()
                && !matches!(config.on, HookEvent::BeforeVolume | HookEvent::AfterVolume)
            {
                return Err(crate::error::usage(format!(
                    "{what}: `volume` only applies to before-volume and after-volume hooks"
                )));
            }
            if config.user.is_some() && config.container.is_none() {
                return Err(crate::error::usage(format!(
                    "{what}: `user` only applies to hooks run in a container; add `container`"
                )));
            }
            let timeout = match &config.timeout {
                None => DEFAULT_TIMEOUT,
                Some(text) => humantime::parse_duration(text)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        crate::error::usage(format!(
                            "{what}: timeout '{text}' is not a duration like 30s, 10m or 1h"
                        ))
                    })?,
            };
            hooks.push(Hook {
                on: config.on,
                command: config.command.clone(),
                container: config.container.clone(),
                user: config.user.clone(),
                volume: config.volume.clone(),
                timeout,
            });
        }
        Ok(Self { hooks })
    }

    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// Runs the hooks for `event` in the order configured. Before-hooks stop at the first
    /// failure and return it; after-hooks all run and their failures are returned together.
    pub async fn run(
        &self,
        docker: &Docker,
        app: Option<&App>,
        event: HookEvent,
        context: &HookContext,
    ) -> Result<()> {
        let mut failures = Vec::new();
        for hook in self.hooks.iter().filter(|h| h.on == event) {
            if let (Some(wanted), Some(volume)) = (&hook.volume, &context.volume)
                && wanted != volume
                && Some(wanted) != context.compose_volume.as_ref()
            {
                continue;
            }
            let result = run_one(docker, app, hook, context).await;
            if let Err(error) = result {
                if !event.is_after() {
                    return Err(error);
                }
                tracing::error!("{error:#}");
                failures.push(format!("{error:#}"));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(failures.join("; ")))
        }
    }
}

async fn run_one(
    docker: &Docker,
    app: Option<&App>,
    hook: &Hook,
    context: &HookContext,
) -> Result<()> {
    let place = match &hook.container {
        Some(container) => format!(" in container {container}"),
        None => " on the host".to_string(),
    };
    let what = format!(
        "{} hook `{}`{place}",
        hook.on.name(),
        hook.command.describe()
    );
    tracing::info!("running the {what}");
    let env = context.env(hook.on);
    let ran = match &hook.container {
        None => tokio::time::timeout(hook.timeout, run_on_host(hook, &env)).await,
        Some(container) => {
            // A service of the app by its compose name, else any container Docker knows.
            let target = app
                .and_then(|a| a.by_key(container))
                .map_or(container.as_str(), |c| c.id.as_str());
            tokio::time::timeout(
                hook.timeout,
                run_in_container(docker, target, container, hook, &env),
            )
            .await
        }
    };
    match ran {
        Err(_elapsed) => Err(anyhow!(
            "the {what} did not finish within its timeout of {}s{}; raise `timeout` in its [[hook]] table or make it faster",
            hook.timeout.as_secs(),
            if hook.container.is_some() {
                " (it may still be running inside the container: Docker cannot stop an exec)"
            } else {
                " and was killed"
            }
        )),
        Ok(Err(error)) => Err(error.context(format!("the {what} could not run"))),
        Ok(Ok((0, _))) => Ok(()),
        Ok(Ok((code, tail))) => {
            let tail: Vec<String> = tail.into_iter().collect();
            Err(anyhow!(
                "the {what} failed with exit code {code}{}",
                if tail.is_empty() {
                    String::new()
                } else {
                    format!("; its last output:\n{}", tail.join("\n"))
                }
            ))
        }
    }
}

/// The variables a host hook inherits from lifeboat: where to find programs and Docker, the
/// user, the locale; nothing else.
fn inherited_env() -> Vec<(String, String)> {
    const KEEP: &[&str] = &[
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TERM",
        "TMPDIR",
        "DOCKER_HOST",
        "DOCKER_CONFIG",
        "DOCKER_CONTEXT",
        "XDG_RUNTIME_DIR",
    ];
    std::env::vars()
        .filter(|(name, _)| KEEP.contains(&name.as_str()) || name.starts_with("LC_"))
        .collect()
}

/// Logs each output line and keeps the last few (each cut to a few hundred bytes).
async fn collect_lines(
    output: impl AsyncRead + Unpin,
    tail: std::sync::Arc<std::sync::Mutex<VecDeque<String>>>,
) {
    let mut lines = BufReader::new(output).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "hook", "{line}");
        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(crate::text::bounded(&line, 300));
    }
}

/// Kills the hook's whole process group when the hook is dropped (by its timeout).
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) with a negative pid signals the process group the child leads;
            // it touches no memory.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
    }
}

async fn run_on_host(hook: &Hook, env: &[(String, String)]) -> Result<(i64, VecDeque<String>)> {
    let argv = hook.command.argv();
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        // Only what a hook needs: never lifeboat's credentials and secrets (nor those a
        // `*_FILE` variable loaded).
        .env_clear()
        .envs(inherited_env())
        .envs(env.iter().cloned())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow!("cannot start {}: {e}", argv[0]))?;
    let mut guard = KillGroupOnDrop(child.id());
    let tail = std::sync::Arc::new(std::sync::Mutex::new(VecDeque::new()));
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (status, (), ()) = tokio::join!(
        child.wait(),
        collect_lines(stdout, tail.clone()),
        collect_lines(stderr, tail.clone())
    );
    let status = status?;
    guard.0 = None;
    let code = status
        .code()
        .map_or_else(|| 128 + status_signal(&status), i64::from);
    let tail = std::mem::take(&mut *tail.lock().unwrap_or_else(|p| p.into_inner()));
    Ok((code, tail))
}

fn status_signal(status: &std::process::ExitStatus) -> i64 {
    use std::os::unix::process::ExitStatusExt;
    status.signal().map_or(0, i64::from)
}

async fn run_in_container(
    docker: &Docker,
    target: &str,
    name: &str,
    hook: &Hook,
    env: &[(String, String)],
) -> Result<(i64, VecDeque<String>)> {
    let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let (code, lines) =
        crate::docker::exec(docker, target, hook.command.argv(), env, hook.user.clone())
            .await
            .map_err(|e| {
                e.context(format!(
                    "is container {name} running? (during volume hooks the app is stopped)"
                ))
            })?;
    let mut tail = VecDeque::new();
    for line in lines {
        tracing::info!(target: "hook", "{line}");
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(crate::text::bounded(&line, 300));
    }
    Ok((code, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(toml_text: &str) -> Result<Hooks> {
        #[derive(Deserialize)]
        struct File {
            hook: Vec<HookConfig>,
        }
        let file: File = toml::from_str(toml_text)?;
        Hooks::from_config(&file.hook)
    }

    fn docker() -> Docker {
        // Never contacted by host hooks.
        Docker::connect_with_http("http://127.0.0.1:9", 1, bollard::API_DEFAULT_VERSION).unwrap()
    }

    #[tokio::test]
    async fn before_hooks_stop_at_the_first_failure_and_after_hooks_get_the_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let hooks = hooks(&format!(
            r#"
            [[hook]]
            on = "before-backup"
            command = "echo one >> {log}; echo oops >&2; exit 3"
            [[hook]]
            on = "before-backup"
            command = "echo two >> {log}"
            [[hook]]
            on = "after-backup"
            command = ["sh", "-c", "echo $LIFEBOAT_OUTCOME:$LIFEBOAT_ERROR >> {log}"]
            "#,
            log = log.display()
        ))
        .unwrap();
        let context = HookContext {
            app: "app".into(),
            backup_id: "id".into(),
            ..Default::default()
        };
        let err = hooks
            .run(&docker(), None, HookEvent::BeforeBackup, &context)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("exit code 3") && err.contains("oops"), "{err}");
        let after = HookContext {
            failure: Some(Some("it broke".into())),
            ..context
        };
        hooks
            .run(&docker(), None, HookEvent::AfterBackup, &after)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "one\nfailure:it broke\n"
        );
    }

    #[tokio::test]
    async fn a_hook_that_overruns_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        let hooks = hooks(&format!(
            "[[hook]]\non = \"before-backup\"\ntimeout = \"1s\"\ncommand = \"(sleep 3; touch {}) & wait\"\n",
            marker.display()
        ))
        .unwrap();
        let err = hooks
            .run(
                &docker(),
                None,
                HookEvent::BeforeBackup,
                &HookContext::default(),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("timeout of 1s"), "{err}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!marker.exists(), "the hook's child survived the timeout");
    }

    #[test]
    fn bad_hook_tables_are_usage_errors() {
        let err = hooks("[[hook]]\non = \"before-backup\"\ncommand = \"x\"\ntimeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("timeout 'soon'"), "{err}");
        let err = hooks("[[hook]]\non = \"before-backup\"\ncommand = \"x\"\nvolume = \"v\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("only applies"), "{err}");
        assert!(hooks("[[hook]]\non = \"before-lunch\"\ncommand = \"x\"\n").is_err());
    }
}
