//! lifeboat against Podman's Docker-compatible API (`podman system service`, Debian's podman),
//! through `DOCKER_HOST`: an app of Podman containers labelled like compose's is backed up
//! (plain and deduplicated), restored into a wiped volume byte for byte, and left running.
//! `.ci/test` installs podman; without it the test fails, never skips.

mod common;

use common::*;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A Podman API service on a socket of its own, stopped when dropped.
struct Podman {
    child: Child,
    dir: tempfile::TempDir,
    project: String,
}

impl Podman {
    fn start(project: &str) -> Podman {
        let dir = tempfile::tempdir().unwrap();
        // Containers here may not raise RLIMIT_NOFILE, which Podman's default does.
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n",
        )
        .unwrap();
        let socket = dir.path().join("podman.sock");
        let child = Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .env("CONTAINERS_CONF", dir.path().join("containers.conf"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start podman ({e}): run the tests through .ci/test, which installs it"
                )
            });
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "podman's API socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Podman {
            child,
            dir,
            project: project.to_string(),
        }
    }

    fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("podman.sock").display())
    }

    fn podman(&self, args: &[&str]) -> String {
        let output = run(Command::new("podman")
            .args(args)
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf")));
        assert!(
            output.status.success(),
            "podman {args:?}: {}",
            stderr(&output)
        );
        stdout(&output).trim().to_string()
    }

    fn lifeboat(&self, s3: &S3Server) -> Command {
        let mut cmd = lifeboat();
        s3.env(&mut cmd).env("DOCKER_HOST", self.host());
        cmd
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", &format!("{}-web-1", self.project)])
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .output();
        let _ = Command::new("podman")
            .args(["volume", "rm", "-f", &format!("{}_data", self.project)])
            .output();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_podman_app_is_backed_up_and_restored_through_the_docker_api() {
    ensure_docker();
    let project = format!("lbtpodman{}", std::process::id());
    let podman = Podman::start(&project);
    // The busybox test image, from Docker into Podman (no registry here).
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs.tar");
    let created = docker(&["create", IMAGE, "true"]);
    docker(&["export", "-o", &rootfs.display().to_string(), &created]);
    docker(&["rm", &created]);
    let image = "localhost/lifeboat-test-busybox:podman";
    podman.podman(&["import", &rootfs.display().to_string(), image]);
    let volume = format!("{project}_data");
    podman.podman(&[
        "volume",
        "create",
        "--label",
        &format!("com.docker.compose.project={project}"),
        "--label",
        "com.docker.compose.volume=data",
        &volume,
    ]);
    let in_volume = |script: &str| {
        podman.podman(&[
            "run",
            "--rm",
            "-v",
            &format!("{volume}:/v"),
            image,
            "sh",
            "-c",
            script,
        ])
    };
    in_volume(&fill_script(3));
    let web = format!("{project}-web-1");
    podman.podman(&[
        "run",
        "-d",
        "--name",
        &web,
        "--label",
        &format!("com.docker.compose.project={project}"),
        "--label",
        "com.docker.compose.service=web",
        "-v",
        &format!("{volume}:/data"),
        image,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    ]);
    // Podman's archive API gives every file root:root and rounds mtimes to the second (the
    // README says so): owners and mtimes are left out of the comparison; types, modes, sizes,
    // link counts, link targets and contents stay in.
    let snapshot = || {
        in_volume(SNAPSHOT_SCRIPT)
            .lines()
            .map(|line| {
                let mut fields: Vec<&str> = line.split(' ').collect();
                let at = fields.iter().position(|f| ["F", "D", "O", "L"].contains(f));
                if let Some(at) = at {
                    let (first_owner, n) = if fields[at] == "L" {
                        (at + 1, 2)
                    } else {
                        (at + 2, 3)
                    };
                    for owner_or_mtime in fields.iter_mut().skip(first_owner).take(n) {
                        *owner_or_mtime = "-";
                    }
                }
                fields.join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let before = snapshot();

    let s3 = S3Server::start();
    let (key, recipient) = keygen(work.path());
    for (bucket, dedup) in [("podman", false), ("podman-dedup", true)] {
        let store = s3.bucket(bucket);
        let mut backup = podman.lifeboat(&s3);
        backup.args([
            "backup", "-p", &project, "--store", &store, "-r", &recipient,
        ]);
        if dedup {
            backup.arg("--dedup");
        }
        let output = run(&mut backup);
        assert!(output.status.success(), "backup: {}", stderr(&output));
        assert!(
            stderr(&output).contains("the engine is Podman"),
            "{}",
            stderr(&output)
        );
        assert_eq!(
            podman.podman(&["inspect", "-f", "{{.State.Running}}", &web]),
            "true"
        );

        in_volume("find /v -mindepth 1 -maxdepth 1 -exec rm -rf {} +");
        assert_ne!(snapshot(), before);
        let output = run(podman
            .lifeboat(&s3)
            .args([
                "restore",
                "-p",
                &project,
                "--store",
                &store,
                "--no-safety-copy",
                "-i",
            ])
            .arg(&key));
        assert!(output.status.success(), "restore: {}", stderr(&output));
        assert_eq!(snapshot(), before, "dedup={dedup}");
        assert_eq!(
            podman.podman(&["inspect", "-f", "{{.State.Running}}", &web]),
            "true"
        );
    }
}
