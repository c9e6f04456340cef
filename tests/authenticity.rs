//! Someone who can write to the bucket but holds no key: the five attacks of the authenticity
//! issue, played against a real S3 server (s3s-fs, objects uploaded with the aws CLI as an
//! attacker would) and a real Docker engine. Each one made lifeboat write into a volume or a
//! host directory, or delete a genuine backup, before manifests were signed.

mod common;

use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A later backup id than any real one.
const FORGED_ID: &str = "29991231T235959.999Z";

/// What an attacker uploads: `tar -C tree . | zstd | age -r RECIPIENT` and a manifest that
/// describes it exactly (sizes, sha256), in format 1 or as a format-2 manifest signed with the
/// attacker's own key.
struct Forgery {
    object: PathBuf,
    sha256: String,
    stored_size: u64,
    tar_size: u64,
}

fn forge_object(work: &Path, tree: &Path, recipient: &str) -> Forgery {
    let tar = work.join("forged.tar");
    let object = work.join("forged.tar.zst.age");
    let script = format!(
        "set -e; tar --numeric-owner -C {tree} -cf {tar} . && zstd -q -c {tar} | age -r {recipient} > {object}",
        tree = tree.display(),
        tar = tar.display(),
        object = object.display()
    );
    assert!(
        run(Command::new("bash").args(["-c", &script]))
            .status
            .success()
    );
    let sha = stdout(&run(Command::new("sha256sum").arg(&object)))[..64].to_string();
    Forgery {
        stored_size: std::fs::metadata(&object).unwrap().len(),
        tar_size: std::fs::metadata(&tar).unwrap().len(),
        sha256: sha,
        object,
    }
}

/// One volume record (`kind` volume or bind) describing `forgery`.
fn record(
    kind: &str,
    name: &str,
    service: &str,
    path: &str,
    forgery: &Forgery,
) -> serde_json::Value {
    json!({
        "name": name, "kind": kind, "labels": {}, "service": service, "container_path": path,
        "object": "data.tar.zst.age", "stored_size": forgery.stored_size, "sha256": forgery.sha256,
        "tar_size": forgery.tar_size, "compression": "zstd",
        "encryption": {"scheme": "age", "recipients": ["age1attacker"]}
    })
}

fn manifest(
    format_version: u32,
    app: &str,
    id: &str,
    images: serde_json::Value,
    record: serde_json::Value,
) -> serde_json::Value {
    json!({
        "format": "lifeboat-backup", "format_version": format_version, "backup_id": id, "app": app,
        "host": "attacker", "lifeboat_version": "0.1.0",
        "started_at": "2999-12-31T23:59:59Z", "finished_at": "2999-12-31T23:59:59Z",
        "downtime_seconds": 0.0, "app_version": {"services": images}, "volumes": [record]
    })
}

/// Uploads a file to the bucket with the aws CLI: all an attacker needs is write access.
fn attacker_put(s3: &S3Server, url: &str, file: &Path) {
    let mut aws = Command::new("aws");
    s3.env(&mut aws)
        .env_remove("AWS_CA_BUNDLE")
        .args(["--endpoint-url", &s3.endpoint, "s3", "cp"])
        .arg(file)
        .arg(url);
    let output = run(&mut aws);
    assert!(output.status.success(), "{}", stderr(&output));
}

/// Uploads a forged backup under `<app>/<id>/`: the object, the manifest, and — for format 2 —
/// a signature made with a key the attacker generated (ssh-keygen -Y sign).
fn upload_forgery(
    s3: &S3Server,
    bucket: &str,
    app: &str,
    id: &str,
    work: &Path,
    forgery: &Forgery,
    manifest: &serde_json::Value,
) {
    let base = format!("s3://{bucket}/lifeboat/{app}/{id}");
    attacker_put(s3, &format!("{base}/data.tar.zst.age"), &forgery.object);
    let manifest_file = work.join(format!("manifest-{id}.json"));
    std::fs::write(&manifest_file, serde_json::to_vec_pretty(manifest).unwrap()).unwrap();
    if manifest["format_version"] == 2 {
        let key = work.join("attacker_ed25519");
        if !key.exists() {
            assert!(
                run(Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(&key))
                .status
                .success()
            );
        }
        let output = run(Command::new("ssh-keygen")
            .args(["-Y", "sign", "-n", "lifeboat-manifest", "-f"])
            .arg(&key)
            .arg(&manifest_file));
        assert!(output.status.success(), "{}", stderr(&output));
        attacker_put(
            s3,
            &format!("{base}/manifest.json.sig"),
            &manifest_file.with_extension("json.sig"),
        );
    }
    attacker_put(s3, &format!("{base}/manifest.json"), &manifest_file);
}

