//! The README's "Recovering without lifeboat" commands work on a backup lifeboat made: the
//! manifest's signature checked with `ssh-keygen -Y verify` and the allowed_signers line in the
//! owner key, the object's sha256 against the manifest, and
//! `age -d -i key < object | zstd -d | tar -x`.

mod common;

use common::*;
use std::process::Command;

#[test]
fn a_volume_comes_back_with_aws_age_zstd_and_tar_alone() {
    let mut app = TestApp::new("stocktools");
    let data = app.volume("data");
    app.in_volume(&data, &fill_script(5));
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("stocktools");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    backup_ok(&s3, &app.project, &store, &recipient);
    let manifest = &list_json(&s3, &store)[0];
    let object = format!(
        "s3://stocktools/lifeboat/{}/{}/{}",
        app.project,
        manifest["backup_id"].as_str().unwrap(),
        manifest["volumes"][0]["object"].as_str().unwrap()
    );

    let backup_dir = format!(
        "s3://stocktools/lifeboat/{}/{}",
        app.project,
        manifest["backup_id"].as_str().unwrap()
    );
    // Exactly the README's authenticity check.
    let check = format!(
        "set -e -o pipefail; cd {work}
sed -n 's/^# lifeboat allowed_signers: //p' {key} > allowed_signers
aws --endpoint-url {endpoint} s3 cp {backup_dir}/manifest.json manifest.json
aws --endpoint-url {endpoint} s3 cp {backup_dir}/manifest.json.sig manifest.json.sig
ssh-keygen -Y verify -f allowed_signers -I lifeboat -n lifeboat-manifest -s manifest.json.sig < manifest.json
grep -E '\"(app|backup_id)\":' manifest.json
aws --endpoint-url {endpoint} s3 cp {object} object.age
sha256sum object.age; grep '\"sha256\":' manifest.json",
        work = work.path().display(),
        key = key.display(),
        endpoint = s3.endpoint,
    );
    let output = run(s3
        .env(Command::new("bash").args(["-c", &check]))
        .env_remove("AWS_CA_BUNDLE"));
    assert!(output.status.success(), "{}", stderr(&output));
    let said = stdout(&output);
    assert!(
        said.contains("Good \"lifeboat-manifest\" signature for lifeboat with ED25519 key"),
        "{said}"
    );
    assert!(
        said.contains(&format!("\"app\": \"{}\"", app.project)),
        "{said}"
    );
    let object_sha = manifest["volumes"][0]["sha256"].as_str().unwrap();
    assert!(
        said.contains(&format!("{object_sha}  object.age")),
        "{said}"
    );
    // A manifest changed by a bucket writer does not verify.
    let tampered = format!(
        "set -e; cd {work}; sed -i 's/\"downtime_seconds\": [0-9.]*/\"downtime_seconds\": 0.0/' manifest.json; ! ssh-keygen -Y verify -f allowed_signers -I lifeboat -n lifeboat-manifest -s manifest.json.sig < manifest.json",
        work = work.path().display()
    );
    assert!(
        run(Command::new("bash").args(["-c", &tampered]))
            .status
            .success()
    );

    let restored = work.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    // Exactly the README's pipeline.
    let script = format!(
        "set -o pipefail; age -d -i {key} < {work}/object.age | zstd -d | tar -xpf - --numeric-owner -C {dir}",
        work = work.path().display(),
        key = key.display(),
        dir = restored.display()
    );
    let output = run(s3
        .env(Command::new("bash").args(["-c", &script]))
        .env_remove("AWS_CA_BUNDLE"));
    assert!(output.status.success(), "{}", stderr(&output));

    let inside = app.in_volume(&data, "sha256sum /v/big.bin | cut -c1-64");
    let outside = run(Command::new("sha256sum").arg(restored.join("big.bin")));
    assert_eq!(stdout(&outside)[..64], inside);
    assert_eq!(
        std::fs::read_to_string(restored.join("hello.txt")).unwrap(),
        "hello\n"
    );
    use std::os::unix::fs::MetadataExt;
    let owned = std::fs::metadata(restored.join("owned.txt")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1234, 5678));
    assert_eq!(
        std::fs::read_link(restored.join("link.txt"))
            .unwrap()
            .to_str(),
        Some("hello.txt")
    );
    assert_eq!(
        std::fs::metadata(restored.join("hardlink.txt"))
            .unwrap()
            .nlink(),
        2
    );
}

