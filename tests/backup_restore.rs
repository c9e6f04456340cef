//! End to end through the real binary, real Docker and a real S3 server: what a user of
//! `lifeboat backup` and `lifeboat restore` cares about.

mod common;

use common::*;

/// A three-service app: db (volume db), web (media, keys; depends on db), worker (media;
/// depends on web, and stopped — it must stay stopped).
fn three_service_app(test: &str, big_mib: usize) -> TestApp {
    let mut app = TestApp::new(test);
    let db = app.volume("db");
    let media = app.volume("media");
    let keys = app.volume("keys");
    app.in_volume(&db, &fill_script(big_mib));
    app.in_volume(&media, &fill_script(1));
    app.in_volume(
        &keys,
        "echo django-secret > /v/secret_key; chmod 600 /v/secret_key",
    );
    app.service("db", IMAGE, &[("db", "/var/lib/db")], &[], true);
    app.service(
        "web",
        IMAGE,
        &[("media", "/media"), ("keys", "/keys")],
        &["db"],
        true,
    );
    app.service("worker", IMAGE, &[("media", "/media")], &["web"], false);
    app
}

#[test]
fn backup_then_restore_gives_back_identical_volumes_and_running_containers() {
    let app = three_service_app("roundtrip", 120);
    let s3 = S3Server::start();
    let store = s3.bucket("roundtrip");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let before: Vec<String> = app.volumes.iter().map(|v| app.snapshot(v)).collect();
    let running_before = app.running();

    let output = run(s3.env(&mut lifeboat()).args([
        "backup",
        "--project",
        &app.project,
        "--store",
        &store,
        "--recipient",
        &recipient,
        "-v",
    ]));
    assert!(output.status.success());
    assert_eq!(
        app.running(),
        running_before,
        "exactly the containers that ran run again"
    );
    assert!(s3.open_uploads().is_empty());

    let listed = list_json(&s3, &store);
    assert_eq!(listed.len(), 1);
    let manifest = &listed[0];
    assert_eq!(manifest["app"], app.project.as_str());
    assert_eq!(manifest["volumes"].as_array().unwrap().len(), 3);
    assert_eq!(manifest["app_version"]["services"]["db"]["image"], IMAGE);
    assert!(manifest["volumes"][0]["encryption"]["recipients"][0] == recipient.as_str());
    let text = serde_json::to_string(manifest).unwrap();
    assert!(
        !text.contains("AGE-SECRET-KEY"),
        "no secret in the manifest"
    );

    // The volumes change after the backup: new files, a new directory tree, a symlink out of
    // the volume, a changed file. The restore must bring back exactly the backed-up trees.
    for volume in &app.volumes {
        app.in_volume(volume, "echo stale > /v/stale.txt; mkdir -p /v/newdir/deep; echo x > /v/newdir/deep/f; ln -s / /v/escape; echo changed > /v/hello.txt 2>/dev/null; chmod 777 /v");
    }
    let output = run(s3
        .env(&mut lifeboat())
        .args([
            "restore",
            "--project",
            &app.project,
            "--store",
            &store,
            "--identity",
        ])
        .arg(&key));
    assert!(output.status.success());
    let after: Vec<String> = app.volumes.iter().map(|v| app.snapshot(v)).collect();
    for ((volume, before), after) in app.volumes.iter().zip(&before).zip(&after) {
        assert_eq!(before, after, "volume {volume} restored identically");
    }
    assert!(
        before[0].contains("./big.bin F"),
        "the snapshot sees the data: {}",
        &before[0][..200.min(before[0].len())]
    );
    assert_eq!(app.running(), running_before);
}

#[test]
fn a_different_app_version_is_refused_before_any_volume_is_touched() {
    let mut app = TestApp::new("mismatch");
    let data = app.volume("data");
    app.in_volume(&data, "echo v1 > /v/state");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("mismatch");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    backup_ok(&s3, &app.project, &store, &recipient);

    // The app is "upgraded": same service, another image.
    let container = app.containers.pop().unwrap();
    docker(&["rm", "-f", &container]);
    app.service("app", IMAGE_V2, &[("data", "/data")], &[], true);
    app.in_volume(&data, "echo v2 > /v/state");

    let output = restore(&s3, &app.project, &store, &key);
    assert_eq!(output.status.code(), Some(3));
    let message = stderr(&output);
    assert!(
        message.contains("service app") && message.contains(IMAGE) && message.contains(IMAGE_V2),
        "{message}"
    );
    assert!(message.contains("--allow-version-mismatch"), "{message}");
    assert_eq!(
        app.in_volume(&data, "cat /v/state"),
        "v2",
        "volume untouched"
    );
    assert!(app.running().values().all(|r| *r));

    let output = run(s3
        .env(&mut lifeboat())
        .args([
            "restore",
            "-p",
            &app.project,
            "--store",
            &store,
            "--allow-version-mismatch",
            "-i",
        ])
        .arg(&key));
    assert!(output.status.success());
    assert_eq!(app.in_volume(&data, "cat /v/state"), "v1");
}