/// The images the app's containers run, as a manifest records them (so the version check
/// passes and only authenticity can stop the forgery).
fn images(app: &TestApp) -> serde_json::Value {
    let mut services = serde_json::Map::new();
    for container in &app.containers {
        let service = docker(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"com.docker.compose.service\"}}",
            container,
        ]);
        services.insert(
            service,
            json!({
                "container": container,
                "image": docker(&["inspect", "-f", "{{.Config.Image}}", container]),
                "image_id": docker(&["inspect", "-f", "{{.Image}}", container]),
            }),
        );
    }
    serde_json::Value::Object(services)
}

fn restore_args(
    s3: &S3Server,
    project: &str,
    store: &str,
    key: &Path,
    extra: &[&str],
) -> std::process::Output {
    run(s3
        .env(&mut lifeboat())
        .args(["restore", "-p", project, "--store", store, "-i"])
        .arg(key)
        .args(extra))
}

fn attacker_tree(work: &Path) -> PathBuf {
    let tree = work.join("evil");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("planted.conf"), "attacker=1\n").unwrap();
    tree
}

/// Starts the app's `web` service (compose labels) with raw `-v` mount specs: host
/// directories and other projects' volumes, which [`TestApp::service`] does not make.
fn start_web(app: &mut TestApp, mounts: &[String]) {
    let web = format!("{}-web-1", app.project);
    let project = format!("com.docker.compose.project={}", app.project);
    let mut args = vec![
        "create",
        "--name",
        &web,
        "--label",
        &project,
        "--label",
        "com.docker.compose.service=web",
    ];
    for mount in mounts {
        args.extend(["-v", mount.as_str()]);
    }
    // Stops at once on SIGTERM (a bare `sleep` as PID 1 ignores it: 60 s per stop).
    args.extend([
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    ]);
    docker(&args);
    docker(&["start", &web]);
    app.containers.push(web);
}

/// Attack 1: a forged bind-mount record writes into a host directory the app mounts
/// read-only, one that was never backed up.
#[test]
fn a_forged_bind_mount_record_never_touches_the_host_directory() {
    let mut app = TestApp::new("forgebind");
    let data = app.volume("data");
    app.in_volume(&data, "echo genuine > /v/db");
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("own.conf"), "owner=1\n").unwrap();
    start_web(
        &mut app,
        &[
            format!("{data}:/data"),
            format!("{}:/etc/app:ro", host_dir.path().display()),
        ],
    );
    let s3 = S3Server::start();
    let store = s3.bucket("forgebind");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    backup_ok(&s3, &app.project, &store, &recipient);

    let forgery = forge_object(work.path(), &attacker_tree(work.path()), &recipient);
    let bind = record("bind", "bind:web:/etc/app", "web", "/etc/app", &forgery);
    for (format, id) in [(1, FORGED_ID), (2, "29991231T235959.998Z")] {
        let m = manifest(format, &app.project, id, images(&app), bind.clone());
        upload_forgery(
            &s3,
            "forgebind",
            &app.project,
            id,
            work.path(),
            &forgery,
            &m,
        );
        let output = restore_args(&s3, &app.project, &store, &key, &["--backup", id]);
        assert_eq!(
            output.status.code(),
            Some(4),
            "format {format}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(&format!("backup {id}"))
                && stderr(&output).contains("failed verification"),
            "{}",
            stderr(&output)
        );
    }
    // Even an operator who trusts unsigned backups never has a host directory written that
    // the app mounts read-only, nor one not named with --bind-path.
    for extra in [
        &["--allow-unsigned"][..],
        &["--allow-unsigned", "--bind-path", "/etc/app"],
    ] {
        let mut args = vec!["--backup", FORGED_ID];
        args.extend_from_slice(extra);
        let output = restore_args(&s3, &app.project, &store, &key, &args);
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        assert!(
            stderr(&output).contains("--bind-path") || stderr(&output).contains("read-only"),
            "{}",
            stderr(&output)
        );
    }
    assert_eq!(
        std::fs::read_to_string(host_dir.path().join("own.conf")).unwrap(),
        "owner=1\n"
    );
    assert!(!host_dir.path().join("planted.conf").exists());
    assert!(app.running().values().all(|r| *r));
    assert_eq!(app.in_volume(&data, "cat /v/db"), "genuine");
}