/// A deduplicated backup (format 5) comes back with the README's loop: each list object
/// fetched in manifest order and its sha256 checked, then each chunk it lists, its sha256
/// checked, decrypted with `age -d`, the concatenation through `zstd -d | tar -x`. A chunk or
/// a list replaced in the bucket stops the loop.
#[test]
fn a_deduplicated_volume_comes_back_with_the_readme_loop() {
    let mut app = TestApp::new("stockdedup");
    let data = app.volume("data");
    app.in_volume(&data, &fill_script(6));
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("stockdedup");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let output = backup_with(&s3, &app.project, &store, &recipient, &["--dedup"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let manifest = &list_json(&s3, &store)[0];
    let volume = manifest["volumes"][0]["name"].as_str().unwrap().to_string();
    let chunks = show_json(&s3, &store, &app.project)["volumes"][0]["chunks"].clone();
    assert!(chunks.as_array().unwrap().len() > 2);
    // The manifest itself holds the lists, and in `chunks` only their count.
    assert_eq!(
        manifest["volumes"][0]["chunks"],
        serde_json::json!([{ "in_lists": chunks.as_array().unwrap().len() }]),
        "{manifest}"
    );
    std::fs::write(
        work.path().join("manifest.json"),
        serde_json::to_vec_pretty(manifest).unwrap(),
    )
    .unwrap();
    let restored = work.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    // Exactly the README's loop (with the test server's endpoint).
    let script = format!(
        r#"set -o pipefail; cd {work}
A=s3://stockdedup/lifeboat/{app}
get() {{
  aws --endpoint-url {endpoint} s3 cp --quiet "$A/chunks/$(echo $1 | cut -c1-2)/$1" "$2" &&
  echo "$1  $2" | sha256sum -c --quiet >&2
}}
jq -r '.volumes[] | select(.name=="{volume}") | .lists[] | .sha256' manifest.json |
while read sum; do get $sum list.zst || exit 1; zstd -dc list.zst; done |
while read id sum size plain; do get $sum chunk.age || exit 1; age -d -i {key} < chunk.age; done |
zstd -d | tar -xpf - --numeric-owner -C {dir}"#,
        work = work.path().display(),
        app = app.project,
        endpoint = s3.endpoint,
        key = key.display(),
        dir = restored.display()
    );
    let output = run(s3
        .env(Command::new("bash").args(["-c", &script]))
        .env_remove("AWS_CA_BUNDLE"));
    assert!(output.status.success(), "{}", stderr(&output));
    let inside = app.in_volume(&data, "sha256sum /v/big.bin | cut -c1-64");
    let outside = run(Command::new("sha256sum").arg(restored.join("big.bin")));
    assert_eq!(stdout(&outside)[..64], inside);

    // A chunk replaced in the bucket stops the loop at its sha256 check, and so does a list.
    let list = manifest["volumes"][0]["lists"][0]["sha256"]
        .as_str()
        .unwrap();
    for (n, sum) in [chunks[1]["sha256"].as_str().unwrap(), list]
        .iter()
        .enumerate()
    {
        let file = s3.object_file(
            "stockdedup",
            &format!("lifeboat/{}/chunks/{}/{sum}", app.project, &sum[..2]),
        );
        let genuine = std::fs::read(&file).unwrap();
        std::fs::write(&file, b"planted").unwrap();
        let again = work.path().join(format!("again{n}"));
        std::fs::create_dir(&again).unwrap();
        let output = run(s3
            .env(Command::new("bash").args([
                "-c",
                &script.replace(
                    &restored.display().to_string(),
                    &again.display().to_string(),
                ),
            ]))
            .env_remove("AWS_CA_BUNDLE"));
        assert!(
            !output.status.success(),
            "a replaced object ({n}) must stop the loop"
        );
        assert!(stderr(&output).contains("FAILED"), "{}", stderr(&output));
        std::fs::write(&file, genuine).unwrap();
    }
}

/// A volume longer than the store takes parts per object (here 2 parts of 5 MiB) is stored in
/// segments (format 4): lifeboat restores and copies it, the README's `cat` of the segments
/// recovers it with stock tools, and a segment replaced in the bucket (same size) is caught:
/// restore exits 4 and writes nothing.
#[test]
fn a_volume_split_into_segments_comes_back_and_a_replaced_segment_is_caught() {
    let mut app = TestApp::new("segments");
    let data = app.volume("data");
    app.in_volume(&data, &fill_script(22));
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("segments");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let parts = ["--part-size-mib", "5", "--max-parts", "2"];
    let output = backup_with(&s3, &app.project, &store, &recipient, &parts);
    assert!(output.status.success(), "{}", stderr(&output));
    let before = app.snapshot(&data);
    let manifest = &list_json(&s3, &store)[0];
    assert_eq!(manifest["format_version"], 4);
    let volume = &manifest["volumes"][0];
    let segments = volume["segments"].as_u64().unwrap();
    assert!(segments >= 3, "{volume}");
    let id = manifest["backup_id"].as_str().unwrap();
    let object = volume["object"].as_str().unwrap();
    let prefix = format!("lifeboat/{}/{id}", app.project);
    let shown = with_key(&s3, "show", &app.project, &store, &[id], &key);
    assert!(
        stdout(&shown).contains(&format!("{object}.0001")),
        "{}",
        stdout(&shown)
    );

    // Exactly the README's commands for a volume in segments.
    let restored = work.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    std::fs::write(
        work.path().join("manifest.json"),
        serde_json::to_vec_pretty(manifest).unwrap(),
    )
    .unwrap();
    // A planted object beside the segments is not taken.
    let planted = s3.object_file("segments", &format!("{prefix}/{object}.{segments:04}"));
    std::fs::write(&planted, b"planted").unwrap();
    let script = format!(
        r#"set -e -o pipefail; cd {work}
B=s3://segments/{prefix}
O={object}
N=$(jq --arg o "$O" '.volumes[] | select(.object==$o) | .segments // 1' manifest.json)
names="$O $(seq -f "$O.%04g" 1 $((N - 1)))"
for s in $names; do aws --endpoint-url {endpoint} s3 cp --quiet "$B/$s" "$s"; done
echo $names | wc -w
cat $names | sha256sum; grep '"sha256":' manifest.json
cat $names | age -d -i {key} | zstd -d \
  | tar -xpf - --numeric-owner -C {dir}"#,
        work = work.path().display(),
        endpoint = s3.endpoint,
        key = key.display(),
        dir = restored.display()
    );
    let output = run(s3
        .env(Command::new("bash").args(["-c", &script]))
        .env_remove("AWS_CA_BUNDLE"));
    assert!(output.status.success(), "{}", stderr(&output));
    let said = stdout(&output);
    assert_eq!(
        said.lines().next(),
        Some(segments.to_string().as_str()),
        "{said}"
    );
    assert!(
        said.contains(&format!("{}  -", volume["sha256"].as_str().unwrap())),
        "{said}"
    );
    let inside = app.in_volume(&data, "sha256sum /v/big.bin | cut -c1-64");
    let outside = run(Command::new("sha256sum").arg(restored.join("big.bin")));
    assert_eq!(stdout(&outside)[..64], inside);

    // lifeboat restores it (the planted object still beside it), and copies it segment by
    // segment (to a store that takes more parts per object: the segments stay as they are).
    app.wipe(&data);
    let output = restore(&s3, &app.project, &store, &key);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(app.snapshot(&data), before);
    let local = work.path().join("copy");
    let to = format!("file://{}", local.display());
    let output = run(s3.env(&mut lifeboat()).args([
        "copy",
        "-p",
        &app.project,
        "--from",
        &store,
        "--to",
        &to,
        "--all",
    ]));
    assert!(output.status.success(), "{}", stderr(&output));
    let output = run(s3
        .env(&mut lifeboat())
        .args(["verify", "-p", &app.project, "--store", &to, "-i"])
        .arg(&key));
    assert!(output.status.success(), "{}", stderr(&output));
    for index in 1..segments {
        let copied = local.join(format!("{}/{id}/{object}.{index:04}", app.project));
        assert!(copied.exists(), "{}", copied.display());
    }

    // A bucket writer replaces a middle segment with bytes of the same size.
    let middle = s3.object_file("segments", &format!("{prefix}/{object}.0001"));
    let size = std::fs::metadata(&middle).unwrap().len() as usize;
    std::fs::write(&middle, vec![0x5a; size]).unwrap();
    app.in_volume(&data, "echo changed-after > /v/marker");
    let changed = app.snapshot(&data);
    let output = restore(&s3, &app.project, &store, &key);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("was altered"),
        "{}",
        stderr(&output)
    );
    assert_eq!(app.snapshot(&data), changed, "nothing was written");
    assert!(app.running().values().all(|r| *r), "the app runs again");
}
