//! Restore that a disaster-recovery runbook can trust: exactly the backed-up tree, fresh hosts,
//! renamed projects, and hostile archives refused before any write.

mod common;

use common::*;
use std::process::Command;

#[test]
fn a_fresh_host_gets_its_volumes_created_with_compose_labels() {
    let mut app = TestApp::new("fresh");
    let db = app.volume("db");
    app.in_volume(&db, &fill_script(3));
    app.service("db", IMAGE, &[("db", "/var/lib/db")], &[], true);
    let before = app.snapshot(&db);
    let labels_before = docker(&["volume", "inspect", "-f", "{{json .Labels}}", &db]);
    let s3 = S3Server::start();
    let store = s3.bucket("fresh");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    backup_ok(&s3, &app.project, &store, &recipient);

    // The server burned: no container, no volume.
    for c in &app.containers {
        docker(&["rm", "-f", c]);
    }
    docker(&["volume", "rm", &db]);

    // Without containers the version check cannot pass; it says what to do.
    let output = restore(&s3, &app.project, &store, &key);
    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).contains("No container of the app exists here"),
        "{}",
        stderr(&output)
    );

    // Restoring only the volumes creates them, labelled so compose adopts them.
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
    assert_eq!(
        docker(&["volume", "inspect", "-f", "{{json .Labels}}", &db]),
        labels_before
    );
    assert_eq!(app.snapshot(&db), before);
}

#[test]
fn a_renamed_project_and_a_mapped_volume_restore_by_compose_name() {
    let mut old = TestApp::new("renameold");
    let data = old.volume("data");
    let extra = old.volume("extra");
    old.in_volume(&data, &fill_script(1));
    old.in_volume(&extra, "echo extra > /v/e");
    old.service(
        "web",
        IMAGE,
        &[("data", "/data"), ("extra", "/extra")],
        &[],
        true,
    );
    let s3 = S3Server::start();
    let store = s3.bucket("rename");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    backup_ok(&s3, &old.project, &store, &recipient);

    // New hardware, new project name; the "extra" volume is now called "more".
    let mut new = TestApp::new("renamenew");
    let new_data = new.volume("data");
    let more = new.volume("more");
    new.service(
        "web",
        IMAGE,
        &[("data", "/data"), ("more", "/extra")],
        &[],
        true,
    );
    let output = run(s3
        .env(&mut lifeboat())
        .args([
            "restore",
            "-p",
            &new.project,
            "--name",
            &old.project,
            "--store",
            &store,
            "--map-volume",
            &format!("extra={more}"),
            "-i",
        ])
        .arg(&key));
    assert!(output.status.success());
    assert_eq!(new.snapshot(&new_data), old.snapshot(&data));
    assert_eq!(new.in_volume(&more, "cat /v/e"), "extra");
    assert!(new.running().values().all(|r| *r));
}

