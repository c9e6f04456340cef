//! The same end-to-end suite against every backend that runs here (S3 via s3s-fs, Azure via
//! Azurite, a local folder), plus what is particular to S3: credentials from a profile file,
//! a large stream going on in segments past a small part limit, and a server restarted in the
//! middle of an upload.

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use common::*;
use proxy::FaultProxy;
use std::time::Instant;

#[test]
fn every_backend_backs_up_verifies_locks_prunes_and_restores() {
    let mut app = TestApp::new("backends");
    let data = app.volume("data");
    app.in_volume(&data, &fill_script(40));
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let before = app.snapshot(&data);
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    for backend in Backend::all() {
        let name = backend.name();
        let store = backend.store(&format!("suite-{name}"));
        let started = Instant::now();
        for _ in 0..2 {
            let output = run(backend.env(&mut lifeboat()).args(backup_args(
                &app.project,
                &store,
                &recipient,
            )));
            assert!(output.status.success(), "{name}: {}", stderr(&output));
            assert!(
                !stderr(&output).contains("ignores conditional writes"),
                "{name}: the lock works"
            );
        }
        eprintln!(
            "BACKENDS: {name}: two backups of {} MiB in {:.2} s",
            45,
            started.elapsed().as_secs_f64()
        );
        assert_eq!(backend.list(&store).len(), 2, "{name}");
        let output = run(backend
            .env(&mut lifeboat())
            .args([
                "verify",
                "--all",
                "-p",
                &app.project,
                "--store",
                &store,
                "-i",
            ])
            .arg(&key));
        assert!(output.status.success(), "{name}");
        let output = run(backend.env(&mut lifeboat()).args([
            "prune",
            "-p",
            &app.project,
            "--store",
            &store,
            "--keep-last",
            "1",
        ]));
        assert!(output.status.success(), "{name}");
        assert_eq!(backend.list(&store).len(), 1, "{name}");
        app.wipe(&data);
        let output = run(backend
            .env(&mut lifeboat())
            .args(["restore", "-p", &app.project, "--store", &store, "-i"])
            .arg(&key));
        assert!(output.status.success(), "{name}");
        assert_eq!(app.snapshot(&data), before, "{name}");
    }
}

