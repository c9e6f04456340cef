//! `lifeboat copy` between stores of different kinds (the S3 server to Azurite): genuine
//! backups only, plain and deduplicated, what the target lacks, resumable after an
//! interruption, a tampered source refused; what arrives restores byte for byte.

mod common;

use common::*;

#[test]
fn backups_copy_from_s3_to_azure_resume_and_restore_there() {
    let mut app = TestApp::new("copy");
    let data = app.volume("data");
    app.in_volume(&data, &fill_script(4));
    app.service("app", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let azure = AzuriteServer::start();
    let from = s3.bucket("copyfrom");
    let to = azure.container("copyto");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let both = |cmd: &mut std::process::Command| {
        s3.env(cmd);
        azure.env(cmd);
    };
    let before = app.snapshot(&data);
    for dedup in [false, true] {
        let extra: &[&str] = if dedup { &["--dedup"] } else { &[] };
        let output = backup_with(&s3, &app.project, &from, &recipient, extra);
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let ids: Vec<String> = list_json(&s3, &from)
        .iter()
        .map(|m| m["backup_id"].as_str().unwrap().to_string())
        .collect();

    // The backup host's key is enough: nothing is decrypted.
    let copy_all = || {
        let mut cmd = lifeboat();
        both(&mut cmd);
        cmd.args([
            "copy",
            "-p",
            &app.project,
            "--from",
            &from,
            "--to",
            &to,
            "--all",
        ]);
        run(&mut cmd)
    };
    let output = copy_all();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output).matches("copied").count(),
        2,
        "{}",
        stdout(&output)
    );

    let azure_list = |cmd: &mut std::process::Command| {
        azure.env(cmd).args(["list", "--json", "--store", &to]);
        serde_json::from_slice::<Vec<serde_json::Value>>(&run(cmd).stdout).unwrap()
    };
    assert_eq!(azure_list(&mut lifeboat()).len(), 2);
    let output = copy_all();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output).matches("already in").count(),
        2,
        "{}",
        stdout(&output)
    );

    // Interrupted before its commit point (a copy to a local folder whose manifest never got
    // written): the next copy finishes it, copying no object again, and skips the rest.
    let folder = tempfile::tempdir().unwrap();
    let local = format!("file://{}/copies", folder.path().display());
    let copy_to_folder = || {
        run(s3.env(&mut lifeboat()).args([
            "copy",
            "-p",
            &app.project,
            "--from",
            &from,
            "--to",
            &local,
            "--all",
        ]))
    };
    let output = copy_to_folder();
    assert!(output.status.success(), "{}", stderr(&output));
    let manifest = folder
        .path()
        .join(format!("copies/{}/{}/manifest.json", app.project, ids[1]));
    std::fs::remove_file(&manifest).unwrap();
    let output = copy_to_folder();
    assert!(output.status.success(), "{}", stderr(&output));
    let said = stdout(&output);
    assert!(said.contains(&format!("{}  already in", ids[0])), "{said}");
    assert!(
        said.contains(&format!("{}  copied: 0 object(s)", ids[1])),
        "{said}"
    );
    assert!(manifest.exists());

    // What arrived restores, both formats, byte for byte.
    for id in &ids {
        app.wipe(&data);
        let output = run(azure
            .env(&mut lifeboat())
            .args([
                "restore",
                "-p",
                &app.project,
                "--store",
                &to,
                "--backup",
                id,
            ])
            .args(["--no-safety-copy", "-i"])
            .arg(&key));
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(app.snapshot(&data), before, "backup {id}");
    }

    // A source object replaced in the bucket is not copied on (exit 4), and no manifest of it
    // appears in the target.
    let output = backup_with(&s3, &app.project, &from, &recipient, &[]);
    assert!(output.status.success());
    let newest = list_json(&s3, &from).last().unwrap().clone();
    let object = s3.object_file(
        "copyfrom",
        &format!(
            "lifeboat/{}/{}/{}",
            app.project,
            newest["backup_id"].as_str().unwrap(),
            newest["volumes"][0]["object"].as_str().unwrap()
        ),
    );
    let size = std::fs::metadata(&object).unwrap().len() as usize;
    std::fs::write(&object, vec![7u8; size]).unwrap();
    let mut cmd = lifeboat();
    both(&mut cmd);
    let output = run(cmd.args(["copy", "-p", &app.project, "--from", &from, "--to", &to]));
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("does not match the signed manifest"),
        "{}",
        stderr(&output)
    );
    assert_eq!(azure_list(&mut lifeboat()).len(), 2);
}
