//! Test harness: real Docker, a real S3 server (s3s-fs) per test on 127.0.0.1, and the built
//! `lifeboat` binary. `.ci/test` installs and starts what is missing; a missing engine or server
//! fails the test with a message saying so — nothing is skipped.
//!
//! [`app`] is the app under test and the test images, [`s3`] and [`azurite`] the stores; this
//! file runs the binary and holds what every test shares (keys, listing, restoring). The TCP
//! fault proxy lives in `proxy.rs`, compiled only into the tests that need it.

#![allow(dead_code)]

mod app;
mod azurite;
mod s3;

pub use app::*;
pub use azurite::*;
pub use s3::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

std::thread_local! {
    /// The backup key [`keygen`] last made on this test's thread.
    static BACKUP_KEY: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

/// The lifeboat binary with a clean environment for the store. Like a backup host, which finds
/// its backup key in the default place, every command of a test finds the backup key the
/// test's last [`keygen`] made (`LIFEBOAT_BACKUP_KEY_FILE`); the caller's own keys and config
/// directory are never seen.
pub fn lifeboat() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    for var in [
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "XDG_DATA_HOME",
        "XDG_STATE_HOME",
        "LIFEBOAT_CONFIG",
        "LIFEBOAT_STORE",
        "LIFEBOAT_BACKUP_KEY_FILE",
        "LIFEBOAT_IDENTITY_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("AWS_EC2_METADATA_DISABLED", "true");
    cmd.env("XDG_CONFIG_HOME", "/nonexistent/lifeboat-tests-config");
    // Nothing of the caller's home (an AWS profile, a default store or backup key) leaks in.
    cmd.env("HOME", test_home());
    if let Some(key) = BACKUP_KEY.with(|k| k.borrow().clone()) {
        cmd.env("LIFEBOAT_BACKUP_KEY_FILE", key);
    }
    cmd
}

/// A home directory of this test process's own, empty at first.
fn test_home() -> &'static std::path::Path {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    HOME.get_or_init(|| tempfile::tempdir().expect("a temporary home"))
        .path()
}

/// Runs a command, returning its output; prints it when the test fails later.
pub fn run(cmd: &mut Command) -> Output {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    eprintln!(
        "$ {cmd:?}\n-> {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `docker ARGS`, panicking with its stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI is installed (.ci/test installs docker.io)");
    assert!(
        output.status.success(),
        "docker {args:?} failed: {}",
        stderr(&output)
    );
    stdout(&output).trim().to_string()
}

/// A fresh owner key in `dir` and its backup key, which this test's later commands use:
/// (owner key file, the owner's recipient).
pub fn keygen(dir: &Path) -> (PathBuf, String) {
    let suffix = rand_suffix();
    let key = dir.join(format!("key-{suffix}.txt"));
    // The backup key outlives `dir`, which some tests drop at once (they need no owner key).
    let backup_key = keys_dir().join(format!("backup-{suffix}.key"));
    let output = run(lifeboat()
        .args(["keygen", "--output"])
        .arg(&key)
        .arg("--backup-key-output")
        .arg(&backup_key));
    assert!(output.status.success());
    BACKUP_KEY.with(|k| *k.borrow_mut() = Some(backup_key));
    let recipient = stderr(&output)
        .lines()
        .find(|l| l.starts_with("age1"))
        .expect("keygen prints the recipient")
        .to_string();
    (key, recipient)
}

/// A folder for the test binary's backup keys, removed when it exits.
fn keys_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// Another owner key in `dir`, whose backup key this test does not use (a wrong key).
pub fn other_owner_key(dir: &Path) -> PathBuf {
    let suffix = rand_suffix();
    let key = dir.join(format!("other-key-{suffix}.txt"));
    let output = run(lifeboat()
        .args(["keygen", "--output"])
        .arg(&key)
        .arg("--backup-key-output")
        .arg(dir.join(format!("other-backup-{suffix}.key"))));
    assert!(output.status.success());
    key
}

