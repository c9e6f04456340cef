//! The command line as an operator meets it: check-config, clear errors for bad input (exit
//! 2), and secrets that never show up in output.

mod common;

use common::*;

#[test]
fn check_config_reaches_the_store_and_docker_and_lists_what_a_backup_takes() {
    let mut app = TestApp::new("checkcfg");
    app.volume("data");
    app.service("web", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("checkcfg");
    let (_, recipient) = keygen(tempfile::tempdir().unwrap().path());
    let started = docker(&["inspect", "-f", "{{.State.StartedAt}}", &app.containers[0]]);
    let output = run(s3.env(&mut lifeboat()).args([
        "check-config",
        "-p",
        &app.project,
        "--store",
        &store,
        "-r",
        &recipient,
    ]));
    assert!(output.status.success());
    let text = stdout(&output);
    assert!(
        text.contains("is reachable") && text.contains(&format!("volume {}_data", app.project)),
        "{text}"
    );
    assert!(app.running().values().all(|r| *r));
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.StartedAt}}", &app.containers[0]]),
        started,
        "check-config stops nothing: the container was never restarted"
    );

    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("bad.toml");
    std::fs::write(&config, "[backup]\ncompresion = \"zstd\"\n").unwrap();
    let output =
        run(lifeboat()
            .arg("--config")
            .arg(&config)
            .args(["check-config", "-p", &app.project]));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("compresion")
            && stderr(&output).contains("did you mean `compression`?"),
        "{}",
        stderr(&output)
    );

    let stranger = recipient_of(&other_owner_key(work.path()));
    let passphrase = work.path().join("passphrase.txt");
    std::fs::write(&passphrase, "correct horse battery staple\n").unwrap();
    let passphrase = passphrase.display().to_string();
    for (args, needle) in [
        (vec!["restore", "-p", "x"], "needs the owner key"),
        (
            vec!["restore", "-p", "x", "-i", &passphrase],
            "keys, not passphrases",
        ),
        (
            vec![
                "backup",
                "-p",
                "x",
                "--store",
                "ftp://nope/x",
                "-r",
                &recipient,
            ],
            "unknown scheme 'ftp'",
        ),
        (vec!["backup", "-p", "x", "-r", "age1bogus"], "age1bogus"),
        (
            vec![
                "backup",
                "-p",
                "x",
                "--store",
                "file:///tmp/x",
                "-r",
                &stranger,
            ],
            "do not include the owner",
        ),
        (
            vec!["restore", "-p", "x", "-i", "/nonexistent/key.txt"],
            "/nonexistent/key.txt",
        ),
        (
            vec!["backup", "--store", "file:///tmp/x", "-r", &recipient],
            "--project",
        ),
        (
            vec![
                "backup",
                "-p",
                "x",
                "-r",
                &recipient,
                "--compression",
                "zstd",
                "--level",
                "42",
            ],
            "out of range",
        ),
    ] {
        let output = run(lifeboat().args(&args));
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(needle),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn secrets_never_appear_in_output() {
    let mut app = TestApp::new("secrets");
    app.volume("data");
    app.service("web", IMAGE, &[("data", "/data")], &[], true);
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    let secret = "SuperSecretValue-do-not-print-8d1f";
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = run(lifeboat()
        .env("AWS_ACCESS_KEY_ID", "AKIDLIFEBOATTEST")
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{closed}"))
        .env("AWS_REGION", "us-east-1")
        .args([
            "-vv",
            "backup",
            "-p",
            &app.project,
            "--store",
            "s3://secrets-bucket/x",
            "-r",
            &recipient,
        ]));
    assert!(!output.status.success());
    let all = format!("{}{}", stdout(&output), stderr(&output));
    assert!(!all.contains(secret), "the AWS secret leaked");

    // The S3 server with the secret as its key: a full backup and restore at debug level.
    let s3 = S3Server::start();
    let store = s3.bucket("secrets");
    let output = run(s3.env(&mut lifeboat()).args([
        "-vv",
        "backup",
        "-p",
        &app.project,
        "--store",
        &store,
        "-r",
        &recipient,
    ]));
    assert!(output.status.success());
    let identity = std::fs::read_to_string(&key).unwrap();
    let secret_key = identity.lines().last().unwrap();
    let output = run(s3
        .env(&mut lifeboat())
        .args([
            "-vv",
            "restore",
            "-p",
            &app.project,
            "--store",
            &store,
            "-i",
        ])
        .arg(&key));
    assert!(output.status.success());
    let all = format!("{}{}", stdout(&output), stderr(&output));
    assert!(
        !all.contains(S3_SECRET_KEY) && !all.contains(secret_key),
        "a secret leaked into restore output"
    );

    // A damaged identity file: the error names the file, never the key material.
    let broken = work.path().join("broken.txt");
    std::fs::write(
        &broken,
        format!("{}XYZ\n", &secret_key[..secret_key.len() - 3]),
    )
    .unwrap();
    let output = run(s3
        .env(&mut lifeboat())
        .args(["restore", "-p", &app.project, "--store", &store, "-i"])
        .arg(&broken));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("broken.txt"),
        "{}",
        stderr(&output)
    );
    assert!(
        !stderr(&output).contains(&secret_key[20..40]),
        "key material leaked: {}",
        stderr(&output)
    );

    // An identity file others can read is refused, with the fix, as ssh does.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = run(s3
        .env(&mut lifeboat())
        .args(["verify", "-p", &app.project, "--store", &store, "-i"])
        .arg(&key));
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("chmod 600"), "{}", stderr(&output));
    assert!(!stderr(&output).contains(secret_key), "{}", stderr(&output));

    let output = run(lifeboat().arg("--help"));
    assert!(!stdout(&output).contains(secret));

    // Secret settings loaded from files (`*_FILE`), then --help, a failing host hook, a bad
    // config file and -vv: the secrets appear in no output and in no hook's environment.
    let webhook = "https://hooks.example/services/T0KEN-webhook-8d1f";
    let secret_file = work.path().join("aws_secret");
    std::fs::write(&secret_file, S3_SECRET_KEY).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let webhook_file = work.path().join("webhook");
    std::fs::write(&webhook_file, webhook).unwrap();
    std::fs::set_permissions(&webhook_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let with_secrets = |cmd: &mut std::process::Command| {
        cmd.env_remove("AWS_SECRET_ACCESS_KEY")
            .env("AWS_SECRET_ACCESS_KEY_FILE", &secret_file)
            .env("LIFEBOAT_WEBHOOK_URL_FILE", &webhook_file);
    };
    let mut help = lifeboat();
    with_secrets(&mut help);
    let output = run(help.args(["backup", "--help"]));
    assert!(output.status.success());
    assert!(!stdout(&output).contains("T0KEN"), "{}", stdout(&output));

    let hook_env = work.path().join("hook-env.txt");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = work.path().join("hooks.toml");
    std::fs::write(
        &config,
        format!(
            "[[hook]]\non = \"before-backup\"\ncommand = \"env > {}; echo failing with {webhook}; exit 3\"\n",
            hook_env.display()
        ),
    )
    .unwrap();
    let mut failing = lifeboat();
    s3.env(&mut failing);
    with_secrets(&mut failing);
    let output = run(failing.arg("--config").arg(&config).args([
        "-vv",
        "backup",
        "-p",
        &app.project,
        "--store",
        &store,
        "-r",
        &recipient,
    ]));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let env = std::fs::read_to_string(&hook_env).unwrap();
    assert!(env.contains("LIFEBOAT_EVENT=before-backup"), "{env}");
    for leaked in [
        S3_SECRET_KEY,
        "T0KEN",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
    ] {
        assert!(!env.contains(leaked), "{leaked} reached the hook: {env}");
    }
    let all = format!("{}{}", stdout(&output), stderr(&output));
    assert!(!all.contains(S3_SECRET_KEY), "{all}");
    assert!(
        !all.contains("\"Env\""),
        "no container environment at -vv: {all}"
    );

    let bad = work.path().join("bad.toml");
    std::fs::write(&bad, format!("[notify]\nwebhook = \"{webhook}\n")).unwrap();
    let output = run(lifeboat().arg("--config").arg(&bad).args(["list"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(!stderr(&output).contains("T0KEN"), "{}", stderr(&output));
    assert!(stderr(&output).contains("line 2"), "{}", stderr(&output));

    // A secret file others may read, and a config file holding a webhook that others may read.
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut open = lifeboat();
    with_secrets(&mut open);
    let output = run(open.args(["list"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("chmod 600"), "{}", stderr(&output));
    let open_config = work.path().join("open.toml");
    std::fs::write(&open_config, format!("[notify]\nwebhook = \"{webhook}\"\n")).unwrap();
    std::fs::set_permissions(&open_config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = run(lifeboat().arg("--config").arg(&open_config).args(["list"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("chmod 600"), "{}", stderr(&output));
    assert!(!stderr(&output).contains("T0KEN"), "{}", stderr(&output));
}

/// The owner's recipient, from the `# public key:` line keygen writes.
fn recipient_of(key: &std::path::Path) -> String {
    std::fs::read_to_string(key)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_string()
}

#[test]
fn keygen_writes_the_owner_key_and_the_backup_key_and_says_which_goes_where() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().unwrap();
    let config_home = work.path().join("config");
    let owner = work.path().join("key.txt");
    let keygen = |stdout: &std::path::Path| {
        let mut cmd = lifeboat();
        cmd.env("XDG_CONFIG_HOME", &config_home)
            .arg("keygen")
            .stdout(std::fs::File::create(stdout).unwrap());
        run(&mut cmd)
    };
    // `lifeboat keygen > key.txt`, as scripts already use it.
    let output = keygen(&owner);
    assert!(output.status.success(), "{}", stderr(&output));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let backup_key = config_home.join("lifeboat/backup.key");
    assert_eq!(mode(&owner), 0o600, "the owner key");
    assert_eq!(mode(&backup_key), 0o600, "the backup key");
    assert_eq!(mode(&config_home.join("lifeboat")), 0o700);
    let owner_text = std::fs::read_to_string(&owner).unwrap();
    let backup_text = std::fs::read_to_string(&backup_key).unwrap();
    assert!(
        owner_text.contains("AGE-SECRET-KEY-1")
            && owner_text.contains(
                "# lifeboat allowed_signers: lifeboat namespaces=\"lifeboat-manifest\" ssh-ed25519 "
            ),
        "{owner_text}"
    );
    assert!(
        !backup_text.contains("AGE-SECRET-KEY"),
        "the backup key decrypts nothing: {backup_text}"
    );
    let said = stderr(&output);
    assert!(
        said.contains("owner key: written to stdout") && said.contains("offline"),
        "{said}"
    );
    assert!(
        said.contains(&format!("backup key: written to {}", backup_key.display()))
            && said.contains("backup host"),
        "{said}"
    );
    // What keygen says on stderr is still a valid recipients file.
    let recipients = work.path().join("recipient.txt");
    std::fs::write(&recipients, &said).unwrap();

    // Never overwritten.
    let output = keygen(&work.path().join("second.txt"));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("keygen never overwrites a key"),
        "{}",
        stderr(&output)
    );
    assert_eq!(std::fs::read_to_string(&backup_key).unwrap(), backup_text);

    // The same backup key, made again from the owner key (a new backup host).
    let again = work.path().join("again.key");
    let output = run(lifeboat()
        .args(["keygen", "--from-owner-key"])
        .arg(&owner)
        .arg("--backup-key-output")
        .arg(&again));
    assert!(output.status.success(), "{}", stderr(&output));
    let signing = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("# signing key:"))
            .unwrap()
            .to_string()
    };
    assert_eq!(
        signing(&std::fs::read_to_string(&again).unwrap()),
        signing(&backup_text)
    );
    let pair = |text: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        pair(&std::fs::read_to_string(&again).unwrap()),
        pair(&backup_text)
    );

    // backup finds its key in the default place, and says how to make one when there is none.
    for (config, args, needle) in [
        (work.path().join("none"), vec![], "lifeboat keygen"),
        (
            config_home.clone(),
            vec!["--backup-key".to_string(), owner.display().to_string()],
            "must stay off the backup host",
        ),
        (
            config_home.clone(),
            vec![
                "-R".to_string(),
                recipients.display().to_string(),
                "--store".into(),
                "ftp://x/y".into(),
            ],
            "unknown scheme",
        ),
    ] {
        let output = run(lifeboat()
            .env("XDG_CONFIG_HOME", &config)
            .args(["backup", "-p", "x"])
            .args(&args));
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(needle),
            "{args:?}: {}",
            stderr(&output)
        );
    }

    // A key others may read is refused, with the fix.
    std::fs::set_permissions(&owner, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = run(lifeboat().args(["restore", "-p", "x", "-i"]).arg(&owner));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains(&format!("chmod 600 {}", owner.display())),
        "{}",
        stderr(&output)
    );
}

/// `LIFEBOAT_PROJECT=demo LIFEBOAT_NAME=nightly`: every command acts on the set stored under
/// `nightly`, never on `demo`'s (a prune used to act on the other set).
#[test]
fn one_name_rule_for_every_command() {
    let mut app = TestApp::new("namerule");
    let data = app.volume("data");
    app.in_volume(&data, "echo x > /v/f");
    app.service("web", IMAGE, &[("data", "/data")], &[], true);
    let s3 = S3Server::start();
    let store = s3.bucket("namerule");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());
    // A backup stored under the project's own name, which nothing below may touch.
    backup_ok(&s3, &app.project, &store, &recipient);
    let named = format!("{}-nightly", app.project);
    let with_env = |args: &[&str]| {
        let mut cmd = lifeboat();
        s3.env(&mut cmd)
            .env("LIFEBOAT_PROJECT", &app.project)
            .env("LIFEBOAT_NAME", &named)
            .env("LIFEBOAT_STORE", &store)
            .env("LIFEBOAT_IDENTITY_FILE", &key)
            .args(args);
        run(&mut cmd)
    };
    for _ in 0..2 {
        let output = with_env(&["backup", "-r", &recipient]);
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let output = with_env(&["list", "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|m| m["app"] == named.as_str()));
    let output = with_env(&["show", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["app"], named.as_str());
    let output = with_env(&["verify"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains(&data), "{}", stdout(&output));
    let output = with_env(&["prune", "--keep-last", "1"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output).matches("removed").count(),
        1,
        "{}",
        stdout(&output)
    );
    let output = with_env(&["unlock"]);
    assert!(
        stderr(&output).contains(&format!("'{named}' was not locked")),
        "{}",
        stderr(&output)
    );
    // Piped into `head -1`, list and show exit quietly when head has what it wanted.
    for command in ["list", "show", "verify"] {
        let mut cmd = std::process::Command::new("bash");
        s3.env(&mut cmd)
            .env("LIFEBOAT_PROJECT", &app.project)
            .env("LIFEBOAT_NAME", &named)
            .env("LIFEBOAT_STORE", &store)
            .env("LIFEBOAT_IDENTITY_FILE", &key)
            .env("LIFEBOAT_BACKUP_KEY_FILE", backup_key())
            .env("XDG_CONFIG_HOME", "/nonexistent/lifeboat-tests-config")
            .args([
                "-c",
                &format!(
                    "set -o pipefail; {} {command} | head -c 10",
                    env!("CARGO_BIN_EXE_lifeboat")
                ),
            ]);
        let output = run(&mut cmd);
        assert!(output.status.success(), "{command}: {}", stderr(&output));
        assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
    }
    // The project's own set is intact.
    let output = run(s3.env(&mut lifeboat()).args([
        "list",
        "--json",
        "-p",
        &app.project,
        "--store",
        &store,
    ]));
    let own: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0]["app"], app.project.as_str());
}
