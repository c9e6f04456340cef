//! What a nightly setup relies on, against real containers and the S3 server: hooks on the host
//! and inside containers, webhook and healthchecks notifications, containers that will not stop
//! or start, and progress bars only on a terminal.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

fn backup_with(s3: &S3Server, config: &Path, args: &[&str]) -> std::process::Output {
    run(s3
        .env(&mut lifeboat())
        .arg("--config")
        .arg(config)
        .arg("backup")
        .args(args))
}

#[test]
fn hooks_run_in_order_on_the_host_and_in_containers() {
    let mut app = TestApp::new("hooksorder");
    let data = app.volume("data");
    app.in_volume(&data, "echo row1 > /v/table");
    let db = app.service("db", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("hooks");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let log = work.path().join("hooks.log");
    let log = log.display();
    let config = config(
        work.path(),
        &store,
        &app.project,
        &recipient,
        &format!(
            r#"
[[hook]]
on = "before-backup"
container = "db"
command = "echo dump-of-$LIFEBOAT_APP > /data/dump.sql"
[[hook]]
on = "before-volume"
volume = "data"
command = "echo before-volume:$LIFEBOAT_VOLUME:$(docker inspect -f '{{{{.State.Running}}}}' {db}) >> {log}"
[[hook]]
on = "after-volume"
command = ["sh", "-c", "echo after-volume:$LIFEBOAT_OUTCOME >> {log}"]
[[hook]]
on = "after-backup"
timeout = "30s"
command = "echo after-backup:$LIFEBOAT_OUTCOME:$LIFEBOAT_BACKUP_ID:$(docker inspect -f '{{{{.State.Running}}}}' {db}) >> {log}"
"#
        ),
    );
    let output = backup_with(&s3, &config, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let id = list_json(&s3, &store)[0]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        std::fs::read_to_string(work.path().join("hooks.log")).unwrap(),
        format!(
            "before-volume:{data}:false\nafter-volume:success\nafter-backup:success:{id}:true\n"
        ),
        "the volume hooks ran while the app was stopped, the after-backup hook once it ran again"
    );

    // The dump the before-backup hook made inside the running container is in the backup.
    app.wipe(&data);
    let output = restore(&s3, &app.project, &store, &key);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        app.in_volume(&data, "cat /v/dump.sql /v/table"),
        format!("dump-of-{}\nrow1", app.project)
    );
}

#[test]
fn a_failing_hook_aborts_with_the_app_running_and_no_backup() {
    let mut app = TestApp::new("hooksfail");
    app.volume("data");
    let db = app.service("db", IMAGE, &[("data", "/data")], &[], true);
    let started_at = || docker(&["inspect", "-f", "{{.State.StartedAt}}", &db]);
    let before = started_at();
    let s3 = S3Server::start();
    let store = s3.bucket("hooksfail");
    let work = tempfile::tempdir().unwrap();
    let (_, recipient) = keygen(work.path());
    let log = work.path().join("after.log");

    // A before-backup hook that fails: nothing is stopped, nothing stored, after-backup told.
    let config_failing_dump = config(
        work.path(),
        &store,
        &app.project,
        &recipient,
        &format!(
            "[[hook]]\non = \"before-backup\"\ncontainer = \"db\"\ncommand = \"echo pg_dump: connection refused >&2; exit 7\"\n[[hook]]\non = \"after-backup\"\ncommand = \"echo $LIFEBOAT_OUTCOME >> {}\"\n",
            log.display()
        ),
    );
    let output = backup_with(&s3, &config_failing_dump, &[]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("before-backup hook")
            && err.contains("exit code 7")
            && err.contains("pg_dump: connection refused")
            && err.contains("nothing was stopped"),
        "{err}"
    );
    assert_eq!(started_at(), before, "the app was never stopped");
    assert!(list_json(&s3, &store).is_empty());
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "failure\n");

    // A hook that overruns its timeout.
    let config_slow = config(
        work.path(),
        &store,
        &app.project,
        &recipient,
        "[[hook]]\non = \"before-backup\"\ntimeout = \"1s\"\ncommand = \"sleep 30\"\n",
    );
    let output = backup_with(&s3, &config_slow, &[]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("timeout of 1s"), "{err}");
    assert_eq!(started_at(), before);

    // A before-volume hook that fails: the backup fails, the app runs again, nothing is left.
    let config_volume = config(
        work.path(),
        &store,
        &app.project,
        &recipient,
        "[[hook]]\non = \"before-volume\"\ncommand = \"exit 4\"\n",
    );
    let output = backup_with(&s3, &config_volume, &[]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("before-volume hook"), "{err}");
    assert!(app.running().values().all(|r| *r), "the app runs again");
    assert!(list_json(&s3, &store).is_empty());
    assert!(s3.open_uploads().is_empty());

    // A hook in a container that is stopped during volume hooks names the problem.
    let config_stopped = config(
        work.path(),
        &store,
        &app.project,
        &recipient,
        "[[hook]]\non = \"before-volume\"\ncontainer = \"db\"\ncommand = \"true\"\n",
    );
    let output = backup_with(&s3, &config_stopped, &[]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("is container db running?"), "{err}");
    assert!(app.running().values().all(|r| *r));
}

