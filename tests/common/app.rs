//! The app under test: a compose-labelled set of busybox containers and named volumes, the
//! test images (built locally `FROM scratch`, rebuilt when their recipe changes), and the
//! tree snapshots that say two volumes hold identical data.

use super::{docker, stdout};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

pub const IMAGE: &str = "lifeboat-test/busybox:1";
pub const IMAGE_V2: &str = "lifeboat-test/busybox:2";

/// Fails clearly when no engine runs, then makes sure the test images exist.
pub fn ensure_docker() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let info = Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output();
        match info {
            Ok(o) if o.status.success() => {}
            _ => panic!("no Docker engine answers `docker info`: run the tests through .ci/test, which installs and starts one"),
        }
        let recipe = busybox_recipe();
        for image in [IMAGE, IMAGE_V2] {
            let built = Command::new("docker")
                .args(["image", "inspect", "-f", "{{index .Config.Labels \"io.lifeboat.test.recipe\"}}", image])
                .output();
            if built.is_ok_and(|o| o.status.success() && stdout(&o).trim() == recipe) {
                continue;
            }
            import_busybox_image(image, &recipe);
        }
    });
}

fn busybox_path() -> &'static str {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed (.ci/test installs it)")
}

/// What the test images are made of: this recipe's version and the busybox binary. A cached
/// image with another label is built again.
fn busybox_recipe() -> String {
    use sha2::Digest;
    const RECIPE: &str = "scratch + static busybox with its applets, /tmp, CMD sh; v1";
    let mut hash = sha2::Sha256::new();
    hash.update(RECIPE);
    hash.update(std::fs::read(busybox_path()).unwrap());
    hex::encode(hash.finalize())[..16].to_string()
}

/// `FROM scratch` plus Debian's static busybox, imported (no registry is needed).
fn import_busybox_image(tag: &str, recipe: &str) {
    let busybox = busybox_path();
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("bin")).unwrap();
    std::fs::create_dir_all(root.path().join("tmp")).unwrap();
    std::fs::copy(busybox, root.path().join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in stdout(&list).lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", root.path().join("bin").join(applet)).unwrap();
    }
    let tar = root.path().join("../rootfs-lifeboat-test.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(root.path())
        .args(["-cf"])
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    docker(&[
        "import",
        "-c",
        "CMD [\"/bin/sh\"]",
        "-c",
        &format!("LABEL io.lifeboat.test.recipe={recipe}"),
        tar.to_str().unwrap(),
        tag,
    ]);
    let _ = std::fs::remove_file(tar);
}

/// A compose-labelled app made of busybox containers and named volumes; removed on drop.
pub struct TestApp {
    pub project: String,
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
}

impl TestApp {
    pub fn new(test: &str) -> Self {
        ensure_docker();
        let project = format!("lbt{}{}", test.replace('_', ""), std::process::id());
        Self {
            project,
            containers: vec![],
            volumes: vec![],
        }
    }

    /// A compose volume `short`: Docker name `<project>_<short>`.
    pub fn volume(&mut self, short: &str) -> String {
        let name = format!("{}_{short}", self.project);
        docker(&[
            "volume",
            "create",
            "--label",
            &format!("com.docker.compose.project={}", self.project),
            "--label",
            &format!("com.docker.compose.volume={short}"),
            "--label",
            "com.docker.compose.version=2.20.0",
            &name,
        ]);
        self.volumes.push(name.clone());
        name
    }

    /// A service container mounting `mounts` (volume short name, path); started when `running`.
    pub fn service(
        &mut self,
        service: &str,
        image: &str,
        mounts: &[(&str, &str)],
        depends_on: &[&str],
        running: bool,
    ) -> String {
        let idle = [
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 1; done",
        ];
        self.service_running(service, image, mounts, depends_on, running, &idle)
    }

    /// Like [`TestApp::service`], with the container's command (empty: the image's own).
    pub fn service_running(
        &mut self,
        service: &str,
        image: &str,
        mounts: &[(&str, &str)],
        depends_on: &[&str],
        running: bool,
        command: &[&str],
    ) -> String {
        self.service_created(service, image, mounts, depends_on, running, command, &[])
    }