/// Someone with write access to the bucket replaces an object by a well-formed, correctly
/// encrypted archive with a `..` entry and fixes the manifest's sizes and hash to match. The
/// signature check alone refuses that (tests/authenticity.rs); here the operator even trusts
/// unsigned backups (`--allow-unsigned`, the manifest turned into format 1), and the tar policy
/// still refuses the entry before anything is written.
#[test]
fn a_hostile_archive_is_refused_before_any_volume_is_written() {
    let mut app = TestApp::new("hostile");
    let data = app.volume("data");
    app.in_volume(&data, "echo precious > /v/db");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("hostile");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    backup_ok(&s3, &app.project, &store, &recipient);

    let tar_path = work.path().join("evil.tar");
    let mut tar = Vec::new();
    for (name, body) in [
        ("./", &b""[..]),
        ("./ok", b"fine"),
        ("./../../escape", b"pwned"),
    ] {
        let mut header = tokio_tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(if body.is_empty() {
            tokio_tar::EntryType::Directory
        } else {
            tokio_tar::EntryType::Regular
        });
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.extend_from_slice(header.as_bytes());
        tar.extend_from_slice(body);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    tar.extend_from_slice(&[0u8; 1024]);
    std::fs::write(&tar_path, &tar).unwrap();
    let sealed = work.path().join("evil.age");
    let output = run(Command::new("bash").arg("-c").arg(format!(
        "zstd -q -c {} | age -r {recipient} > {}",
        tar_path.display(),
        sealed.display()
    )));
    assert!(output.status.success());

    let manifest_file = s3
        .files("hostile")
        .into_iter()
        .find(|p| p.ends_with("manifest.json"))
        .unwrap();
    let object_file = s3
        .files("hostile")
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".age"))
        .unwrap();
    let sealed_bytes = std::fs::read(&sealed).unwrap();
    std::fs::write(&object_file, &sealed_bytes).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_file).unwrap()).unwrap();
    let sha = run(Command::new("sha256sum").arg(&sealed));
    manifest["volumes"][0]["sha256"] = stdout(&sha)[..64].into();
    manifest["volumes"][0]["stored_size"] = sealed_bytes.len().into();
    manifest["volumes"][0]["tar_size"] = tar.len().into();
    manifest["format_version"] = 1.into();
    std::fs::write(&manifest_file, serde_json::to_vec(&manifest).unwrap()).unwrap();
    // s3s-fs keeps object metadata beside the data; a stale size there would fail the HEAD.
    for meta in std::fs::read_dir(s3.root.path()).unwrap().flatten() {
        if meta
            .file_name()
            .to_string_lossy()
            .ends_with(".metadata.json")
            || meta
                .file_name()
                .to_string_lossy()
                .ends_with(".internal.json")
        {
            let _ = std::fs::remove_file(meta.path());
        }
    }

    let output = restore(&s3, &app.project, &store, &key);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--allow-unsigned"),
        "{}",
        stderr(&output)
    );
    let output = run(s3
        .env(&mut lifeboat())
        .args([
            "restore",
            "--allow-unsigned",
            "--backup",
            manifest["backup_id"].as_str().unwrap(),
            "-p",
            &app.project,
            "--store",
            &store,
            "-i",
        ])
        .arg(&key));
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("..") && stderr(&output).contains("entry"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        app.in_volume(&data, "ls /v; cat /v/db"),
        "db\nprecious",
        "nothing written"
    );
    assert!(app.running().values().all(|r| *r));
}

#[test]
fn restore_works_through_docker_host_over_tcp() {
    let mut app = TestApp::new("dockerhost");
    let data = app.volume("data");
    app.in_volume(&data, &fill_script(1));
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let before = app.snapshot(&data);
    let s3 = S3Server::start();
    let store = s3.bucket("dockerhost");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let proxy = TcpToDockerSocket::start();
    let output = run(s3
        .env(&mut lifeboat())
        .env("DOCKER_HOST", &proxy.url)
        .args([
            "backup",
            "-p",
            &app.project,
            "--store",
            &store,
            "-r",
            &recipient,
            "-v",
        ]));
    assert!(output.status.success());
    // An engine over TCP may be another host's: the volume is read through its archive API.
    assert!(
        stderr(&output).contains("volume read")
            && !stderr(&output).contains("from its directory on this host"),
        "{}",
        stderr(&output)
    );
    app.wipe(&data);
    let output = run(s3
        .env(&mut lifeboat())
        .env("DOCKER_HOST", &proxy.url)
        .args(["restore", "-p", &app.project, "--store", &store, "-i"])
        .arg(&key));
    assert!(output.status.success());
    assert_eq!(app.snapshot(&data), before);
}

/// Serves the local Docker socket on a TCP port of 127.0.0.1, as a remote engine would.
struct TcpToDockerSocket {
    url: String,
    _runtime: tokio::runtime::Runtime,
}

impl TcpToDockerSocket {
    fn start() -> Self {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("tcp://{}", listener.local_addr().unwrap());
        runtime.spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut unix) =
                        tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                    }
                });
            }
        });
        Self {
            url,
            _runtime: runtime,
        }
    }
}

