//! A restore that fails or is killed after it began replacing data never leaves the app running
//! on half-written volumes: the app stays stopped, every later run refuses to go on, and the
//! operator either finishes the restore (runs it again) or rolls back to the safety copy of
//! what was there before. Also: `--dry-run` shows the plan and changes nothing.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A tmpfs of `size` mounted on a fresh folder, unmounted on drop.
struct SmallDisk {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> Self {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("small");
        std::fs::create_dir(&dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            mounted.status.success(),
            "mounting a tmpfs needs root (the CI runs as root): {}",
            stderr(&mounted)
        );
        Self {
            dir,
            _parent: parent,
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).output();
    }
}

/// A container of `app` as service `web`, bind-mounting `host` at /srv/data (writable).
fn web_with_bind(app: &mut TestApp, host: &Path) -> String {
    let name = format!("{}-web-1", app.project);
    docker(&[
        "create",
        "--name",
        &name,
        "--label",
        &format!("com.docker.compose.project={}", app.project),
        "--label",
        "com.docker.compose.service=web",
        "--restart",
        "always",
        "-v",
        &format!("{}:/srv/data", host.display()),
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    ]);
    docker(&["start", &name]);
    app.containers.push(name.clone());
    name
}

fn tree(dir: &Path) -> String {
    let output = run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && find . -print | sort | while read -r f; do if [ -f \"$f\" ]; then echo \"$f $(stat -c '%a %u' \"$f\") $(sha256sum < \"$f\" | cut -c1-16)\"; else echo \"$f $(stat -c '%a %u' \"$f\")\"; fi; done",
        dir.display()
    )));
    stdout(&output)
}

/// The safety-copy volumes of `target` (a volume name or host path).
fn safety_copies(target: &str) -> Vec<String> {
    docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label=io.lifeboat.safety-copy-of={target}"),
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

/// The disk of the target fills up half way through the write: a real failure after
/// replacement began.
#[test]
fn a_restore_that_fails_half_way_keeps_the_app_stopped_until_rolled_back() {
    // The backup: 8 MiB in the bind mount of app A.
    let big = tempfile::tempdir().unwrap();
    let script = format!(
        "set -e; cd {}; head -c 8388608 /dev/urandom > big.bin; mkdir sub; echo a > sub/a; chmod 750 sub",
        big.path().display()
    );
    assert!(
        run(Command::new("sh").args(["-c", &script]))
            .status
            .success()
    );
    let mut old = TestApp::new("halfold");
    web_with_bind(&mut old, big.path());
    let s3 = S3Server::start();
    let store = s3.bucket("half");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let output = run(s3.env(&mut lifeboat()).args([
        "backup",
        "-p",
        &old.project,
        "--store",
        &store,
        "-r",
        &recipient,
        "--bind-path",
        "/srv/data",
    ]));
    assert!(output.status.success(), "{}", stderr(&output));

    // App B keeps its data on a 4 MiB disk: the 8 MiB backup cannot fit.
    let small = SmallDisk::new("4m");
    let script = format!(
        "set -e; cd {}; head -c 1048576 /dev/urandom > db.bin; echo precious > keep.txt; chmod 640 keep.txt",
        small.dir.display()
    );
    assert!(
        run(Command::new("sh").args(["-c", &script]))
            .status
            .success()
    );
    let before = tree(&small.dir);
    let mut new = TestApp::new("halfnew");
    let web = web_with_bind(&mut new, &small.dir);
    let args = |extra: &[&str]| {
        let mut cmd = lifeboat();
        s3.env(&mut cmd)
            .args([
                "restore",
                "-p",
                &new.project,
                "--name",
                &old.project,
                "--store",
                &store,
                "--bind-path",
                "/srv/data",
                "-i",
            ])
            .arg(&key)
            .args(extra);
        run(&mut cmd)
    };
    let output = args(&[]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("did not finish") && err.contains("--rollback"),
        "{err}"
    );
    assert!(
        err.contains("no space") || err.contains("space left"),
        "{err}"
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &web]),
        "false",
        "the app stays stopped"
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", &web]),
        "no",
        "dockerd will not start it either"
    );

    // Every later run refuses to go on over it, and says how to finish or roll back.
    let output = run(s3.env(&mut lifeboat()).args([
        "backup",
        "-p",
        &new.project,
        "--store",
        &store,
        "-r",
        &recipient,
        "--bind-path",
        "/srv/data",
    ]));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("did not finish") && stderr(&output).contains("--rollback"),
        "{}",
        stderr(&output)
    );
    // Nor does a prune of the backups the restore is restoring.
    let output = run(s3.env(&mut lifeboat()).args([
        "prune",
        "-p",
        &old.project,
        "--store",
        &store,
        "--keep-last",
        "1",
    ]));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &web]),
        "false"
    );

    // Rolling back puts back what was there, restarts the app, and drops the safety copy.
    assert!(
        err.contains(&format!(
            "`lifeboat restore --project {} --name {} --rollback`",
            new.project, old.project
        )),
        "{err}"
    );
    let output = run(s3.env(&mut lifeboat()).args([
        "restore",
        "-p",
        &new.project,
        "--name",
        &old.project,
        "--store",
        &store,
        "--rollback",
    ]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(tree(&small.dir), before);
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &web]),
        "true"
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", &web]),
        "always"
    );
    assert_eq!(
        safety_copies(&small.dir.display().to_string()),
        Vec::<String>::new()
    );
    let output = run(s3.env(&mut lifeboat()).args([
        "backup",
        "-p",
        &new.project,
        "--store",
        &store,
        "-r",
        &recipient,
        "--bind-path",
        "/srv/data",
    ]));
    assert!(
        output.status.success(),
        "the next run goes on: {}",
        stderr(&output)
    );
    drop(new);
    drop(old);
}