/// A container whose main process ignores SIGTERM, and one that cannot start again (its bind
/// mount's source disappears while the app is stopped): the first is killed after the stop
/// timeout and reported, the second is reported by name, the others run again, and the data
/// is stored.
#[test]
fn a_container_that_will_not_stop_or_start_is_reported_and_the_rest_restarted() {
    let mut app = TestApp::new("stubborn");
    let data = app.volume("data");
    app.in_volume(&data, "echo keep > /v/f");
    app.service("db", IMAGE, &[("data", "/data")], &[], true);
    // PID 1 without a TERM handler ignores SIGTERM.
    let stubborn = app.service_running("worker", IMAGE, &[], &[], true, &["sleep", "100000"]);
    let work = tempfile::tempdir().unwrap();
    let bind_source = work.path().join("bind-source");
    std::fs::create_dir(&bind_source).unwrap();
    let fragile = format!("{}-web-1", app.project);
    docker(&[
        "create",
        "--name",
        &fragile,
        "--label",
        &format!("com.docker.compose.project={}", app.project),
        "--label",
        "com.docker.compose.service=web",
        "--mount",
        &format!("type=bind,src={},dst=/srv", bind_source.display()),
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    ]);
    docker(&["start", &fragile]);
    app.containers.push(fragile.clone());

    let s3 = S3Server::start();
    let store = s3.bucket("stubborn");
    let (key, recipient) = keygen(work.path());
    let config = config(
        work.path(),
        &store,
        &app.project,
        &recipient,
        &format!(
            "[[hook]]\non = \"before-volume\"\ncommand = \"rm -rf {}\"\n",
            bind_source.display()
        ),
    );
    let output = backup_with(&s3, &config, &["--stop-timeout", "1"]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&stubborn) && err.contains("was killed"),
        "the stubborn container is named: {err}"
    );
    assert!(
        err.contains(&fragile) && err.contains("is complete"),
        "the container that cannot start is named, and the data is safe: {err}"
    );
    let running = app.running();
    assert!(!running[&fragile]);
    assert!(running[&stubborn], "{running:?}");
    assert!(running[&format!("{}-db-1", app.project)], "{running:?}");
    assert_eq!(list_json(&s3, &store).len(), 1, "the backup is stored");
    // ...and whole: every object decrypts to the tar its signed record describes.
    let verified = run(s3
        .env(&mut lifeboat())
        .args(["verify", "-p", &app.project, "--store", &store, "-i"])
        .arg(&key));
    assert!(verified.status.success(), "{}", stderr(&verified));
    assert!(
        stdout(&verified).starts_with("ok "),
        "{}",
        stdout(&verified)
    );

    // The next run reports the container that still cannot start and backs up anyway.
    let output = backup_with(&s3, &config, &["--stop-timeout", "1"]);
    let err = stderr(&output);
    assert!(err.contains("still cannot start"), "{err}");
    assert_eq!(list_json(&s3, &store).len(), 2, "{err}");
}

