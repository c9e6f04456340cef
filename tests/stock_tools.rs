//! The README's "Recovering without lifeboat" commands work on a backup lifeboat made:
//! `aws s3 cp … - | age -d -i key | zstd -d | tar -x`.

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

    let restored = work.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    // Exactly the README's pipeline.
    let script = format!(
        "set -o pipefail; aws --endpoint-url {endpoint} s3 cp {object} - | age -d -i {key} | zstd -d | tar -xpf - --numeric-owner -C {dir}",
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