/// Attack 2: a forged record names a volume that belongs to no container of the app.
#[test]
fn a_forged_record_never_touches_another_apps_volume() {
    let mut app = TestApp::new("forgeother");
    let data = app.volume("data");
    app.in_volume(&data, "echo genuine > /v/db");
    app.service("web", IMAGE, &[("data", "/data")], &[], true);
    let mut victim = TestApp::new("forgevictim");
    let theirs = victim.volume("theirs");
    victim.in_volume(&theirs, "echo victim > /v/precious");
    let s3 = S3Server::start();
    let store = s3.bucket("forgeother");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    backup_ok(&s3, &app.project, &store, &recipient);

    let forgery = forge_object(work.path(), &attacker_tree(work.path()), &recipient);
    let foreign = record("volume", &theirs, "web", "/data", &forgery);
    let m = manifest(1, &app.project, FORGED_ID, images(&app), foreign);
    upload_forgery(
        &s3,
        "forgeother",
        &app.project,
        FORGED_ID,
        work.path(),
        &forgery,
        &m,
    );

    let output = restore(&s3, &app.project, &store, &key);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(FORGED_ID) && stderr(&output).contains("--allow-unsigned"),
        "{}",
        stderr(&output)
    );
    let output = restore_args(
        &s3,
        &app.project,
        &store,
        &key,
        &["--allow-unsigned", "--backup", FORGED_ID],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!("volume {theirs} exists but is not the app's")),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        victim.in_volume(&theirs, "ls /v; cat /v/precious"),
        "precious\nvictim"
    );
    assert_eq!(app.in_volume(&data, "cat /v/db"), "genuine");
    assert!(app.running().values().all(|r| *r));
}

/// Attack 3: a forged backup of the app's own volume, every size and sha256 consistent; and a
/// genuine manifest edited to point at the forged object, its genuine signature kept.
#[test]
fn a_consistent_forgery_of_the_apps_own_volume_is_refused() {
    let mut app = TestApp::new("forgeown");
    let data = app.volume("data");
    app.in_volume(&data, "echo genuine > /v/db");
    app.service("web", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("forgeown");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    backup_ok(&s3, &app.project, &store, &recipient);
    let before = app.snapshot(&data);

    let forgery = forge_object(work.path(), &attacker_tree(work.path()), &recipient);
    let own = record("volume", &data, "web", "/data", &forgery);
    for (format, id) in [(1, FORGED_ID), (2, "29991231T235959.998Z")] {
        let m = manifest(format, &app.project, id, images(&app), own.clone());
        upload_forgery(&s3, "forgeown", &app.project, id, work.path(), &forgery, &m);
    }
    for id in [FORGED_ID, "29991231T235959.998Z"] {
        let output = restore_args(&s3, &app.project, &store, &key, &["--backup", id]);
        assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    }
    // The newest backup is forged: restore names it and the newest genuine one, and stops.
    let output = restore(&s3, &app.project, &store, &key);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    let genuine = list_json(&s3, &store)
        .into_iter()
        .find(|m| m["authenticity"]["signed"].is_string())
        .unwrap()["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        stderr(&output).contains(&format!("--backup {genuine}")),
        "{}",
        stderr(&output)
    );

    // The genuine manifest, edited to name the forged object's digest: its signature no
    // longer matches.
    let manifest_file = s3.object_file(
        "forgeown",
        &format!("lifeboat/{}/{genuine}/manifest.json", app.project),
    );
    let mut edited: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_file).unwrap()).unwrap();
    edited["volumes"][0]["sha256"] = forgery.sha256.clone().into();
    edited["volumes"][0]["stored_size"] = forgery.stored_size.into();
    let edited_file = work.path().join("edited.json");
    std::fs::write(&edited_file, serde_json::to_vec_pretty(&edited).unwrap()).unwrap();
    attacker_put(
        &s3,
        &format!(
            "s3://forgeown/lifeboat/{}/{genuine}/manifest.json",
            app.project
        ),
        &edited_file,
    );
    attacker_put(
        &s3,
        &format!(
            "s3://forgeown/lifeboat/{}/{genuine}/{}",
            app.project,
            edited["volumes"][0]["object"].as_str().unwrap()
        ),
        &forgery.object,
    );
    let output = restore_args(&s3, &app.project, &store, &key, &["--backup", &genuine]);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("does not match its content"),
        "{}",
        stderr(&output)
    );
    let output = run(s3
        .env(&mut lifeboat())
        .args([
            "verify",
            "-p",
            &app.project,
            "--store",
            &store,
            "--all",
            "-i",
        ])
        .arg(&key));
    assert_eq!(output.status.code(), Some(4), "{}", stdout(&output));

    assert_eq!(app.snapshot(&data), before);
    assert!(app.running().values().all(|r| *r));
}