#[test]
fn wrong_key_and_corrupted_or_truncated_objects_fail_verification_and_touch_nothing() {
    let mut app = TestApp::new("damage");
    let data = app.volume("data");
    app.in_volume(&data, &fill_script(2));
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("damage");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let other_key = other_owner_key(work.path());
    backup_ok(&s3, &app.project, &store, &recipient);
    app.in_volume(&data, "echo after-backup > /v/marker");
    let snapshot = app.snapshot(&data);

    let output = run(s3
        .env(&mut lifeboat())
        .args(["restore", "-p", &app.project, "--store", &store, "-i"])
        .arg(&other_key));
    assert_eq!(output.status.code(), Some(4));
    assert!(
        stderr(&output).contains("none of the given keys") && stderr(&output).contains(&recipient),
        "{}",
        stderr(&output)
    );
    assert_eq!(app.snapshot(&data), snapshot);

    let object = s3
        .files("damage")
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".age"))
        .unwrap();
    let original = std::fs::read(&object).unwrap();
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    std::fs::write(&object, &flipped).unwrap();
    let output = restore(&s3, &app.project, &store, &key);
    assert_eq!(output.status.code(), Some(4), "bit flip");
    let object_key = object
        .strip_prefix(s3.object_file("damage", ""))
        .unwrap()
        .display()
        .to_string();
    assert!(
        stderr(&output).contains("damaged") && stderr(&output).contains(&object_key),
        "exit 4 naming the object {object_key}: {}",
        stderr(&output)
    );
    assert_eq!(app.snapshot(&data), snapshot);

    std::fs::write(&object, &original[..original.len() - 1000]).unwrap();
    let output = restore(&s3, &app.project, &store, &key);
    assert_eq!(output.status.code(), Some(4), "truncated");
    assert!(
        stderr(&output).contains("truncated") && stderr(&output).contains(&object_key),
        "{}",
        stderr(&output)
    );
    assert_eq!(app.snapshot(&data), snapshot);
    assert!(app.running().values().all(|r| *r));

    let output = run(s3
        .env(&mut lifeboat())
        .args(["verify", "-p", &app.project, "--store", &store, "-i"])
        .arg(&key));
    assert_eq!(output.status.code(), Some(4));
    std::fs::write(&object, &original).unwrap();
    let output = run(s3
        .env(&mut lifeboat())
        .args(["verify", "-p", &app.project, "--store", &store, "-i"])
        .arg(&key));
    assert!(output.status.success());
}

