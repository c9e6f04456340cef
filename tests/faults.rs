//! Faults outside lifeboat: the Docker engine restarting mid-backup, and a full disk where the
//! local state record is written. Each asserts what the operator cares about: the app runs
//! again (or was never stopped), no backup that looks complete, no multipart upload left open.

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use common::*;
use proxy::FaultProxy;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Docker engine of the test's own (its own data root, containerd and socket), so it can be
/// restarted without disturbing the tests that share the machine's engine.
struct PrivateEngine {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateEngine {
    fn start() -> Self {
        ensure_docker();
        let mut engine = Self {
            dir: tempfile::tempdir_in("/tmp").unwrap(),
            child: None,
        };
        engine.launch();
        // The test image, from the machine's engine.
        let mut save = Command::new("docker")
            .args(["save", IMAGE])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let loaded = Command::new("docker")
            .args(["-H", &engine.host(), "load"])
            .stdin(save.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(save.wait().unwrap().success());
        assert!(loaded.status.success(), "{}", stderr(&loaded));
        engine
    }

    fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("sock").display())
    }

    fn launch(&mut self) {
        let root = self.dir.path();
        let log = std::fs::File::create(root.join("dockerd.log")).unwrap();
        // In its own network namespace: a second dockerd in the host's would tear down the
        // machine engine's docker0 bridge when it stops.
        let child = Command::new("unshare")
            .args(["--net", "dockerd"])
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("dockerd.pid"))
            .args(["--host", &self.host()])
            .args(["--bridge", "none", "--iptables=false", "--ip6tables=false"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd is installed (.ci/test installs docker.io)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "the private dockerd did not start: {}",
                std::fs::read_to_string(root.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn answers(&self) -> bool {
        Command::new("docker")
            .args(["-H", &self.host(), "info"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stops the engine with `signal` (TERM: like `systemctl restart docker`; KILL: a crash),
    /// then starts it again on the same data after `pause`.
    fn restart(&mut self, signal: &str, pause: Duration) {
        self.signal_and_wait(signal);
        std::thread::sleep(pause);
        self.launch();
    }

    fn stop(&mut self) {
        self.signal_and_wait("TERM");
    }

    fn signal_and_wait(&mut self, signal: &str) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    fn docker(&self, args: &[&str]) -> String {
        let output = Command::new("docker")
            .args(["-H", &self.host()])
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "docker {args:?}: {}",
            stderr(&output)
        );
        stdout(&output).trim().to_string()
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        if self.child.is_some() {
            let containers = self.docker(&["ps", "-aq"]);
            for id in containers.lines() {
                let _ = Command::new("docker")
                    .args(["-H", &self.host(), "rm", "-f", id])
                    .output();
            }
        }
        self.stop();
    }
}

#[test]
fn dockerd_restarted_or_crashed_mid_backup_leaves_the_app_running() {
    let mut engine = PrivateEngine::start();
    let project = format!("lbtengine{}", std::process::id());
    let volume = format!("{project}_data");
    engine.docker(&[
        "volume",
        "create",
        "--label",
        &format!("com.docker.compose.project={project}"),
        "--label",
        "com.docker.compose.volume=data",
        &volume,
    ]);
    engine.docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{volume}:/v"),
        IMAGE,
        "sh",
        "-c",
        "head -c 300000000 /dev/urandom > /v/big && echo keep > /v/small",
    ]);
    let container = format!("{project}-app-1");
    engine.docker(&[
        "run",
        "-d",
        "--name",
        &container,
        "--label",
        &format!("com.docker.compose.project={project}"),
        "--label",
        "com.docker.compose.service=app",
        "-v",
        &format!("{volume}:/data"),
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    ]);
    let s3 = S3Server::start();
    let store = s3.bucket("engine");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let sums = |engine: &PrivateEngine| {
        engine.docker(&[
            "run",
            "--rm",
            "-v",
            &format!("{volume}:/v"),
            IMAGE,
            "sha256sum",
            "/v/big",
            "/v/small",
        ])
    };
    let original = sums(&engine);

    let host = engine.host();
    let backup = || {
        spawn_until_uploading(
            &s3,
            s3.env(&mut lifeboat()).env("DOCKER_HOST", &host).args([
                "backup",
                "-p",
                &project,
                "--store",
                &store,
                "-r",
                &recipient,
                // What the engine's restart does to its archive stream is the point here.
                "--read-through-docker",
            ]),
        )
    };
    let running = |engine: &PrivateEngine| {
        engine.docker(&["inspect", "-f", "{{.State.Running}}", &container]) == "true"
    };

    // A graceful restart (SIGTERM): dockerd finishes the archive stream it is serving before it
    // exits, so the backup completes; the start waits for the engine to come back.
    let child = backup();
    engine.restart("TERM", Duration::from_secs(3));
    let output = child.wait_with_output().unwrap();
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    assert!(err.contains("retrying the start"), "{err}");
    assert!(
        running(&engine),
        "the app runs again once the engine is back"
    );
    let made_during_restart = list_json(&s3, &store);
    assert_eq!(made_during_restart.len(), 1);
    let made_during_restart = made_during_restart[0]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();

    // A crash (SIGKILL) mid-stream: the backup fails, nothing that looks complete is stored,
    // and the app is started once the engine is back.
    let objects_before = s3.files("engine");
    let child = backup();
    engine.restart("KILL", Duration::from_secs(3));
    let output = child.wait_with_output().unwrap();
    let err = stderr(&output);
    eprintln!("{err}");
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("Docker"), "the message names Docker: {err}");
    assert!(
        running(&engine),
        "the app runs again once the engine is back"
    );
    assert_eq!(
        list_json(&s3, &store).len(),
        1,
        "no new backup looks complete"
    );
    assert!(s3.open_uploads().is_empty(), "{:?}", s3.open_uploads());
    assert_eq!(
        s3.files("engine"),
        objects_before,
        "no object of the failed run is left"
    );
    assert_eq!(
        engine.docker(&[
            "run",
            "--rm",
            "-v",
            &format!("{volume}:/v"),
            IMAGE,
            "cat",
            "/v/small"
        ]),
        "keep",
        "the volume is untouched"
    );

    // The next run works, and cleans up the helper container the broken run could not remove.
    assert_ne!(
        engine.docker(&["ps", "-aq", "--filter", "label=io.lifeboat.helper"]),
        "",
        "the crash left a helper container behind"
    );
    let output = run(s3
        .env(&mut lifeboat())
        .env("DOCKER_HOST", engine.host())
        .args([
            "backup", "-p", &project, "--store", &store, "-r", &recipient,
        ]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(list_json(&s3, &store).len(), 2);
    assert_eq!(
        engine.docker(&["ps", "-aq", "--filter", "label=io.lifeboat.helper"]),
        ""
    );

    // The backup made while dockerd restarted restores byte for byte.
    engine.docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{volume}:/v"),
        IMAGE,
        "sh",
        "-c",
        "rm -f /v/big && echo changed > /v/small",
    ]);
    let output = run(s3
        .env(&mut lifeboat())
        .env("DOCKER_HOST", engine.host())
        .args([
            "restore",
            "-p",
            &project,
            "--store",
            &store,
            "--backup",
            &made_during_restart,
            "-i",
        ])
        .arg(&key));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(sums(&engine), original, "restored byte for byte");
    assert!(running(&engine), "the app runs after the restore");
}

/// A small tmpfs, filled up, unmounted on drop.
struct FullDisk {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl FullDisk {
    fn new() -> Self {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("full");
        std::fs::create_dir(&dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            mounted.status.success(),
            "mounting a tmpfs needs root (the CI runs as root): {}",
            stderr(&mounted)
        );
        let _ = std::fs::write(dir.join("filler"), vec![0u8; 64 * 1024]);
        Self {
            dir,
            _parent: parent,
        }
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

#[test]
fn a_full_disk_for_the_state_record_stops_nothing() {
    let mut app = TestApp::new("diskfull");
    app.volume("data");
    let container = app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let started_at = || docker(&["inspect", "-f", "{{.State.StartedAt}}", &container]);
    let before = started_at();
    let s3 = S3Server::start();
    let store = s3.bucket("diskfull");
    let work = tempfile::tempdir().unwrap();
    let (_, recipient) = keygen(work.path());
    let full = FullDisk::new();

    let output = run(s3
        .env(&mut lifeboat())
        .env("LIFEBOAT_STATE_DIR", full.path())
        .args([
            "backup",
            "-p",
            &app.project,
            "--store",
            &store,
            "-r",
            &recipient,
        ]));
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("No space left on device") && err.contains(&full.path().display().to_string()),
        "the message names the problem and the place: {err}"
    );
    assert_eq!(started_at(), before, "nothing was stopped");
    assert!(list_json(&s3, &store).is_empty());
    assert!(s3.open_uploads().is_empty());

    // With room again, the same command works (and the lock was released).
    let output = run(s3
        .env(&mut lifeboat())
        .env("LIFEBOAT_STATE_DIR", work.path())
        .args([
            "backup",
            "-p",
            &app.project,
            "--store",
            &store,
            "-r",
            &recipient,
        ]));
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn sigint_mid_backup_and_signals_mid_restore() {
    let mut app = TestApp::new("signals");
    let data = app.volume("data");
    app.in_volume(
        &data,
        "head -c 300000000 /dev/urandom > /v/big && echo backed-up > /v/marker",
    );
    let container = app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let started_at = || docker(&["inspect", "-f", "{{.State.StartedAt}}", &container]);
    let s3 = S3Server::start();
    let store = s3.bucket("signals");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());

    // SIGINT (Ctrl-C) mid-backup: exit 130, upload aborted, the app runs again.
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
        ]),
    );
    signal(&child, "INT");
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", stderr(&output));
    assert!(app.running().values().all(|r| *r));
    assert!(s3.open_uploads().is_empty());
    assert!(list_json(&s3, &store).is_empty());

    backup_ok(&s3, &app.project, &store, &recipient);
    let backed_up = app.snapshot(&data);
    app.in_volume(&data, "echo changed > /v/marker");
    let changed = app.snapshot(&data);
    let restore = || {
        s3.env(&mut lifeboat())
            .args(["restore", "-p", &app.project, "--store", &store, "-i"])
            .arg(&key)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // SIGINT while the backup is being verified (its download slowed down by a proxy, and the
    // signal sent once the object's GET went through it): nothing changed, nothing stopped.
    let proxy = FaultProxy::start(s3.port);
    proxy.throttle_downloads(5_000_000);
    let before = started_at();
    let child = s3
        .env(&mut lifeboat())
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", proxy.port),
        )
        .args(["restore", "-p", &app.project, "--store", &store, "-i"])
        .arg(&key)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !proxy.requests().contains(".tar.zst.age HTTP/1.1") {
        assert!(
            Instant::now() < deadline,
            "the restore never downloaded the object"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(&child, "INT");
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", stderr(&output));
    assert_eq!(app.snapshot(&data), changed, "the volume is untouched");
    assert_eq!(started_at(), before, "the app was never stopped");

    // SIGTERM once the volumes are being replaced: the restore finishes (a half-replaced app
    // is worse than a late exit), says so, and the app runs again.
    let child = restore();
    let deadline = Instant::now() + Duration::from_secs(120);
    while docker(&["inspect", "-f", "{{.State.Running}}", &container]) == "true" {
        assert!(
            Instant::now() < deadline,
            "the restore never stopped the app"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, "TERM");
    let output = child.wait_with_output().unwrap();
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    assert!(err.contains("finishing the restore"), "{err}");
    assert_eq!(
        app.snapshot(&data),
        backed_up,
        "the volume holds the backup"
    );
    assert!(app.running().values().all(|r| *r));
}

/// The deleted-but-open spool files of process `pid` under `dir`, read through /proc.
fn open_spool_files(pid: u32, dir: &Path) -> Vec<Vec<u8>> {
    let mut contents = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return contents;
    };
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if target.starts_with(dir) {
            contents.push(std::fs::read(fd.path()).unwrap_or_default());
        }
    }
    contents
}

#[test]
fn a_slow_uplink_does_not_keep_the_app_down_and_the_spool_holds_only_ciphertext() {
    let mut app = TestApp::new("spool");
    let data = app.volume("data");
    app.in_volume(
        &data,
        "head -c 30000000 /dev/urandom > /v/big && for i in $(seq 1 20000); do echo PLAINTEXT-MARKER-$i; done > /v/text",
    );
    let container = app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let running = || docker(&["inspect", "-f", "{{.State.Running}}", &container]) == "true";
    let s3 = S3Server::start();
    let store = s3.bucket("spool");
    let proxy = FaultProxy::start(s3.port);
    proxy.throttle_uploads(3_000_000);
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let (key, recipient) = keygen(work.path());
    let before = app.snapshot(&data);

    let mut child = s3
        .env(&mut lifeboat())
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", proxy.port),
        )
        .args([
            "backup",
            "-p",
            &app.project,
            "--store",
            &store,
            "-r",
            &recipient,
        ])
        // 10 MiB of parts in memory; the rest must wait in the spool.
        .args([
            "--part-size-mib",
            "5",
            "--parts-in-flight",
            "2",
            "--spool-dir",
        ])
        .arg(&spool)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while running() {
        assert!(Instant::now() < deadline && child.try_wait().unwrap().is_none());
        std::thread::sleep(Duration::from_millis(10));
    }
    // Stopped: the volume is read at compression speed into the spool...
    while !running() {
        assert!(Instant::now() < deadline && child.try_wait().unwrap().is_none());
        std::thread::sleep(Duration::from_millis(10));
    }
    // ...and the app runs again while the upload goes on at the uplink's pace.
    assert!(
        child.try_wait().unwrap().is_none(),
        "the app ran again only once the backup had ended"
    );
    assert!(!s3.open_uploads().is_empty(), "the upload is still going");
    let spooled = open_spool_files(child.id(), &spool);
    assert!(
        !spooled.is_empty(),
        "the spool holds the rest of the upload"
    );
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "spool files are unlinked: a crash leaves nothing behind"
    );

    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let manifest = &list_json(&s3, &store)[0];
    assert!(manifest["downtime_seconds"].as_f64().unwrap() > 0.0);