/// Attack 4: a forged manifest dated in the future would count as the newest backup and make
/// `prune --keep-last 1` delete the real one.
#[test]
fn a_forged_future_backup_never_makes_prune_delete_a_genuine_one() {
    let mut app = TestApp::new("forgeprune");
    let data = app.volume("data");
    app.in_volume(&data, "echo genuine > /v/db");
    app.service("web", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("forgeprune");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    backup_ok(&s3, &app.project, &store, &recipient);
    let genuine = list_json(&s3, &store)[0]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();

    let forgery = forge_object(work.path(), &attacker_tree(work.path()), &recipient);
    let own = record("volume", &data, "web", "/data", &forgery);
    for (format, id) in [(1, FORGED_ID), (2, "29991231T235959.998Z")] {
        let m = manifest(format, &app.project, id, images(&app), own.clone());
        upload_forgery(
            &s3,
            "forgeprune",
            &app.project,
            id,
            work.path(),
            &forgery,
            &m,
        );
    }
    let output = run(s3.env(&mut lifeboat()).args([
        "prune",
        "-p",
        &app.project,
        "--store",
        &store,
        "--keep-last",
        "1",
    ]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains(&format!("keep          {genuine}")),
        "{}",
        stdout(&output)
    );
    assert!(
        stdout(&output).contains("left alone"),
        "{}",
        stdout(&output)
    );
    let listed = list_json(&s3, &store);
    assert!(
        listed
            .iter()
            .any(|m| m["backup_id"] == genuine.as_str() && m["authenticity"]["signed"].is_string())
    );
    assert_eq!(
        listed
            .iter()
            .filter(|m| m["authenticity"] == "refused")
            .count(),
        2,
        "{listed:?}"
    );
    let output = run(s3
        .env(&mut lifeboat())
        .args(["list", "-p", &app.project, "--store", &store]));
    assert!(stdout(&output).contains("FAILED"), "{}", stdout(&output));

    // The backup still restores.
    app.wipe(&data);
    let output = restore_args(&s3, &app.project, &store, &key, &["--backup", &genuine]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(app.in_volume(&data, "cat /v/db"), "genuine");
    let _ = key;
}

/// Attack 5: the object is overwritten after it was verified and before it is written. The
/// restore writes the bytes it verified (from its spool), never a second download.
#[test]
fn an_object_replaced_after_verification_changes_nothing_restored() {
    let mut app = TestApp::new("forgelate");
    let data = app.volume("data");
    app.in_volume(&data, &fill_script(40));
    app.service("web", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("forgelate");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    backup_ok(&s3, &app.project, &store, &recipient);
    let backed_up = app.snapshot(&data);
    let m = &list_json(&s3, &store)[0];
    let object = s3.object_file(
        "forgelate",
        &format!(
            "lifeboat/{}/{}/{}",
            app.project,
            m["backup_id"].as_str().unwrap(),
            m["volumes"][0]["object"].as_str().unwrap()
        ),
    );
    app.in_volume(&data, "echo changed-after-backup > /v/hello.txt");

    // The before-restore hook runs after every object was verified, before anything is
    // stopped: it overwrites the middle of the object in the bucket.
    let config = work.path().join("lifeboat.toml");
    std::fs::write(&config, format!(
        "[[hook]]\non = \"before-restore\"\ncommand = \"dd if=/dev/urandom of={} bs=1M seek=10 count=4 conv=notrunc status=none\"\n",
        object.display()
    )).unwrap();
    let output = run(s3
        .env(&mut lifeboat())
        .arg("--config")
        .arg(&config)
        .args(["restore", "-v", "-p", &app.project, "--store", &store, "-i"])
        .arg(&key));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("verified"), "{}", stderr(&output));
    assert_eq!(
        app.snapshot(&data),
        backed_up,
        "the verified bytes were restored"
    );
    assert!(app.running().values().all(|r| *r));
    // The damage is there for the next run to find.
    let output = run(s3
        .env(&mut lifeboat())
        .args(["verify", "-p", &app.project, "--store", &store, "-i"])
        .arg(&key));
    assert_eq!(output.status.code(), Some(4), "{}", stdout(&output));
}

/// A format-1 backup, made before lifeboat signed its backups, is refused by default and
/// restores with `--allow-unsigned`, which says loudly what it trusts.
#[test]
fn a_format_one_backup_restores_only_when_allowed() {
    let mut app = TestApp::new("formatone");
    let data = app.volume("data");
    app.in_volume(&data, "echo current > /v/db");
    app.service("web", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("formatone");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let old = work.path().join("old");
    std::fs::create_dir_all(old.join("sub")).unwrap();
    std::fs::write(old.join("db"), "from-2025\n").unwrap();
    std::fs::write(old.join("sub/file"), "nested\n").unwrap();
    let backup = forge_object(work.path(), &old, &recipient);
    let id = "20250101T030000.000Z";
    let m = manifest(
        1,
        &app.project,
        id,
        images(&app),
        record("volume", &data, "web", "/data", &backup),
    );
    upload_forgery(&s3, "formatone", &app.project, id, work.path(), &backup, &m);

    let output = restore(&s3, &app.project, &store, &key);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("format-1") && stderr(&output).contains("--allow-unsigned"),
        "{}",
        stderr(&output)
    );
    assert_eq!(app.in_volume(&data, "cat /v/db"), "current");

    // Not as "the newest": a bucket writer could have added it today.
    let output = restore_args(&s3, &app.project, &store, &key, &["--allow-unsigned"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let output = restore_args(
        &s3,
        &app.project,
        &store,
        &key,
        &["--allow-unsigned", "--backup", id],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no signature") && stderr(&output).contains("--allow-unsigned"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        app.in_volume(&data, "cat /v/db /v/sub/file"),
        "from-2025\nnested"
    );
    assert!(app.running().values().all(|r| *r));
}

/// A genuine backup, restored into an app that also mounts another project's volume (read-only)
/// under the same compose volume name: only the app's own volume is written, every time.
#[test]
fn a_volume_another_project_lends_the_app_is_never_written() {
    let mut lender = TestApp::new("lender");
    let theirs = lender.volume("data");
    lender.in_volume(&theirs, "echo theirs > /v/f");
    let mut app = TestApp::new("borrower");
    let ours = app.volume("data");
    app.in_volume(&ours, "echo ours > /v/f");
    start_web(
        &mut app,
        &[format!("{ours}:/data"), format!("{theirs}:/shared:ro")],
    );
    let s3 = S3Server::start();
    let store = s3.bucket("lend");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let output = run(s3.env(&mut lifeboat()).args([
        "backup",
        "-p",
        &app.project,
        "--store",
        &store,
        "-r",
        &recipient,
        "--exclude-volume",
        &theirs,
    ]));
    assert!(output.status.success(), "{}", stderr(&output));
    for round in 0..3 {
        app.in_volume(&ours, "echo changed > /v/f");
        let output = restore(&s3, &app.project, &store, &key);
        assert!(
            output.status.success(),
            "round {round}: {}",
            stderr(&output)
        );
        assert_eq!(app.in_volume(&ours, "cat /v/f"), "ours", "round {round}");
        assert_eq!(
            lender.in_volume(&theirs, "cat /v/f"),
            "theirs",
            "round {round}"
        );
    }
}
