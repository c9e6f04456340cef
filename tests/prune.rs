//! `lifeboat prune` against the S3 server: restic's keep rules, dry runs, incomplete backups,
//! and `[retention]` applied after a backup.

mod common;

use common::*;

#[test]
fn prune_keeps_what_the_rules_keep_and_removes_incomplete_backups() {
    let mut app = TestApp::new("prune");
    let data = app.volume("data");
    app.in_volume(&data, "echo v > /v/f");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("prune");
    let work = tempfile::tempdir().unwrap();
    let (_, recipient) = keygen(work.path());
    for _ in 0..4 {
        backup_ok(&s3, &app.project, &store, &recipient);
    }
    let ids: Vec<String> = list_json(&s3, &store)
        .iter()
        .map(|m| m["backup_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 4);

    // An incomplete backup from long ago: an object without a manifest.
    let stale = s3.object_file(
        "prune",
        &format!(
            "lifeboat/{}/20200101T000000.000Z/x.tar.zst.age",
            app.project
        ),
    );
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    std::fs::write(&stale, b"partial").unwrap();
    let status = std::process::Command::new("touch")
        .args(["-d", "2020-01-01"])
        .arg(&stale)
        .status()
        .unwrap();
    assert!(status.success());

    let output = run(s3.env(&mut lifeboat()).args([
        "prune",
        "-p",
        &app.project,
        "--store",
        &store,
        "--keep-last",
        "2",
        "--dry-run",
    ]));
    assert!(output.status.success());
    let text = stdout(&output);
    assert_eq!(text.matches("would remove").count(), 3, "{text}");
    assert!(
        text.contains(&format!("keep          {}  (newest, last)", ids[3])),
        "{text}"
    );
    assert_eq!(list_json(&s3, &store).len(), 4, "a dry run deletes nothing");

    let output = run(s3.env(&mut lifeboat()).args([
        "prune",
        "-p",
        &app.project,
        "--store",
        &store,
        "--keep-last",
        "2",
    ]));
    assert!(output.status.success());
    let left: Vec<String> = list_json(&s3, &store)
        .iter()
        .map(|m| m["backup_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, ids[2..].to_vec());
    assert!(!stale.exists(), "the stale incomplete backup is gone");
    assert!(
        s3.files("prune").iter().all(|f| ids[2..]
            .iter()
            .any(|id| f.to_string_lossy().contains(id.as_str()))),
        "{:?}",
        s3.files("prune")
    );

    let output =
        run(s3
            .env(&mut lifeboat())
            .args(["prune", "-p", &app.project, "--store", &store]));
    assert_eq!(output.status.code(), Some(2), "no rule is refused");

    // [retention] in the config file prunes after each backup.
    let config = work.path().join("lifeboat.toml");
    std::fs::write(&config, format!("[store]\nurl = \"{store}\"\n[app]\nproject = \"{}\"\n[backup]\nrecipients = [\"{recipient}\"]\n[retention]\nkeep_last = 1\n", app.project)).unwrap();
    let output = run(s3
        .env(&mut lifeboat())
        .arg("--config")
        .arg(&config)
        .arg("backup"));
    assert!(output.status.success());
    assert_eq!(list_json(&s3, &store).len(), 1);
}

/// A backup says so when the newest backup under its name was made on another host (a
/// migration, or two hosts sharing a name by mistake: their backups would count against each
/// other in prune).
#[test]
fn a_backup_names_the_other_host_that_made_the_newest_backup() {
    let mut app = TestApp::new("otherhost");
    let data = app.volume("data");
    app.in_volume(&data, "echo v > /v/f");
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("otherhost");
    let work = tempfile::tempdir().unwrap();
    let (_, recipient) = keygen(work.path());
    // The first backup from a host called old-server (a UTS namespace of its own).
    let mut cmd = std::process::Command::new("unshare");
    s3.env(&mut cmd)
        .env("LIFEBOAT_BACKUP_KEY_FILE", backup_key())
        .env("XDG_CONFIG_HOME", "/nonexistent/lifeboat-tests-config")
        .args(["--uts", "sh", "-c"])
        .arg(format!(
            "hostname old-server && exec {} backup -p {} --store {store} -r {recipient}",
            env!("CARGO_BIN_EXE_lifeboat"),
            app.project
        ));
    let output = run(&mut cmd);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(list_json(&s3, &store)[0]["host"], "old-server");
    let output = run(s3.env(&mut lifeboat()).args([
        "backup",
        "-p",
        &app.project,
        "--store",
        &store,
        "-r",
        &recipient,
    ]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("was made on host old-server, not on this one"),
        "{}",
        stderr(&output)
    );
    // Once the newest is this host's own, nothing is said.
    let output = run(s3.env(&mut lifeboat()).args([
        "backup",
        "-p",
        &app.project,
        "--store",
        &store,
        "-r",
        &recipient,
    ]));
    assert!(
        !stderr(&output).contains("made on host"),
        "{}",
        stderr(&output)
    );
}