    // The spool held the stored object's own bytes, at their offsets (ranges already uploaded
    // are punched out, and read back as zeros): age ciphertext, never plaintext.
    let object = s3
        .files("spool")
        .into_iter()
        .find(|f| f.to_string_lossy().ends_with(".age"))
        .expect("the volume object");
    let object = std::fs::read(object).unwrap();
    assert!(object.starts_with(b"age-encryption.org/v1\n"));
    let mut compared = 0;
    for file in &spooled {
        assert!(
            file.len() <= object.len(),
            "the spool is one object's stream"
        );
        for (at, (spooled, stored)) in file.iter().zip(&object).enumerate() {
            if *spooled == 0 {
                continue; // punched out (already uploaded), or a zero byte either way
            }
            assert_eq!(
                spooled, stored,
                "spool byte {at} is not the stored ciphertext's"
            );
            compared += 1;
        }
    }
    assert!(
        compared > 1 << 20,
        "the spool held ciphertext: {compared} bytes compared"
    );
    app.wipe(&data);
    let output = restore(&s3, &app.project, &store, &key);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(app.snapshot(&data), before);
}

#[test]
fn a_full_spool_disk_fails_the_backup_cleanly() {
    let mut app = TestApp::new("spoolfull");
    let data = app.volume("data");
    app.in_volume(&data, "head -c 20000000 /dev/urandom > /v/big");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("spoolfull");
    let proxy = FaultProxy::start(s3.port);
    proxy.throttle_uploads(2_000_000);
    let work = tempfile::tempdir().unwrap();
    let (_, recipient) = keygen(work.path());
    let full = FullDisk::new();

    let output = run(s3
        .env(&mut lifeboat())
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", proxy.port),
        )
        .args([
            "backup",
            "-p",
            &app.project,
            "--store",
            &store,
            "-r",
            &recipient,
        ])
        .args(["--spool-size-mib", "64", "--spool-dir"])
        .arg(full.path()));
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("spool")
            && err.contains(&full.path().display().to_string())
            && err.contains("No space left on device"),
        "the message names the spool directory and the full disk: {err}"
    );
    assert!(app.running().values().all(|r| *r), "the app runs again");
    assert!(list_json(&s3, &store).is_empty());
    assert!(s3.open_uploads().is_empty(), "{:?}", s3.open_uploads());
}

