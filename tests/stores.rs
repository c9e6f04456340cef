//! Several stores in one run (3-2-1: a local folder for fast restores plus offsite buckets):
//! each volume is read once and written to every store, each store gets its manifest when its
//! own uploads are complete, retention applies in each store, and a store that fails stops no
//! other: the backup exits non-zero naming it, the others have the backup, the app runs.

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// S3 credentials of the test servers, without an endpoint: each store names its own.
fn credentials(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("AWS_ENDPOINT_URL")
        .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
}

fn ids_in(cmd: &mut Command, config: &std::path::Path, store: &str) -> Vec<String> {
    let output = run(credentials(cmd)
        .arg("--config")
        .arg(config)
        .args(["list", "--json", "--store", store]));
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_slice::<Vec<serde_json::Value>>(&output.stdout)
        .unwrap()
        .iter()
        .map(|m| m["backup_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_backup_goes_to_every_configured_store_and_a_store_that_fails_stops_no_other() {
    let mut app = TestApp::new("stores");
    let data = app.volume("data");
    app.in_volume(&data, &fill_script(12));
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let (nightly, offsite) = (S3Server::start(), S3Server::start());
    // The offsite link is slow (2 MiB/s at night 3), so its upload is still going when it
    // breaks.
    let link = proxy::FaultProxy::start(offsite.port);
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let local = format!("file://{}/local", work.path().display());
    let (nightly_url, offsite_url) = (nightly.bucket("nightly"), offsite.bucket("offsite"));
    let config = config(
        work.path(),
        &local,
        &app.project,
        &recipient,
        &format!(
            "[retention]\nkeep_last = 1\n\n\
             [[stores]]\nurl = \"{nightly_url}\"\nendpoint = \"{}\"\n\n\
             [[stores]]\nurl = \"{offsite_url}\"\nendpoint = \"http://127.0.0.1:{}\"\n",
            nightly.endpoint, link.port
        ),
    );
    let backup = || {
        let mut cmd = lifeboat();
        credentials(&mut cmd)
            .arg("--config")
            .arg(&config)
            .args(["backup", "-v"]);
        cmd
    };
    let before = app.snapshot(&data);

    // Night 1: one run, three stores, each with the backup.
    let output = run(&mut backup());
    assert!(output.status.success(), "{}", stderr(&output));
    let said = stdout(&output);
    for url in [&local, &nightly_url, &offsite_url] {
        assert!(
            said.contains(url.as_str()),
            "the summary names {url}: {said}"
        );
    }
    let first: Vec<Vec<String>> = [&local, &nightly_url, &offsite_url]
        .iter()
        .map(|url| ids_in(&mut lifeboat(), &config, url))
        .collect();
    assert_eq!(first[0].len(), 1);
    assert!(first.iter().all(|ids| *ids == first[0]), "{first:?}");
    assert_eq!(
        stderr(&output).matches("volume read").count(),
        1,
        "the volume is read once: {}",
        stderr(&output)
    );

    // Each store restores it byte for byte; `--from URL` takes that store's endpoint from
    // the config file.
    for url in [&nightly_url, &offsite_url] {
        app.wipe(&data);
        let output = run(credentials(&mut lifeboat())
            .arg("--config")
            .arg(&config)
            .args(["restore", "--from", url, "--no-safety-copy", "-i"])
            .arg(&key));
        assert!(output.status.success(), "{url}: {}", stderr(&output));
        assert_eq!(app.snapshot(&data), before, "restored from {url}");
    }

    // Night 2: retention (keep_last = 1) applies in each store.
    let output = run(&mut backup());
    assert!(output.status.success(), "{}", stderr(&output));
    let second: Vec<Vec<String>> = [&local, &nightly_url, &offsite_url]
        .iter()
        .map(|url| ids_in(&mut lifeboat(), &config, url))
        .collect();
    assert!(
        second
            .iter()
            .all(|ids| ids.len() == 1 && *ids == second[0] && ids != &first[0]),
        "{second:?}"
    );

    // Night 3: the offsite server dies in the middle of its upload. The other stores get the
    // backup (and their retention), the run exits non-zero naming the offsite store, the app
    // runs, and the offsite store keeps night 2 untouched.
    link.throttle_uploads(2 << 20);
    let mut child = backup()
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while offsite.open_uploads().is_empty() {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("the offsite upload never started: {}", stderr(&output));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut offsite = offsite;
    offsite.kill();
    let output = child.wait_with_output().unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("store {offsite_url} failed")),
        "the error names the failed store: {err}"
    );
    assert!(
        err.contains("is stored in"),
        "and where the backup is: {err}"
    );
    for url in [&local, &nightly_url] {
        let ids = ids_in(&mut lifeboat(), &config, url);
        assert_eq!(ids.len(), 1, "{url}: {ids:?}");
        assert_ne!(ids, second[0], "{url} has night 3 (and pruned night 2)");
    }
    assert!(
        app.running().values().all(|&running| running),
        "the app runs"
    );
    let manifests: Vec<_> = offsite
        .files("offsite")
        .into_iter()
        .filter(|f| f.ends_with("manifest.json"))
        .collect();
    assert_eq!(
        manifests.len(),
        1,
        "only night 2 in the offsite store: {manifests:?}"
    );
    assert!(
        manifests[0].to_string_lossy().contains(&second[2][0]),
        "{manifests:?}"
    );
}

#[test]
fn repeated_to_flags_deduplicate_against_each_store_and_an_unreachable_one_is_named() {
    let mut app = TestApp::new("stores-flags");
    let data = app.volume("data");
    app.in_volume(&data, &fill_script(6));
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let (a, b) = (
        format!("file://{}/a", work.path().display()),
        format!("file://{}/b", work.path().display()),
    );
    let missing = "s3://no-such-bucket/lifeboat";
    let before = app.snapshot(&data);

    // Store a first, alone.
    let output = backup_with(&s3, &app.project, &a, &recipient, &["--dedup"]);
    assert!(output.status.success(), "{}", stderr(&output));

    // Then a, b and a bucket that does not exist: a and b get the backup, a only the chunks
    // it lacks (none: nothing changed), b all of them; the missing bucket is named.
    let output = run(s3
        .env(&mut lifeboat())
        .args(["backup", "-p", &app.project, "-r", &recipient, "--dedup"])
        .args(["--to", &a, "--to", &b, "--to", missing]));
    let err = stderr(&output);
    assert_ne!(output.status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("store {missing} failed")), "{err}");
    let newest = |store: &str| show_json(&s3, store, &app.project)["volumes"][0].clone();
    let (in_a, in_b) = (newest(&a), newest(&b));
    assert_eq!(in_a["new_bytes"], 0, "a had every chunk: {in_a}");
    assert_eq!(
        in_b["new_bytes"], in_b["stored_size"],
        "b took every chunk: {in_b}"
    );
    let ids = |v: &serde_json::Value| {
        v["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&in_a), ids(&in_b), "one read, one cut");

    // b restores byte for byte.
    app.wipe(&data);
    let output = run(s3
        .env(&mut lifeboat())
        .args(["restore", "-p", &app.project, "--from", &b])
        .args(["--no-safety-copy", "-i"])
        .arg(&key));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(app.snapshot(&data), before);

    // A command that reads takes one store.
    let output = run(s3
        .env(&mut lifeboat())
        .args(["list", "--store", &a, "--store", &b]));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("one store"), "{}", stderr(&output));
}

/// A signal while a volume's before-volume hook runs: the run stops there as interrupted
/// (exit 130) — no panic, no helper left, the app running again, no backup in the store.
#[test]
fn a_signal_during_a_volume_hook_interrupts_the_backup_cleanly() {
    let mut app = TestApp::new("stores-signal");
    let data = app.volume("data");
    app.in_volume(&data, &fill_script(1));
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("signal");
    let work = tempfile::tempdir().unwrap();
    let (_, recipient) = keygen(work.path());
    let config = config(
        work.path(),
        &store,
        &app.project,
        &recipient,
        "[[hook]]\non = \"before-volume\"\ncommand = \"sleep 3\"\n",
    );
    let child = s3
        .env(&mut lifeboat())
        .arg("--config")
        .arg(&config)
        .arg("backup")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(130), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        app.running().values().all(|&running| running),
        "the app runs"
    );
    assert!(list_json(&s3, &store).is_empty(), "no backup");
    let helpers = docker(&[
        "ps",
        "-aq",
        "--filter",
        "label=io.lifeboat.helper",
        "--filter",
        &format!("volume={data}"),
    ]);
    assert!(helpers.trim().is_empty(), "no helper left: {helpers}");
}