#[test]
fn bind_mounts_and_the_app_version_string_are_backed_up_on_request() {
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        host_dir.path().join("gitlab.rb"),
        "external_url 'https://git.example'\n",
    )
    .unwrap();
    let mut app = TestApp::new("bindver");
    let data = app.volume("data");
    app.in_volume(&data, "echo 16.11.2 > /v/VERSION");
    let bind = format!("{}:/etc/gitlab", host_dir.path().display());
    let name = app.service("gitlab", IMAGE, &[("data", "/var/opt/gitlab")], &[], false);
    // TestApp mounts volumes only; recreate the container with the bind mount as well.
    docker(&["rm", "-f", &name]);
    app.containers.clear();
    docker(&[
        "create",
        "--name",
        &name,
        "--label",
        &format!("com.docker.compose.project={}", app.project),
        "--label",
        "com.docker.compose.service=gitlab",
        "--label",
        "org.example.version=16.11.2-ce",
        "-v",
        &format!("{data}:/var/opt/gitlab"),
        "-v",
        &bind,
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    ]);
    docker(&["start", &name]);
    app.containers.push(name.clone());

    let s3 = S3Server::start();
    let store = s3.bucket("bindver");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    for (source, expected) in [
        ("file:gitlab:/var/opt/gitlab/VERSION", "16.11.2"),
        ("label:org.example.version", "16.11.2-ce"),
    ] {
        let output = run(s3.env(&mut lifeboat()).args([
            "backup",
            "-p",
            &app.project,
            "--store",
            &store,
            "-r",
            &recipient,
            "--bind-path",
            "/etc/gitlab",
            "--version-from",
            source,
        ]));
        assert!(output.status.success());
        let output = run(s3.env(&mut lifeboat()).args([
            "show",
            "--json",
            "-p",
            &app.project,
            "--store",
            &store,
        ]));
        let manifest: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(manifest["app_version"]["version"], expected, "{source}");
        assert_eq!(manifest["volumes"].as_array().unwrap().len(), 2);
        let kinds: Vec<_> = manifest["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["kind"].as_str().unwrap())
            .collect();
        assert!(
            kinds.contains(&"bind") && kinds.contains(&"volume"),
            "{kinds:?}"
        );
    }

    std::fs::write(host_dir.path().join("gitlab.rb"), "broken\n").unwrap();
    std::fs::write(host_dir.path().join("stale.rb"), "x").unwrap();
    // A host directory is written only when the operator names it.
    let output = restore(&s3, &app.project, &store, &key);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("add --bind-path /etc/gitlab"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        std::fs::read_to_string(host_dir.path().join("gitlab.rb")).unwrap(),
        "broken\n"
    );
    let with_bind = |s3: &S3Server| {
        run(s3
            .env(&mut lifeboat())
            .args([
                "restore",
                "-p",
                &app.project,
                "--store",
                &store,
                "--bind-path",
                "/etc/gitlab",
                "-i",
            ])
            .arg(&key))
    };
    let output = with_bind(&s3);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        std::fs::read_to_string(host_dir.path().join("gitlab.rb")).unwrap(),
        "external_url 'https://git.example'\n"
    );
    assert!(!host_dir.path().join("stale.rb").exists());

    // A setuid file never goes into a host directory, even from a genuine backup.
    use std::os::unix::fs::PermissionsExt;
    let setuid = host_dir.path().join("helper");
    std::fs::write(&setuid, "x").unwrap();
    std::fs::set_permissions(&setuid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let output = run(s3.env(&mut lifeboat()).args([
        "backup",
        "-p",
        &app.project,
        "--store",
        &store,
        "-r",
        &recipient,
        "--bind-path",
        "/etc/gitlab",
    ]));
    assert!(output.status.success(), "{}", stderr(&output));
    std::fs::remove_file(&setuid).unwrap();
    std::fs::write(host_dir.path().join("gitlab.rb"), "after\n").unwrap();
    let output = run(s3
        .env(&mut lifeboat())
        .args([
            "restore",
            "-p",
            &app.project,
            "--store",
            &store,
            "--bind-path",
            "/etc/gitlab",
            "-i",
        ])
        .arg(&key));
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(stderr(&output).contains("setuid"), "{}", stderr(&output));
    assert_eq!(
        std::fs::read_to_string(host_dir.path().join("gitlab.rb")).unwrap(),
        "after\n",
        "nothing written"
    );

    let output = run(s3.env(&mut lifeboat()).args([
        "backup",
        "-p",
        &app.project,
        "--store",
        &store,
        "-r",
        &recipient,
        "--bind-path",
        "/nope",
    ]));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("no container of the app has a bind mount at /nope"),
        "{}",
        stderr(&output)
    );
}