    /// Like [`TestApp::service_running`], with more `docker create` options (`extra`).
    #[allow(clippy::too_many_arguments)]
    pub fn service_created(
        &mut self,
        service: &str,
        image: &str,
        mounts: &[(&str, &str)],
        depends_on: &[&str],
        running: bool,
        command: &[&str],
        extra: &[&str],
    ) -> String {
        let name = format!("{}-{service}-1", self.project);
        let mut args: Vec<String> = vec![
            "create".into(),
            "--name".into(),
            name.clone(),
            "--label".into(),
            format!("com.docker.compose.project={}", self.project),
            "--label".into(),
            format!("com.docker.compose.service={service}"),
            "--label".into(),
            "org.example.version=7.1.0".into(),
            "--env".into(),
            "APP_VERSION=7.1.0".into(),
        ];
        if !depends_on.is_empty() {
            let deps: Vec<String> = depends_on
                .iter()
                .map(|d| format!("{d}:service_started:false"))
                .collect();
            args.extend([
                "--label".into(),
                format!("com.docker.compose.depends_on={}", deps.join(",")),
            ]);
        }
        for (volume, path) in mounts {
            args.extend(["-v".into(), format!("{}_{volume}:{path}", self.project)]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        args.push(image.into());
        args.extend(command.iter().map(|c| c.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args);
        if running {
            docker(&["start", &name]);
        }
        self.containers.push(name.clone());
        name
    }

    /// Runs a busybox shell script with `volume` mounted at /v.
    pub fn in_volume(&self, volume: &str, script: &str) -> String {
        docker(&[
            "run",
            "--rm",
            "-v",
            &format!("{volume}:/v"),
            IMAGE,
            "sh",
            "-c",
            script,
        ])
    }

    /// Every path of the volume with its type, mode, owner, mtime, size, link count, link
    /// target and content hash: equal snapshots mean identical trees.
    pub fn snapshot(&self, volume: &str) -> String {
        self.in_volume(volume, SNAPSHOT_SCRIPT)
    }

    /// [`TestApp::snapshot`] of a host directory (bind-mounted at /v).
    pub fn snapshot_dir(&self, dir: &std::path::Path) -> String {
        docker(&[
            "run",
            "--rm",
            "-v",
            &format!("{}:/v", dir.display()),
            IMAGE,
            "sh",
            "-c",
            SNAPSHOT_SCRIPT,
        ])
    }

    /// Empties a volume (keeps the mount point).
    pub fn wipe(&self, volume: &str) {
        let left = self.in_volume(
            volume,
            "find /v -mindepth 1 -maxdepth 1 -exec rm -rf {} + && chmod 777 /v && ls -A /v",
        );
        assert_eq!(left, "", "volume {volume} is empty after wiping");
    }

    /// Whether each container runs.
    pub fn running(&self) -> BTreeMap<String, bool> {
        self.containers
            .iter()
            .map(|c| {
                (
                    c.clone(),
                    docker(&["inspect", "-f", "{{.State.Running}}", c]) == "true",
                )
            })
            .collect()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        for v in &self.volumes {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", v])
                .output();
        }
    }
}

pub const SNAPSHOT_SCRIPT: &str = r#"cd /v && find . -print | sort | while IFS= read -r f; do
  if [ -L "$f" ]; then echo "$f L $(stat -c '%u %g' "$f") -> $(readlink "$f")";
  elif [ -d "$f" ]; then echo "$f D $(stat -c '%a %u %g %Y' "$f")";
  elif [ -f "$f" ]; then echo "$f F $(stat -c '%a %u %g %Y %s %h' "$f") $(sha256sum < "$f" | cut -c1-16)";
  else echo "$f O $(stat -c '%a %u %g %Y %F' "$f")"; fi; done"#;

/// The test data: random and text files, empty dirs, symlinks, a hardlink, odd modes and
/// owners, a FIFO, old mtimes, and optionally a big random file.
pub fn fill_script(big_mib: usize) -> String {
    format!(
        r#"set -e; cd /v
mkdir -p empty/dir deep/a/b/c "with space"
head -c {big} /dev/urandom > big.bin
head -c 3000000 /dev/urandom > deep/a/random.bin
seq 1 300000 > deep/a/b/c/text.txt
echo hello > hello.txt; ln hello.txt hardlink.txt; ln -s hello.txt link.txt; ln -s /etc/passwd abs-link; ln -s nowhere dangling
echo s > "with space/f i l e"
echo secret > secret; chmod 600 secret; chown 999:999 secret
echo x > setuid.bin; chmod 4755 setuid.bin
mkdir pgdata; chmod 700 pgdata; chown 70:70 pgdata; echo 15 > pgdata/PG_VERSION; chown 70:70 pgdata/PG_VERSION
echo o > owned.txt; chown 1234:5678 owned.txt
mkfifo fifo
touch -d '2001-02-03 04:05:06' hello.txt deep/a/b
chmod 750 /v"#,
        big = big_mib * 1024 * 1024
    )
}
