//! One run per app and store at a time, with real processes against the real S3 server:
//! several hosts (each its own state directory) starting the same backup at once, a restore
//! while a backup holds the lock, and a run that loses its lock while it works.

mod common;
#[path = "common/condless.rs"]
mod condless;
#[path = "common/proxy.rs"]
mod proxy;

use common::*;
use proxy::FaultProxy;
use std::process::{Command, Stdio};

/// Starts `lifeboat backup` as if on its own host (a state directory of its own, so that only
/// the store's lock can keep it apart from the others).
fn backup_from_host(s3: &S3Server, host: &std::path::Path, project: &str, store: &str) -> Command {
    let mut cmd = lifeboat();
    s3.env(&mut cmd)
        .env("LIFEBOAT_STATE_DIR", host)
        .args(["backup", "-p", project, "--store", store]);
    cmd
}

/// Four hosts (state directories under `hosts`) start a backup of one app at once, through
/// `endpoint` if given: exactly one proceeds, the others are refused naming the lock (exit 5).
fn four_hosts_race(
    s3: &S3Server,
    hosts: &std::path::Path,
    project: &str,
    store: &str,
    endpoint: Option<String>,
) {
    let children: Vec<_> = (0..4)
        .map(|i| {
            let mut cmd = backup_from_host(s3, &hosts.join(format!("host-{i}")), project, store);
            if let Some(endpoint) = &endpoint {
                cmd.env("AWS_ENDPOINT_URL", endpoint);
            }
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let won = outputs.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        won,
        1,
        "{:?}",
        outputs.iter().map(stderr).collect::<Vec<_>>()
    );
    for refused in outputs.iter().filter(|o| !o.status.success()) {
        assert_eq!(refused.status.code(), Some(5), "{}", stderr(refused));
        assert!(
            stderr(refused).contains("holds the lock in this store"),
            "{}",
            stderr(refused)
        );
    }
}

#[test]
fn of_several_hosts_starting_one_backup_at_once_exactly_one_proceeds() {
    let mut app = TestApp::new("lockrace");
    let data = app.volume("data");
    app.in_volume(&data, "head -c 30000000 /dev/urandom > /v/big");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("lockrace");
    let work = tempfile::tempdir().unwrap();
    keygen(work.path());
    for round in 0..2 {
        four_hosts_race(
            &s3,
            &work.path().join(format!("round-{round}")),
            &app.project,
            &store,
            None,
        );
        assert!(app.running().values().all(|r| *r));
    }
    assert_eq!(list_json(&s3, &store).len(), 2, "one backup per round");
    assert!(s3.open_uploads().is_empty());
}

/// Some S3-compatible servers ignore `If-None-Match` / `If-Match`: through a proxy that strips
/// them (and signs the requests again), still exactly one of several hosts proceeds.
#[test]
fn on_a_store_that_ignores_conditional_writes_exactly_one_host_proceeds() {
    let mut app = TestApp::new("lockcondless");
    let data = app.volume("data");
    app.in_volume(&data, "head -c 20000000 /dev/urandom > /v/big");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("lockcondless");
    let work = tempfile::tempdir().unwrap();
    let (key, _) = keygen(work.path());
    let proxy = condless::CondlessProxy::start(s3.port, S3_ACCESS_KEY, S3_SECRET_KEY);
    four_hosts_race(
        &s3,
        work.path(),
        &app.project,
        &store,
        Some(format!("http://127.0.0.1:{}", proxy.port)),
    );
    assert!(
        proxy.stripped() > 0,
        "the proxy stripped the manifest's If-None-Match"
    );
    assert!(app.running().values().all(|r| *r));
    let output = run(s3
        .env(&mut lifeboat())
        .args(["verify", "-p", &app.project, "--store", &store, "-i"])
        .arg(&key));
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn a_restore_while_a_backup_holds_the_lock_is_refused_before_it_reads_anything() {
    let mut app = TestApp::new("lockrestore");
    let data = app.volume("data");
    app.in_volume(&data, "head -c 60000000 /dev/urandom > /v/big");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("lockrestore");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    backup_ok(&s3, &app.project, &store, &recipient);
    // A second backup, slowed by a throttled uplink, holds the lock.
    let proxy = FaultProxy::start(s3.port);
    proxy.throttle_uploads(4 << 20);
    let mut slow = backup_from_host(&s3, &work.path().join("host-a"), &app.project, &store);
    slow.env(
        "AWS_ENDPOINT_URL",
        format!("http://127.0.0.1:{}", proxy.port),
    )
    .env("LIFEBOAT_SPOOL_SIZE_MIB", "0");
    let holder = spawn_until_uploading(&s3, &mut slow);
    // The restore comes from another host, through a proxy that records its requests.
    let watch = FaultProxy::start(s3.port);
    let output = run(lifeboat()
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", watch.port),
        )
        .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("LIFEBOAT_STATE_DIR", work.path().join("host-b"))
        .args(["restore", "-p", &app.project, "--store", &store, "-i"])
        .arg(&key));
    assert_eq!(output.status.code(), Some(5), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("holds the lock"),
        "{}",
        stderr(&output)
    );
    let requests = watch.requests();
    assert!(
        !requests.contains("manifest.json"),
        "no manifest was read: {requests}"
    );
    assert!(!requests.contains(".age"), "no object was read: {requests}");
    let output = holder.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(app.running().values().all(|r| *r));
}

#[test]
fn a_run_that_loses_its_lock_stops_and_starts_the_app_again() {
    let mut app = TestApp::new("locklost");
    let data = app.volume("data");
    app.in_volume(&data, "head -c 60000000 /dev/urandom > /v/big");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("locklost");
    let work = tempfile::tempdir().unwrap();
    keygen(work.path());
    let proxy = FaultProxy::start(s3.port);
    proxy.throttle_uploads(2 << 20);
    let mut slow = backup_from_host(&s3, &work.path().join("host-a"), &app.project, &store);
    slow.env(
        "AWS_ENDPOINT_URL",
        format!("http://127.0.0.1:{}", proxy.port),
    )
    .env("LIFEBOAT_SPOOL_SIZE_MIB", "0")
    .env("LIFEBOAT_LOCK_RENEW_SECS", "1");
    let holder = spawn_until_uploading(&s3, &mut slow);
    // Someone removes the lock (here by hand; a run on another host that found it expired
    // would too): the holder notices at its next renewal.
    let output =
        run(s3
            .env(&mut lifeboat())
            .args(["unlock", "-p", &app.project, "--store", &store]));
    assert!(
        stderr(&output).contains("removed the lock"),
        "{}",
        stderr(&output)
    );
    let output = holder.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(5), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("lost the lock"),
        "{}",
        stderr(&output)
    );
    assert!(app.running().values().all(|r| *r), "the app runs again");
    assert!(list_json(&s3, &store).is_empty(), "no backup was stored");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !s3.open_uploads().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(s3.open_uploads().is_empty(), "the upload was aborted");
}
