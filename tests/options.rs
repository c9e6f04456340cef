//! Options the README promises, each driven through the real binary against real Docker and
//! s3s-fs: volume selection, gzip, no spool, JSON logs, a named backup, restore hooks, and the
//! schedule's failures and SIGTERM.

mod common;

use common::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn one_chosen_volume_in_gzip_without_a_spool_with_json_logs_restores_identically() {
    let mut app = TestApp::new("options");
    let chosen = app.volume("chosen");
    let other = app.volume("other");
    app.in_volume(&chosen, &fill_script(2));
    app.in_volume(&other, "echo not-backed-up > /v/file");
    app.service(
        "web",
        IMAGE,
        &[("chosen", "/chosen"), ("other", "/other")],
        &[],
        true,
    );
    let s3 = S3Server::start();
    let store = s3.bucket("options");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let before = app.snapshot(&chosen);

    let output = run(s3.env(&mut lifeboat()).args([
        "--log-format",
        "json",
        "-v",
        "backup",
        "-p",
        &app.project,
        "--store",
        &store,
        "-r",
        &recipient,
        "--volume",
        "chosen",
        "--compression",
        "gzip",
        "--spool-size-mib",
        "0",
    ]));
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    // --log-format json: every line on stderr is one JSON object with a level and a message.
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "-v logs the steps");
    for line in &lines {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            event["level"].is_string() && event["fields"]["message"].is_string(),
            "{line}"
        );
    }
    assert!(
        err.contains("volume stored"),
        "the volume's step is logged: {err}"
    );

    // --volume: only the chosen volume, --compression gzip: a .tar.gz.age object.
    let backups = list_json(&s3, &store);
    let volumes = backups[0]["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    assert_eq!(volumes[0]["name"], chosen.as_str());
    assert_eq!(volumes[0]["compression"], "gzip");
    assert!(
        volumes[0]["object"]
            .as_str()
            .unwrap()
            .ends_with(".tar.gz.age"),
        "{volumes:?}"
    );
    let first = backups[0]["backup_id"].as_str().unwrap().to_string();

    // A second backup with different data; `--backup ID` restores the first one.
    app.in_volume(&chosen, "echo later > /v/later.txt");
    let output = run(s3.env(&mut lifeboat()).args([
        "backup",
        "-p",
        &app.project,
        "--store",
        &store,
        "-r",
        &recipient,
        "--volume",
        "chosen",
    ]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(list_json(&s3, &store).len(), 2);
    app.wipe(&chosen);
    app.in_volume(&other, "echo changed-since > /v/file");
    let output = run(s3
        .env(&mut lifeboat())
        .args([
            "restore",
            "-p",
            &app.project,
            "--store",
            &store,
            "--backup",
            &first,
            // Kept for old scripts: restore always verifies, and says so.
            "--no-verify",
            "-i",
        ])
        .arg(&key));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--no-verify is ignored"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        app.snapshot(&chosen),
        before,
        "the named backup, not the newest"
    );
    assert_eq!(
        app.in_volume(&other, "cat /v/file"),
        "changed-since",
        "a volume the backup does not hold is left alone"
    );
    assert!(app.running().values().all(|r| *r));
}

#[test]
fn restore_hooks_run_and_a_failing_after_restore_hook_exits_1_with_the_data_restored() {
    let mut app = TestApp::new("restorehooks");
    let data = app.volume("data");
    app.in_volume(&data, "echo genuine > /v/db");
    app.service("web", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("restorehooks");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let log = work.path().join("hooks.log");
    let config = config(
        work.path(),
        &store,
        &app.project,
        &recipient,
        &format!(
            r#"
[[hook]]
on = "before-restore"
command = "echo $LIFEBOAT_EVENT:$LIFEBOAT_APP:$LIFEBOAT_BACKUP_ID >> {log}"
[[hook]]
on = "after-restore"
command = "echo $LIFEBOAT_EVENT:$LIFEBOAT_OUTCOME >> {log}; exit 3"
"#,
            log = log.display()
        ),
    )
    .display()
    .to_string();
    let output = run(s3
        .env(&mut lifeboat())
        .args(["--config", &config, "backup"]));
    assert!(output.status.success(), "{}", stderr(&output));
    let id = list_json(&s3, &store)[0]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!log.exists(), "backup runs no restore hook");

    app.in_volume(&data, "echo damaged > /v/db");
    let output = run(s3
        .env(&mut lifeboat())
        .args(["--config", &config, "restore", "--no-safety-copy", "-i"])
        .arg(&key));
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "backup {id} is restored, but an after-restore hook failed"
        )),
        "{err}"
    );
    assert_eq!(app.in_volume(&data, "cat /v/db"), "genuine");
    assert!(app.running().values().all(|r| *r));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!(
            "before-restore:{}:{id}\nafter-restore:success\n",
            app.project
        )
    );
}

#[test]
fn a_schedule_logs_failed_runs_goes_on_and_stops_cleanly_on_sigterm() {
    ensure_docker();
    let s3 = S3Server::start();
    let store = s3.bucket("schedule");
    let work = tempfile::tempdir().unwrap();
    let (_, recipient) = keygen(work.path());

    // Two runs every second of an app that does not exist: each fails, the schedule goes on,
    // and the exit code says a run failed.
    let output = run(s3.env(&mut lifeboat()).args([
        "schedule",
        "--cron",
        "* * * * * *",
        "--runs",
        "2",
        "-p",
        "lbt-no-such-app",
        "--store",
        &store,
        "-r",
        &recipient,
    ]));
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert_eq!(
        err.matches("scheduled backup failed").count(),
        2,
        "both runs ran and were logged: {err}"
    );
    assert!(err.contains("lbt-no-such-app"), "{err}");

    // SIGTERM while waiting for the next run (with jitter): exit 0, promptly.
    let mut child = s3
        .env(&mut lifeboat())
        .args([
            "-v",
            "schedule",
            "--cron",
            "0 3 * * *",
            "--jitter",
            "10m",
            "-p",
            "lbt-no-such-app",
            "--store",
            &store,
            "-r",
            &recipient,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(child.try_wait().unwrap().is_none(), "it waits for 03:00");
    // SAFETY: a plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the schedule did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    assert!(err.contains("next backup"), "{err}");
    assert!(!err.contains("scheduled backup starting"), "{err}");
}