#[test]
fn no_matching_containers_is_a_clear_error() {
    ensure_docker();
    let s3 = S3Server::start();
    let store = s3.bucket("nothing");
    let (_, recipient) = keygen(tempfile::tempdir().unwrap().path());
    let output = run(s3.env(&mut lifeboat()).args([
        "backup",
        "-p",
        "no-such-project-xyz",
        "--store",
        &store,
        "-r",
        &recipient,
    ]));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no containers of compose project 'no-such-project-xyz'"),
        "{}",
        stderr(&output)
    );
    let output = run(s3.env(&mut lifeboat()).args([
        "backup",
        "--container",
        "no-such-container-xyz",
        "--store",
        &store,
        "-r",
        &recipient,
    ]));
    assert!(
        stderr(&output).contains("container 'no-such-container-xyz' not found"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_unreachable_bucket_fails_before_anything_is_stopped() {
    let mut app = TestApp::new("unreachable");
    app.volume("data");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let (_, recipient) = keygen(tempfile::tempdir().unwrap().path());
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = docker(&["inspect", "-f", "{{.State.StartedAt}}", &app.containers[0]]);
    let output = run(lifeboat()
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{closed_port}"),
        )
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "y")
        .env("AWS_REGION", "us-east-1")
        .args([
            "backup",
            "-p",
            &app.project,
            "--store",
            "s3://nowhere-bucket/x",
            "-r",
            &recipient,
        ]));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("cannot reach the store s3://nowhere-bucket/x"),
        "{}",
        stderr(&output)
    );
    assert!(stderr(&output).contains("nothing was stopped"));
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.StartedAt}}", &app.containers[0]]),
        started,
        "never restarted"
    );

    let s3 = S3Server::start();
    let output = run(s3.env(&mut lifeboat()).args([
        "backup",
        "-p",
        &app.project,
        "--store",
        "s3://no-such-bucket/x",
        "-r",
        &recipient,
    ]));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("NoSuchBucket"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn sigterm_mid_backup_aborts_the_upload_and_starts_the_app_again() {
    let mut app = TestApp::new("sigterm");
    let data = app.volume("data");
    app.in_volume(&data, "head -c 700000000 /dev/urandom > /v/big");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("sigterm");
    let (_, recipient) = keygen(tempfile::tempdir().unwrap().path());
    let child = spawn_until_uploading(
        &s3,
        s3.env(&mut lifeboat()).args([
            "backup",
            "-p",
            &app.project,
            "--store",
            &store,
            "-r",
            &recipient,
            "--part-size-mib",
            "5",
        ]),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !app.running().values().any(|r| *r),
        "stopped during the backup"
    );
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    eprintln!("{}", stderr(&output));
    assert_eq!(output.status.code(), Some(130), "{}", stderr(&output));
    assert!(app.running().values().all(|r| *r), "started again");
    assert!(
        s3.open_uploads().is_empty(),
        "multipart upload aborted: {:?}",
        s3.open_uploads()
    );
    assert!(
        list_json(&s3, &store).is_empty(),
        "no manifest for an interrupted backup"
    );
    assert!(
        s3.files("sigterm").is_empty(),
        "no objects left: {:?}",
        s3.files("sigterm")
    );
}

#[test]
fn after_sigkill_mid_backup_the_next_run_starts_the_app_again_and_says_so() {
    let mut app = TestApp::new("sigkill");
    let data = app.volume("data");
    app.in_volume(&data, "head -c 500000000 /dev/urandom > /v/big");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("sigkill");
    let (_, recipient) = keygen(tempfile::tempdir().unwrap().path());
    let mut child = spawn_until_uploading(
        &s3,
        s3.env(&mut lifeboat()).args([
            "backup",
            "-p",
            &app.project,
            "--store",
            &store,
            "-r",
            &recipient,
        ]),
    );
    child.kill().unwrap(); // SIGKILL: no cleanup at all
    child.wait().unwrap();
    assert!(
        !app.running().values().any(|r| *r),
        "the killed run left the app stopped"
    );
    assert!(list_json(&s3, &store).is_empty(), "no manifest");

    let output = run(s3.env(&mut lifeboat()).args([
        "backup",
        "-p",
        &app.project,
        "--store",
        &store,
        "-r",
        &recipient,
    ]));
    assert!(output.status.success());
    assert!(
        stderr(&output).contains("ended without starting the app again"),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("removing the stale lock"),
        "the dead run's lock is taken over: {}",
        stderr(&output)
    );
    assert!(app.running().values().all(|r| *r));
    assert_eq!(list_json(&s3, &store).len(), 1);
    let helpers = docker(&["ps", "-aq", "--filter", "label=io.lifeboat.helper=1"]);
    let ours: Vec<_> = helpers
        .lines()
        .filter(|id| docker(&["inspect", "-f", "{{json .Mounts}}", id]).contains(&data))
        .collect();
    assert!(
        ours.is_empty(),
        "the killed run's helper container was removed"
    );
}

#[test]
fn a_second_run_of_the_same_app_waits_its_turn() {
    let mut app = TestApp::new("lock");
    let data = app.volume("data");
    app.in_volume(&data, "head -c 500000000 /dev/urandom > /v/big");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("lockbucket");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let first = spawn_until_uploading(
        &s3,
        s3.env(&mut lifeboat()).args([
            "backup",
            "-p",
            &app.project,
            "--store",
            &store,
            "-r",
            &recipient,
        ]),
    );
    let second = run(s3.env(&mut lifeboat()).args([
        "backup",
        "-p",
        &app.project,
        "--store",
        &store,
        "-r",
        &recipient,
    ]));
    assert_eq!(second.status.code(), Some(5), "{}", stderr(&second));
    // On one host the local claim answers first; another host meets the store's lock.
    assert!(
        stderr(&second).contains(&format!(
            "another lifeboat run of '{}' is active on this host",
            app.project
        )),
        "{}",
        stderr(&second)
    );
    let restore = run(s3
        .env(&mut lifeboat())
        .args(["restore", "-p", &app.project, "--store", &store, "-i"])
        .arg(&key));
    assert_eq!(restore.status.code(), Some(5), "{}", stderr(&restore));
    let output = first.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(app.running().values().all(|r| *r));
    // The lock is gone: the next run goes ahead.
    let output =
        run(s3
            .env(&mut lifeboat())
            .args(["unlock", "-p", &app.project, "--store", &store]));
    assert!(
        stderr(&output).contains("was not locked"),
        "{}",
        stderr(&output)
    );
    backup_ok(&s3, &app.project, &store, &recipient);
}

/// A local volume is read from its directory on this host rather than through Docker's archive
/// API (twice as fast cold). The tar it makes is the one Docker makes, entry for entry: types,
/// modes, numeric owners, mtimes, sizes, hard and symbolic links, long names, a device node, a
/// FIFO, second names of a symlink and a FIFO; and both restore to the identical tree, file
/// capability included (the Docker-read one failed the restore's tar policy before 2026-12-02:
/// it refused a hard link to anything but a file).
#[test]
fn a_local_volume_read_on_this_host_is_the_tree_docker_reads() {
    let mut app = TestApp::new("hostread");
    let data = app.volume("data");
    app.in_volume(&data, &fill_script(3));
    let long = "d".repeat(90);
    app.in_volume(
        &data,
        &format!(
            "set -e; cd /v; mkdir -p {long}/{long}; echo deep > {long}/{long}/{long}.txt
            ln -s {long}/{long}/{long}.txt long-link; ln {long}/{long}/{long}.txt {long}/hard
            mknod null-dev c 1 3; ln long-link long-link-hard; ln fifo fifo-hard"
        ),
    );
    let dir = docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", &data]);
    let capable = std::path::Path::new(&dir).join("setuid.bin");
    set_capability(&capable);
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let before = app.snapshot(&data);
    let s3 = S3Server::start();
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let (direct, through) = (s3.bucket("direct"), s3.bucket("through"));

    let output = backup_with(&s3, &app.project, &direct, &recipient, &["-v"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let said = "reading the volume from its directory on this host";
    assert!(stderr(&output).contains(said), "{}", stderr(&output));
    let output = backup_with(
        &s3,
        &app.project,
        &through,
        &recipient,
        &["-v", "--read-through-docker"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stderr(&output).contains(said), "{}", stderr(&output));

    let listing = |store: &str| {
        let output = with_key(&s3, "dump", &app.project, store, &[], &key);
        assert!(output.status.success(), "{}", stderr(&output));
        let tar = work.path().join("volume.tar");
        std::fs::write(&tar, &output.stdout).unwrap();
        let listed = std::process::Command::new("tar")
            .args(["--numeric-owner", "--full-time", "-tvvf"])
            .arg(&tar)
            .output()
            .unwrap();
        assert!(listed.status.success());
        String::from_utf8(listed.stdout).unwrap()
    };
    let (read_here, read_by_docker) = (listing(&direct), listing(&through));
    assert_eq!(read_here, read_by_docker);
    for entry in [
        "./null-dev",
        "./fifo",
        "./hello.txt link to ./hardlink.txt",
        &format!("./{long}/hard link to ./{long}/{long}/{long}.txt"),
        &format!("./long-link -> {long}/{long}/{long}.txt"),
        "./long-link-hard link to ./long-link",
        "./fifo-hard link to ./fifo",
    ] {
        assert!(read_here.contains(entry), "{entry} in {read_here}");
    }

    for store in [&direct, &through] {
        app.in_volume(
            &data,
            "rm -rf /v/deep /v/null-dev; echo changed > /v/hello.txt",
        );
        let output = restore(&s3, &app.project, store, &key);
        assert!(output.status.success(), "{store}: {}", stderr(&output));
        assert_eq!(app.snapshot(&data), before, "{store}");
        let restored = capability(&capable);
        assert_eq!(restored, CAPABILITY.to_vec(), "the file capability");
    }
}

/// `security.capability` of cap_net_bind_service, effective (VFS_CAP_REVISION_2).
const CAPABILITY: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn set_capability(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: both strings are NUL-terminated, the value is CAPABILITY.len() bytes.
    let set = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"security.capability".as_ptr(),
            CAPABILITY.as_ptr().cast(),
            CAPABILITY.len(),
            0,
        )
    };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
}

fn capability(path: &std::path::Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut value = vec![0u8; 64];
    // SAFETY: both strings are NUL-terminated, the buffer is value.len() bytes.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"security.capability".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    assert!(n >= 0, "{}", std::io::Error::last_os_error());
    value.truncate(n as usize);
    value
}