/// The backup key this test's last [`keygen`] made.
pub fn backup_key() -> PathBuf {
    BACKUP_KEY
        .with(|k| k.borrow().clone())
        .expect("keygen() ran first")
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A config file (mode 600) naming the store, the app, the backup key and the recipient, plus
/// `extra` (hooks, notifications).
pub fn config(
    dir: &Path,
    store: &str,
    project: &str,
    recipient: &str,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join(format!(
        "lifeboat-{}.toml",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::write(
        &path,
        format!(
            "[store]\nurl = \"{store}\"\n[app]\nproject = \"{project}\"\n[backup]\nbackup_key = \"{}\"\nrecipients = [\"{recipient}\"]\n{extra}",
            backup_key().display()
        ),
    )
    .unwrap();
    // It may hold a webhook URL: a secret, refused when others may read it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The manifests `lifeboat list --json` shows.
pub fn list_json(s3: &S3Server, store: &str) -> Vec<serde_json::Value> {
    let output = run(s3
        .env(&mut lifeboat())
        .args(["list", "--json", "--store", store]));
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The newest backup's manifest as `lifeboat show --json` shows it: a deduplicated volume's
/// chunks included, read from its list objects (format 5).
pub fn show_json(s3: &S3Server, store: &str, project: &str) -> serde_json::Value {
    let output = run(s3
        .env(&mut lifeboat())
        .args(["show", "--json", "--store", store, "-p", project]));
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Every backend that runs here, behind one interface for the parameterized suite.
pub enum Backend {
    S3(S3Server),
    Azure(AzuriteServer),
    Folder(tempfile::TempDir),
}

impl Backend {
    pub fn all() -> Vec<Backend> {
        vec![
            Backend::S3(S3Server::start()),
            Backend::Azure(AzuriteServer::start()),
            Backend::Folder(tempfile::tempdir().unwrap()),
        ]
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::S3(_) => "s3",
            Backend::Azure(_) => "azure",
            Backend::Folder(_) => "file",
        }
    }

    /// A fresh store URL (bucket, container or folder).
    pub fn store(&self, name: &str) -> String {
        match self {
            Backend::S3(s3) => s3.bucket(name),
            Backend::Azure(az) => az.container(name),
            Backend::Folder(dir) => format!("file://{}/{name}", dir.path().display()),
        }
    }

    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        match self {
            Backend::S3(s3) => s3.env(cmd),
            Backend::Azure(az) => az.env(cmd),
            Backend::Folder(_) => cmd,
        }
    }

    pub fn list(&self, store: &str) -> Vec<serde_json::Value> {
        let output = run(self
            .env(&mut lifeboat())
            .args(["list", "--json", "--store", store]));
        assert!(output.status.success());
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

/// Starts `cmd` (a backup to `s3`) and returns once its first multipart upload is open.
pub fn spawn_until_uploading(s3: &S3Server, cmd: &mut Command) -> Child {
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s3.open_uploads().is_empty() {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("the upload never started: {}", stderr(&output));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Sends signal `name` (`TERM`, `INT`, …) to `child`.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// `lifeboat backup -p PROJECT --store STORE -r RECIPIENT` against `s3`; it must succeed.
/// The arguments of `lifeboat backup -p PROJECT --store STORE -r RECIPIENT`.
pub fn backup_args<'a>(project: &'a str, store: &'a str, recipient: &'a str) -> [&'a str; 7] {
    ["backup", "-p", project, "--store", store, "-r", recipient]
}

pub fn backup_ok(s3: &S3Server, project: &str, store: &str, recipient: &str) {
    let output = run(s3
        .env(&mut lifeboat())
        .args(backup_args(project, store, recipient)));
    assert!(
        output.status.success(),
        "backup failed: {}",
        stderr(&output)
    );
}

/// `lifeboat backup -p PROJECT --store STORE -r RECIPIENT EXTRA…` against `s3`, its output.
pub fn backup_with(
    s3: &S3Server,
    project: &str,
    store: &str,
    recipient: &str,
    extra: &[&str],
) -> Output {
    run(s3
        .env(&mut lifeboat())
        .args(backup_args(project, store, recipient))
        .args(extra))
}

/// `lifeboat COMMAND -p PROJECT --store STORE EXTRA… -i KEY` against `s3` (restore, verify,
/// show, dump), its output.
pub fn with_key(
    s3: &S3Server,
    command: &str,
    project: &str,
    store: &str,
    extra: &[&str],
    key: &Path,
) -> Output {
    run(s3
        .env(&mut lifeboat())
        .args([command, "-p", project, "--store", store])
        .args(extra)
        .arg("-i")
        .arg(key))
}

/// `lifeboat restore -p PROJECT --store STORE -i KEY` against `s3`.
pub fn restore(s3: &S3Server, project: &str, store: &str, key: &Path) -> Output {
    run(s3
        .env(&mut lifeboat())
        .args(["restore", "-p", project, "--store", store, "-i"])
        .arg(key))
}

/// A server process the tests started, once it accepts connections on `port`; a server that
/// is not installed or does not come up fails the test with what to do.
fn listening(spawned: std::io::Result<Child>, name: &str, port: u16) -> Child {
    let mut child = spawned.unwrap_or_else(|e| {
        panic!("cannot start {name} ({e}): run the tests through .ci/test, which installs it")
    });
    // The port was free when it was picked, but another process may have taken it since:
    // wait until the listener on it is this child's own socket, not merely any listener.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !listens_on(child.id(), port) {
        if Instant::now() > deadline || child.try_wait().is_ok_and(|status| status.is_some()) {
            let _ = child.kill();
            panic!("{name} did not listen on 127.0.0.1:{port} (another process holds it?)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Whether process `pid` (or a thread of it) holds the socket listening on TCP `port`: the
/// socket's inode from /proc/net/tcp{,6}, found among the process's file descriptors.
fn listens_on(pid: u32, port: u16) -> bool {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields.get(1)?.rsplit(':').next()?;
                    let listening = *fields.get(3)? == "0A";
                    (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                        .then(|| fields.get(9).map(|inode| inode.to_string()))
                        .flatten()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| {
            inodes
                .iter()
                .any(|inode| target.to_string_lossy() == format!("socket:[{inode}]"))
        })
}
