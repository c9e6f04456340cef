//! The sidecar image: built offline from the binary, run next to an app with the Docker socket
//! mounted and secrets as files, on a schedule.

mod common;

use common::*;
use std::process::Command;

#[test]
fn the_sidecar_image_backs_up_its_app_on_a_schedule() {
    ensure_docker();
    let tag = format!("lifeboat-test/lifeboat:sidecar-{}", std::process::id());
    let output = run(Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docker/build-local.sh"
        ))
        .arg(&tag)
        .env("BINARY", env!("CARGO_BIN_EXE_lifeboat")));
    assert!(output.status.success(), "{}", stderr(&output));
    let version = docker(&["run", "--rm", &tag, "--version"]);
    assert_eq!(version, format!("lifeboat {}", env!("CARGO_PKG_VERSION")));

    let mut app = TestApp::new("sidecar");
    let data = app.volume("data");
    app.in_volume(&data, &fill_script(1));
    app.service("web", IMAGE, &[("data", "/data")], &[], true);
    let before = app.snapshot(&data);
    let s3 = S3Server::start();
    let store = s3.bucket("sidecar");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let secrets = work.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(
        secrets.join("aws_access_key_id"),
        format!("{S3_ACCESS_KEY}\n"),
    )
    .unwrap();
    std::fs::write(
        secrets.join("aws_secret_access_key"),
        format!("{S3_SECRET_KEY}\n"),
    )
    .unwrap();
    std::fs::write(
        secrets.join("recipients.txt"),
        format!("# the owner's recipient\n{recipient}\n"),
    )
    .unwrap();
    std::fs::copy(backup_key(), secrets.join("backup.key")).unwrap();
    // Secret files readable by others are refused, as ssh does: Docker secrets without swarm
    // are bind mounts and keep the host file's mode.
    use std::os::unix::fs::PermissionsExt;
    for file in ["aws_access_key_id", "aws_secret_access_key"] {
        std::fs::set_permissions(secrets.join(file), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }

    // The sidecar carries the app's compose project label, as in a compose file: it must leave
    // itself out of the containers it stops.
    let name = format!("{}-lifeboat-1", app.project);
    // The volumes' directory, read-only at the same path, as the README suggests: the sidecar
    // reads the volume there rather than through Docker's archive API.
    let volumes = format!("{}/volumes", docker(&["info", "-f", "{{.DockerRootDir}}"]));
    let output = run(Command::new("docker").args([
        "run",
        "--name",
        &name,
        "--network",
        "host",
        "--label",
        &format!("com.docker.compose.project={}", app.project),
        "--label",
        "com.docker.compose.service=lifeboat",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        &format!("{volumes}:{volumes}:ro"),
        "-v",
        &format!("{}:/run/secrets:ro", secrets.display()),
        "-e",
        &format!("AWS_ENDPOINT_URL={}", s3.endpoint),
        "-e",
        "AWS_REGION=us-east-1",
        "-e",
        "AWS_EC2_METADATA_DISABLED=true",
        "-e",
        "AWS_ACCESS_KEY_ID_FILE=/run/secrets/aws_access_key_id",
        "-e",
        "AWS_SECRET_ACCESS_KEY_FILE=/run/secrets/aws_secret_access_key",
        "-e",
        "LIFEBOAT_RECIPIENTS_FILE=/run/secrets/recipients.txt",
        "-e",
        "LIFEBOAT_BACKUP_KEY_FILE=/run/secrets/backup.key",
        "-e",
        &format!("LIFEBOAT_STORE={store}"),
        &tag,
        "-v",
        "schedule",
        "--cron",
        "*/2 * * * * *",
        "--runs",
        "2",
        "--project",
        &app.project,
    ]));
    let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    let _ = Command::new("docker").args(["rmi", &tag]).output();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("leaving out lifeboat's own container"),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("reading the volume from its directory on this host"),
        "{}",
        stderr(&output)
    );
    assert_eq!(list_json(&s3, &store).len(), 2, "two scheduled backups");
    assert!(app.running().values().all(|r| *r));
    assert!(
        !stderr(&output).contains(S3_SECRET_KEY),
        "no secret in the logs"
    );

    // What the sidecar stored restores byte for byte with the owner key.
    app.wipe(&data);
    let output = restore(&s3, &app.project, &store, &key);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(app.snapshot(&data), before);
    assert!(app.running().values().all(|r| *r));
}