#[test]
fn s3_credentials_and_endpoint_come_from_a_profile_file() {
    let mut app = TestApp::new("profile");
    let data = app.volume("data");
    app.in_volume(&data, "echo profile > /v/f");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("profile");
    let work = tempfile::tempdir().unwrap();
    let (_, recipient) = keygen(work.path());
    let config = work.path().join("config");
    let credentials = work.path().join("credentials");
    std::fs::write(
        &config,
        format!(
            "[profile backups]\nregion = us-east-1\nendpoint_url = {}\n",
            s3.endpoint
        ),
    )
    .unwrap();
    std::fs::write(&credentials, format!("[backups]\naws_access_key_id = {S3_ACCESS_KEY}\naws_secret_access_key = {S3_SECRET_KEY}\n")).unwrap();
    // No AWS_* credential variables at all: everything from the profile.
    let output = run(lifeboat()
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
        .env_remove("AWS_REGION")
        .args(backup_args(&app.project, &store, &recipient))
        .args(["--profile", "backups"]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(list_json(&s3, &store).len(), 1);

    // A wrong profile name is an error that names the way out.
    let output = run(lifeboat()
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
        .env("AWS_ENDPOINT_URL", &s3.endpoint)
        .args(backup_args(&app.project, &store, &recipient))
        .args(["--profile", "nope"]));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("AWS_PROFILE"),
        "{}",
        stderr(&output)
    );
    assert!(app.running().values().all(|r| *r));
}

/// Parts never grow: a volume of more parts than the store takes per object goes on in
/// segments. One interrupted while a later segment uploads leaves nothing (every segment's
/// multipart upload aborted); one that completes restores identically.
#[test]
fn a_volume_past_a_small_part_limit_goes_on_in_segments_and_an_interrupted_one_leaves_nothing() {
    let mut app = TestApp::new("parts");
    let data = app.volume("data");
    app.in_volume(&data, "head -c 2200000000 /dev/urandom > /v/big"); // 2.05 GiB
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let before = app.snapshot(&data);
    let s3 = S3Server::start();
    let store = s3.bucket("parts");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let parts = |max: &'static str| {
        [
            "--compression",
            "none",
            "--part-size-mib",
            "5",
            "--max-parts",
            max,
        ]
    };

    // 5 MiB parts, at most 4 per object: 20 MiB segments. Interrupted once a second segment's
    // upload is open beside the first.
    let child = s3
        .env(&mut lifeboat())
        .args(backup_args(&app.project, &store, &recipient))
        .args(parts("4"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while s3.open_uploads().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "a second segment never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    signal(&child, "TERM");
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", stderr(&output));
    assert!(
        s3.open_uploads().is_empty(),
        "every segment aborted: {:?}",
        s3.open_uploads()
    );
    assert!(s3.files("parts").is_empty(), "{:?}", s3.files("parts"));
    assert!(app.running().values().all(|r| *r));

    // 5 MiB parts, at most 12 per object: 60 MiB segments, all complete, and it restores.
    let output = backup_with(&s3, &app.project, &store, &recipient, &parts("12"));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(s3.open_uploads().is_empty(), "{:?}", s3.open_uploads());
    let manifest = &list_json(&s3, &store)[0];
    assert_eq!(manifest["format_version"], 4);
    let stored = manifest["volumes"][0]["stored_size"].as_u64().unwrap();
    let segment = 12 * (5 << 20);
    assert_eq!(
        manifest["volumes"][0]["segments"].as_u64().unwrap(),
        stored.div_ceil(segment)
    );
    app.wipe(&data);
    let output = restore(&s3, &app.project, &store, &key);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(app.snapshot(&data), before);
}

#[test]
fn an_s3_server_restarted_mid_upload_is_ridden_out_by_retries() {
    let mut app = TestApp::new("s3restart");
    let data = app.volume("data");
    app.in_volume(&data, "head -c 400000000 /dev/urandom > /v/big");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let before = app.snapshot(&data);
    let mut s3 = S3Server::start();
    let store = s3.bucket("restart");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let child = spawn_until_uploading(
        &s3,
        s3.env(&mut lifeboat())
            .args(backup_args(&app.project, &store, &recipient))
            .args(["--part-size-mib", "5"]),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    s3.kill();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let s3 = s3.restart();
    let output = child.wait_with_output().unwrap();
    eprintln!("{}", stderr(&output));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(app.running().values().all(|r| *r));
    app.wipe(&data);
    let output = restore(&s3, &app.project, &store, &key);
    assert!(output.status.success());
    assert_eq!(app.snapshot(&data), before);
}

#[test]
fn s3_storage_class_and_sse_are_sent_and_a_broken_download_resumes() {
    let mut app = TestApp::new("s3opts");
    let data = app.volume("data");
    app.in_volume(
        &data,
        "head -c 60000000 /dev/urandom > /v/big; echo x > /v/small",
    );
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let before = app.snapshot(&data);
    let s3 = S3Server::start();
    let store = s3.bucket("s3opts");
    let proxy = FaultProxy::start(s3.port);
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let output = run(s3
        .env(&mut lifeboat())
        .env("AWS_ENDPOINT_URL", &endpoint)
        .args(backup_args(&app.project, &store, &recipient))
        .args(["--storage-class", "STANDARD_IA", "--sse", "AES256"]));
    assert!(output.status.success(), "{}", stderr(&output));
    let requests = proxy.requests().to_lowercase();
    assert!(
        requests.contains("x-amz-storage-class: standard_ia"),
        "storage class sent"
    );
    assert!(
        requests.contains("x-amz-server-side-encryption: aes256"),
        "SSE sent"
    );

    // The first long download is cut after 5 MB; object_store resumes it with a ranged GET.
    app.wipe(&data);
    proxy.cut_once_after(5_000_000);
    let output = run(s3
        .env(&mut lifeboat())
        .env("AWS_ENDPOINT_URL", &endpoint)
        .args(["restore", "-p", &app.project, "--store", &store, "-i"])
        .arg(&key));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(proxy.was_cut(), "a download was cut");
    assert!(
        proxy.requests().to_lowercase().contains("range: bytes="),
        "the rest was fetched with a ranged GET"
    );
    assert_eq!(app.snapshot(&data), before);

    let output = run(s3
        .env(&mut lifeboat())
        .args(backup_args(&app.project, &store, &recipient))
        .args(["--sse", "rot13"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--sse 'rot13'"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_s3_server_that_dies_mid_upload_fails_the_backup_cleanly() {
    let mut app = TestApp::new("s3dies");
    let data = app.volume("data");
    app.in_volume(&data, "head -c 400000000 /dev/urandom > /v/big");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let mut s3 = S3Server::start();
    let store = s3.bucket("dies");
    let (_, recipient) = keygen(tempfile::tempdir().unwrap().path());
    let child = spawn_until_uploading(
        &s3,
        s3.env(&mut lifeboat())
            .args(backup_args(&app.project, &store, &recipient))
            .args(["--part-size-mib", "5"]),
    );
    s3.kill(); // and it stays dead
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("uploading volume"),
        "{}",
        stderr(&output)
    );
    assert!(app.running().values().all(|r| *r), "the app runs again");
    // No manifest and no volume object was written: the bucket folder holds no file of this
    // backup (the multipart parts the dead server kept are not objects).
    let files = s3.files("dies");
    assert!(
        !files
            .iter()
            .map(|f| f.to_string_lossy().into_owned())
            .any(|f| f.ends_with("manifest.json") || f.ends_with(".age")),
        "{files:?}"
    );
}

#[test]
fn gcs_configuration_errors_name_the_problem() {
    ensure_docker();
    let output = run(lifeboat()
        .env("GOOGLE_SERVICE_ACCOUNT", "/nonexistent/gcs-key.json")
        .args(["list", "--store", "gs://some-bucket/lifeboat"]));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("GCS store gs://some-bucket/lifeboat"),
        "{}",
        stderr(&output)
    );
    let output = run(lifeboat().args(["list", "--store", "gs:///lifeboat"]));
    assert!(
        stderr(&output).contains("has no bucket"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_download_that_stalls_times_out_and_resumes() {
    let mut app = TestApp::new("stall");
    let data = app.volume("data");
    app.in_volume(&data, "head -c 30000000 /dev/urandom > /v/big");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let before = app.snapshot(&data);
    let s3 = S3Server::start();
    let store = s3.bucket("stall");
    let proxy = FaultProxy::start(s3.port);
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    backup_ok(&s3, &app.project, &store, &recipient);
    app.wipe(&data);
    proxy.stall_once_after(4_000_000);
    let started = Instant::now();
    let output = run(s3
        .env(&mut lifeboat())
        .env("AWS_ENDPOINT_URL", &endpoint)
        .args([
            "restore",
            "-p",
            &app.project,
            "--store",
            &store,
            "--io-timeout",
            "3",
            "-i",
        ])
        .arg(&key));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(proxy.has_stalled(), "a download stalled");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(120),
        "resumed after the 3 s timeout, not hung"
    );
    assert_eq!(app.snapshot(&data), before);
}

#[test]
fn an_upload_that_stalls_is_aborted_and_the_app_started_again() {
    let mut app = TestApp::new("upstall");
    let data = app.volume("data");
    app.in_volume(&data, "head -c 60000000 /dev/urandom > /v/big");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("upstall");
    let proxy = FaultProxy::start(s3.port);
    let (_, recipient) = keygen(tempfile::tempdir().unwrap().path());
    proxy.stall_upload_once_after(12_000_000);
    let started = Instant::now();
    let output = run(s3
        .env(&mut lifeboat())
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", proxy.port),
        )
        .args(backup_args(&app.project, &store, &recipient))
        .args(["--part-size-mib", "5", "--io-timeout", "3"]));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("stalled connection"),
        "{}",
        stderr(&output)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(90),
        "failed in time, not hung"
    );
    assert!(app.running().values().all(|r| *r), "the app runs again");
    assert!(
        s3.open_uploads().is_empty(),
        "the multipart upload was aborted: {:?}",
        s3.open_uploads()
    );
    assert!(
        !s3.files("upstall")
            .iter()
            .any(|f| f.ends_with("manifest.json"))
    );
}