/// SIGKILL while the volume is being replaced: the next run refuses; running the restore
/// again finishes it.
#[test]
fn a_restore_killed_while_replacing_is_finished_by_running_it_again() {
    let mut app = TestApp::new("killrestore");
    let data = app.volume("data");
    app.in_volume(&data, &fill_script(150));
    let web = app.service("web", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("kill");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    backup_ok(&s3, &app.project, &store, &recipient);
    let backed_up = app.snapshot(&data);
    app.in_volume(&data, "echo newer > /v/hello.txt; rm /v/big.bin");

    let mut child = s3
        .env(&mut lifeboat())
        .args(["restore", "-v", "-p", &app.project, "--store", &store, "-i"])
        .arg(&key)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    loop {
        let line = lines
            .next()
            .expect("restore ended before replacing")
            .unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("replacing") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &web]),
        "false",
        "{seen}"
    );

    let output = run(s3.env(&mut lifeboat()).args([
        "backup",
        "-p",
        &app.project,
        "--store",
        &store,
        "-r",
        &recipient,
    ]));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("did not finish"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &web]),
        "false"
    );

    // Finishing means the same backup into the same volumes: nothing else is let through.
    let elsewhere = app.volume("elsewhere");
    let output = run(s3
        .env(&mut lifeboat())
        .args([
            "restore",
            "-p",
            &app.project,
            "--store",
            &store,
            "--map-volume",
        ])
        .arg(format!("data={elsewhere}"))
        .arg("-i")
        .arg(&key));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("must be finished first"),
        "{}",
        stderr(&output)
    );

    let output = restore(&s3, &app.project, &store, &key);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(app.snapshot(&data), backed_up);
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &web]),
        "true"
    );
    assert_eq!(safety_copies(&data), Vec::<String>::new());
}

/// `--dry-run` prints every decision and changes nothing: no container restarted, no volume
/// written, nothing downloaded.
#[test]
fn a_dry_run_shows_the_plan_and_changes_nothing() {
    let mut app = TestApp::new("dryrun");
    let data = app.volume("data");
    let empty = app.volume("empty");
    app.in_volume(&data, "echo genuine > /v/db");
    let web = app.service(
        "web",
        IMAGE,
        &[("data", "/data"), ("empty", "/empty")],
        &[],
        true,
    );
    let s3 = S3Server::start();
    let store = s3.bucket("dryrun");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    backup_ok(&s3, &app.project, &store, &recipient);
    app.in_volume(&data, "echo later > /v/db");
    let started = docker(&["inspect", "-f", "{{.State.StartedAt}}", &web]);

    let output = run(s3
        .env(&mut lifeboat())
        .args([
            "restore",
            "--dry-run",
            "-p",
            &app.project,
            "--store",
            &store,
            "-i",
        ])
        .arg(&key));
    assert!(output.status.success(), "{}", stderr(&output));
    let plan = stdout(&output);
    for needle in [
        "authenticated: signed by SHA256:",
        "the app here runs the images the backup recorded",
        &format!("volume {data}"),
        "replace its contents",
        &format!("kept in volume {data}.lifeboat-safety-copy"),
        &format!("volume {empty}"),
        &format!("stop {web}"),
        "nothing was changed",
    ] {
        assert!(plan.contains(needle), "{needle}: {plan}");
    }
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.StartedAt}}", &web]),
        started
    );
    assert_eq!(app.in_volume(&data, "cat /v/db"), "later");
}