/// Removes a container when dropped.
struct Removed(String);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// Something outside the app (a container lifeboat does not stop) appends to a file of the
/// volume while the backup reads it on the host: as Docker's own read does, the file is kept
/// at the size its header gave, and a warning names it.
#[test]
fn a_file_written_while_its_volume_is_read_is_kept_at_its_size_with_a_warning() {
    let mut app = TestApp::new("growing");
    let data = app.volume("data");
    app.in_volume(&data, "head -c 200000000 /dev/zero > /v/grow");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let writer = Removed(format!("{}-writer", app.project));
    docker(&[
        "run",
        "-d",
        "--name",
        &writer.0,
        "-v",
        &format!("{data}:/v"),
        IMAGE,
        "sh",
        "-c",
        "while true; do echo more >> /v/grow; done",
    ]);
    let s3 = S3Server::start();
    let store = s3.bucket("growing");
    let work = tempfile::tempdir().unwrap();
    let (_key, recipient) = keygen(work.path());

    let output = backup_with(&s3, &app.project, &store, &recipient, &["-v"]);
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    assert!(err.contains("from its directory on this host"), "{err}");
    assert!(
        err.contains("./grow: it grew while the volume was read"),
        "the warning names the file: {err}"
    );
    assert!(app.running().values().all(|r| *r), "the app runs again");
    assert!(s3.open_uploads().is_empty(), "{:?}", s3.open_uploads());
    assert_eq!(list_json(&s3, &store).len(), 1);
}