/// A tiny HTTP server that records each request as "METHOD PATH BODY".
struct Receiver {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header.trim().is_empty() {
                        break;
                    }
                    if let Some(value) = header.to_ascii_lowercase().strip_prefix("content-length:")
                    {
                        length = value.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let mut parts = line.split_whitespace();
                let (method, path) = (parts.next().unwrap(), parts.next().unwrap());
                seen.lock().unwrap().push(format!(
                    "{method} {path} {}",
                    String::from_utf8_lossy(&body)
                ));
                let mut stream = stream;
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Self { port, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

#[test]
fn webhook_and_healthchecks_hear_about_success_and_failure_and_never_fail_a_backup() {
    let mut app = TestApp::new("notify");
    app.volume("data");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("notify");
    let work = tempfile::tempdir().unwrap();
    let (_, recipient) = keygen(work.path());
    let receiver = Receiver::start();
    let ping = receiver.url("/ping/secret-check-uuid");
    let webhook = receiver.url("/hook");

    let plain = config(work.path(), &store, &app.project, &recipient, "");
    let output = backup_with(
        &s3,
        &plain,
        &["--webhook", &webhook, "--healthchecks", &ping],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(requests[0].starts_with("POST /ping/secret-check-uuid/start "));
    let find = |requests: &[String], prefix: &str| {
        requests
            .iter()
            .find_map(|r| r.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no request {prefix}: {requests:?}"))
            .to_string()
    };
    assert!(find(&requests, "POST /ping/secret-check-uuid ").starts_with("lifeboat: backup "));
    let body: serde_json::Value = serde_json::from_str(&find(&requests, "POST /hook ")).unwrap();
    assert_eq!(body["event"], "backup.success");
    assert_eq!(body["app"], app.project.as_str());
    assert_eq!(body["volumes"], 1);
    assert!(body["bytes_stored"].as_u64().unwrap() > 0);
    assert!(body["text"].as_str().unwrap().contains("downtime"));

    // A failure (here a failing hook, from the config file's [notify] section).
    let failing = config(
        work.path(),
        &store,
        &app.project,
        &recipient,
        &format!(
            "[notify]\nwebhook = \"{webhook}\"\nwebhook_on = [\"failure\"]\nhealthchecks = \"{ping}\"\n[[hook]]\non = \"before-backup\"\ncommand = \"echo see https://x.example/T0KEN-in-hook-output; exit 3\"\n"
        ),
    );
    let output = backup_with(&s3, &failing, &[]);
    assert_eq!(output.status.code(), Some(1));
    let requests = receiver.requests()[3..].to_vec();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(find(&requests, "POST /ping/secret-check-uuid/fail ").contains("exit code 3"));
    let body: serde_json::Value = serde_json::from_str(&find(&requests, "POST /hook ")).unwrap();
    assert_eq!(body["event"], "backup.failure");
    assert!(body["error"].as_str().unwrap().contains("exit code 3"));
    // URLs in hook output leave lifeboat with their host only.
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("https://x.example…"),
        "{body}"
    );
    assert!(!requests.concat().contains("T0KEN"), "{requests:?}");

    // Nobody listening: the backup still succeeds, the warning names the host, not the URL.
    let output = backup_with(
        &s3,
        &plain,
        &[
            "--healthchecks",
            "http://127.0.0.1:9/ping/secret-check-uuid",
            "--notify-timeout",
            "2",
        ],
    );
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    assert!(
        err.contains("could not deliver the healthchecks ping") && err.contains("127.0.0.1"),
        "the warning names the host: {err}"
    );
    assert!(!err.contains("secret-check-uuid"), "{err}");
}

#[test]
fn progress_bars_only_on_a_terminal() {
    let mut app = TestApp::new("progress");
    let data = app.volume("data");
    app.in_volume(&data, "head -c 64000000 /dev/urandom > /v/big");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("progress");
    let work = tempfile::tempdir().unwrap();
    let (_, recipient) = keygen(work.path());
    let config = config(work.path(), &store, &app.project, &recipient, "");

    // Without a terminal: silent.
    let output = backup_with(&s3, &config, &[]);
    assert!(output.status.success());
    assert_eq!(stderr(&output), "");
    assert_eq!(stdout(&output), "");

    // On a terminal (script(1) gives it one): a bar per volume and the summary line.
    let binary = env!("CARGO_BIN_EXE_lifeboat");
    let typescript = work.path().join("typescript");
    let command = format!("{binary} --config {} backup", config.display());
    let output = run(s3
        .env(std::process::Command::new("script").env("AWS_EC2_METADATA_DISABLED", "true"))
        .args(["-q", "-e", "-c", &command])
        .arg(&typescript));
    assert!(output.status.success(), "{}", stderr(&output));
    let screen = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned();
    assert!(
        screen.contains("data") && screen.contains("MiB"),
        "{screen}"
    );
    assert!(screen.contains("ratio"), "{screen}");
    assert!(
        screen.contains("1 volumes") && screen.contains("took") && screen.contains("downtime"),
        "{screen}"
    );
}
