//! Deduplicated backups (`--dedup`, format 3) against real containers and the S3 server: a
//! second night stores only what changed, each night restores to its own exact tree, prune
//! frees only the chunks no backup left references, and a chunk replaced in the bucket fails
//! verify and restore with nothing changed.

mod common;

use common::*;
use std::path::PathBuf;

fn chunk_files(s3: &S3Server, bucket: &str) -> Vec<PathBuf> {
    s3.files(bucket)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/chunks/"))
        .collect()
}

fn chunk_bytes(s3: &S3Server, bucket: &str) -> u64 {
    chunk_files(s3, bucket)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

fn dedup_backup(s3: &S3Server, project: &str, store: &str, recipient: &str) {
    let output = backup_with(s3, project, store, recipient, &["--dedup"]);
    assert!(output.status.success(), "backup: {}", stderr(&output));
}

#[test]
fn a_second_night_stores_only_what_changed_and_every_night_restores_exactly() {
    let mut app = TestApp::new("dedup");
    let data = app.volume("data");
    app.in_volume(&data, &fill_script(24));
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("dedup");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());

    dedup_backup(&s3, &app.project, &store, &recipient);
    let night1 = app.snapshot(&data);
    let first = chunk_bytes(&s3, "dedup");
    assert!(
        first > 20 << 20,
        "the first night stores everything: {first}"
    );

    // A night's churn: 64 KiB rewritten in place in the big file, one new small file.
    app.in_volume(
        &data,
        "head -c 65536 /dev/urandom | dd of=/v/big.bin bs=65536 seek=200 conv=notrunc 2>/dev/null; echo new > /v/new.txt",
    );
    let night2 = app.snapshot(&data);
    assert_ne!(night1, night2);
    dedup_backup(&s3, &app.project, &store, &recipient);
    let added = chunk_bytes(&s3, "dedup") - first;
    eprintln!("DEDUP: night 1 stored {first} bytes, night 2 added {added}");
    assert!(
        added > 0 && added < 8 << 20,
        "night 2 adds only the changed chunks: {added} of {first}"
    );

    let listed = list_json(&s3, &store);
    assert_eq!(listed.len(), 2);
    assert!(
        listed.iter().all(|m| m["format_version"] == 5),
        "{listed:?}"
    );
    let first_id = listed[0]["backup_id"].as_str().unwrap().to_string();

    // Quick (every chunk listed with its size), then reading every byte.
    for depth in [&["--all"][..], &["--all", "--read-data"]] {
        let output = with_key(&s3, "verify", &app.project, &store, depth, &key);
        assert!(
            output.status.success(),
            "verify {depth:?}: {}",
            stderr(&output)
        );
    }
    let output = with_key(&s3, "show", &app.project, &store, &[], &key);
    assert!(
        stdout(&output).contains("reused from earlier backups"),
        "{}",
        stdout(&output)
    );

    // Each night restores to its own tree.
    app.wipe(&data);
    let output = run(s3
        .env(&mut lifeboat())
        .args([
            "restore",
            "-p",
            &app.project,
            "--store",
            &store,
            "--backup",
            &first_id,
        ])
        .args(["--no-safety-copy", "-i"])
        .arg(&key));
    assert!(
        output.status.success(),
        "restore night 1: {}",
        stderr(&output)
    );
    assert_eq!(app.snapshot(&data), night1);
    let output = with_key(
        &s3,
        "restore",
        &app.project,
        &store,
        &["--no-safety-copy"],
        &key,
    );
    assert!(
        output.status.success(),
        "restore night 2: {}",
        stderr(&output)
    );
    assert_eq!(app.snapshot(&data), night2);
    assert!(app.running().values().all(|r| *r), "the app runs again");

    // Night 2's chunk list is an object of its own (format 5). A bucket writer swaps in
    // night 1's list, writes other bytes of the same size, or deletes it: verify and restore
    // refuse the backup (exit 4, naming the list) and the volume keeps what it holds.
    let list_file = |night: usize| {
        let sum = listed[night]["volumes"][0]["lists"][0]["sha256"]
            .as_str()
            .unwrap()
            .to_string();
        s3.object_file(
            "dedup",
            &format!("lifeboat/{}/chunks/{}/{sum}", app.project, &sum[..2]),
        )
    };
    let genuine = std::fs::read(list_file(1)).unwrap();
    let mut same_size = std::fs::read(list_file(0)).unwrap();
    same_size.resize(genuine.len(), b'\n');
    for planted in [
        Some(std::fs::read(list_file(0)).unwrap()),
        Some(same_size),
        None,
    ] {
        match &planted {
            Some(bytes) => std::fs::write(list_file(1), bytes).unwrap(),
            None => std::fs::remove_file(list_file(1)).unwrap(),
        }
        for command in ["verify", "restore"] {
            let output = with_key(&s3, command, &app.project, &store, &[], &key);
            let said = format!("{}{}", stdout(&output), stderr(&output));
            assert_eq!(output.status.code(), Some(4), "{command}: {said}");
            assert!(said.contains("chunk list"), "{command}: {said}");
        }
        assert_eq!(app.snapshot(&data), night2);
        assert!(app.running().values().all(|r| *r), "the app runs");
    }
    std::fs::write(list_file(1), &genuine).unwrap();

    // Prune: night 1 goes, and with it only the chunks night 2 does not share (once they
    // are past the grace period: age them).
    let before: Vec<PathBuf> = chunk_files(&s3, "dedup");
    for file in &before {
        let status = std::process::Command::new("touch")
            .args(["-d", "3 days ago"])
            .arg(file)
            .status()
            .unwrap();
        assert!(status.success());
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
    assert!(output.status.success(), "prune: {}", stderr(&output));
    assert!(
        stdout(&output).contains("unreferenced chunk"),
        "{}",
        stdout(&output)
    );
    let after = chunk_files(&s3, "dedup");
    assert!(
        after.len() < before.len() && after.len() * 2 > before.len(),
        "prune removes night 1's own chunks only: {} of {}",
        before.len() - after.len(),
        before.len()
    );
    app.wipe(&data);
    let output = with_key(
        &s3,
        "restore",
        &app.project,
        &store,
        &["--no-safety-copy"],
        &key,
    );
    assert!(
        output.status.success(),
        "restore after prune: {}",
        stderr(&output)
    );
    assert_eq!(app.snapshot(&data), night2);

    // Retention after a backup ([retention] in the config file) reads the new backup back by
    // its chunks, then prunes: one backup is left, and it restores.
    let config = config(
        work.path(),
        &store,
        &app.project,
        &recipient,
        "dedup = true\n[retention]\nkeep_last = 1\n",
    );
    let output = run(s3
        .env(&mut lifeboat())
        .arg("--config")
        .arg(&config)
        .arg("backup"));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stderr(&output).contains("failed"), "{}", stderr(&output));
    let listed = list_json(&s3, &store);
    assert_eq!(listed.len(), 1, "retention kept one");
    assert_eq!(listed[0]["format_version"], 5);
    // The chunks the one backup left references (younger unreferenced ones may remain).
    let referenced: Vec<String> = show_json(&s3, &store, &app.project)["volumes"][0]["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["sha256"].as_str().unwrap().to_string())
        .collect();
    let after: Vec<PathBuf> = chunk_files(&s3, "dedup")
        .into_iter()
        .filter(|p| referenced.iter().any(|r| p.ends_with(r)))
        .collect();
    assert!(after.len() >= 2);

    // A bucket writer replaces a chunk with other data encrypted to the owner: verify and
    // restore refuse it (exit 4) and the volume keeps what it holds.
    let victim = &after[after.len() / 2];
    let forged = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c {} /dev/urandom > {}",
            std::fs::metadata(victim).unwrap().len(),
            victim.display()
        ))
        .status()
        .unwrap();
    assert!(forged.success());
    let output = with_key(&s3, "verify", &app.project, &store, &["--read-data"], &key);
    assert_eq!(output.status.code(), Some(4), "verify: {}", stdout(&output));
    assert!(stdout(&output).contains("sha256"), "{}", stdout(&output));
    let output = with_key(&s3, "restore", &app.project, &store, &[], &key);
    assert_eq!(
        output.status.code(),
        Some(4),
        "restore: {}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("nothing was changed"),
        "{}",
        stderr(&output)
    );
    assert_eq!(app.snapshot(&data), night2);

    // The quick verify sees a chunk that is gone.
    std::fs::remove_file(&after[0]).unwrap();
    let output = with_key(&s3, "verify", &app.project, &store, &[], &key);
    assert_eq!(output.status.code(), Some(4), "verify: {}", stdout(&output));
    assert!(stdout(&output).contains("1 of its"), "{}", stdout(&output));
}
