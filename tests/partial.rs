//! Getting one thing back without touching the app: `restore --to-dir` (whole volumes or the
//! paths `--include` names) and `dump` (a volume as a tar, a file as is, a tree as a tar), from
//! a plain and from a deduplicated backup, with no Docker engine reachable, against the S3
//! server; the app's containers and volumes are left exactly as they were.

mod common;

use common::*;
use std::process::Command;

/// lifeboat with no Docker engine: DOCKER_HOST points nowhere.
fn without_docker(s3: &S3Server) -> Command {
    let mut cmd = lifeboat();
    s3.env(&mut cmd)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    cmd
}

#[test]
fn a_backup_comes_back_into_a_directory_and_to_stdout_without_the_app_or_docker() {
    let mut app = TestApp::new("partial");
    let data = app.volume("data");
    app.in_volume(&data, &fill_script(2));
    app.in_volume(
        &data,
        "mkdir -p /v/etc/app && echo 'port = 5432' > /v/etc/app/app.conf",
    );
    let web = app.service("web", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let before = app.snapshot(&data);
    for dedup in [false, true] {
        let store = s3.bucket(if dedup { "partial-dedup" } else { "partial" });
        let extra: &[&str] = if dedup { &["--dedup"] } else { &[] };
        let output = backup_with(&s3, &app.project, &store, &recipient, extra);
        assert!(output.status.success(), "{}", stderr(&output));
        let started = docker(&["inspect", "-f", "{{.State.StartedAt}}", &web]);

        // The whole volume into a directory: the same tree (setuid dropped: a host directory).
        let dir = work.path().join(format!("out-{dedup}"));
        let output = run(without_docker(&s3)
            .args(["restore", "-p", &app.project, "--store", &store, "--to-dir"])
            .arg(&dir)
            .arg("-i")
            .arg(&key));
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(
            stdout(&output).contains("wrote volume"),
            "{}",
            stdout(&output)
        );
        let expected = before.replace("./setuid.bin F 4755", "./setuid.bin F 755");
        assert_eq!(
            app.snapshot_dir(&dir.join("data")),
            expected,
            "dedup={dedup}"
        );

        // Never over what is there.
        let output = run(without_docker(&s3)
            .args(["restore", "-p", &app.project, "--store", &store, "--to-dir"])
            .arg(&dir)
            .arg("-i")
            .arg(&key));
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        assert!(
            stderr(&output).contains("is not empty"),
            "{}",
            stderr(&output)
        );

        // Only the paths asked for.
        let some = work.path().join(format!("some-{dedup}"));
        let output = run(without_docker(&s3)
            .args([
                "restore",
                "-p",
                &app.project,
                "--store",
                &store,
                "--volume",
                "data",
            ])
            .args([
                "--include",
                "/etc/app",
                "--include",
                "hello.txt",
                "--to-dir",
            ])
            .arg(&some)
            .arg("-i")
            .arg(&key));
        assert!(output.status.success(), "{}", stderr(&output));
        let got = some.join("data");
        assert_eq!(
            std::fs::read_to_string(got.join("etc/app/app.conf")).unwrap(),
            "port = 5432\n"
        );
        assert_eq!(
            std::fs::read_to_string(got.join("hello.txt")).unwrap(),
            "hello\n"
        );
        assert!(!got.join("big.bin").exists() && !got.join("deep").exists());

        // dump: one file as is, a tree as a tar, the whole volume as a tar.
        let file = run(without_docker(&s3)
            .args([
                "dump",
                "-p",
                &app.project,
                "--store",
                &store,
                "/etc/app/app.conf",
                "-i",
            ])
            .arg(&key));
        assert!(file.status.success(), "{}", stderr(&file));
        assert_eq!(file.stdout, b"port = 5432\n");
        let tree = run(without_docker(&s3)
            .args([
                "dump",
                "-p",
                &app.project,
                "--store",
                &store,
                "--volume",
                "data",
                "deep",
                "-i",
            ])
            .arg(&key));
        assert!(tree.status.success(), "{}", stderr(&tree));
        let listed = tar_list(&tree.stdout);
        assert!(
            listed.contains("deep/a/b/c/text.txt") && !listed.contains("hello.txt"),
            "{listed}"
        );
        let whole = run(without_docker(&s3)
            .args(["dump", "-p", &app.project, "--store", &store, "-i"])
            .arg(&key));
        assert!(whole.status.success(), "{}", stderr(&whole));
        let listed = tar_list(&whole.stdout);
        assert!(
            listed.contains("big.bin") && listed.contains("pgdata/PG_VERSION"),
            "{listed}"
        );
        let missing = run(without_docker(&s3)
            .args([
                "dump",
                "-p",
                &app.project,
                "--store",
                &store,
                "no/such/file",
                "-i",
            ])
            .arg(&key));
        assert_eq!(missing.status.code(), Some(2));
        assert!(
            stderr(&missing).contains("nothing at 'no/such/file'"),
            "{}",
            stderr(&missing)
        );

        // The app was never touched.
        assert_eq!(
            docker(&["inspect", "-f", "{{.State.StartedAt}}", &web]),
            started
        );
        assert_eq!(app.snapshot(&data), before);
    }
}

fn tar_list(tar: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("tar")
        .args(["-tf", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(tar).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "not a tar");
    String::from_utf8_lossy(&output.stdout).into_owned()
}
