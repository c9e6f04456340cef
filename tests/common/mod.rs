//! Test harness: real Docker, a real S3 server (s3s-fs) per test on 127.0.0.1, and the built
//! `lifeboat` binary. `.ci/test` installs and starts what is missing; a missing engine or server
//! fails the test with a message saying so — nothing is skipped.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const IMAGE: &str = "lifeboat-test/busybox:1";
pub const IMAGE_V2: &str = "lifeboat-test/busybox:2";

std::thread_local! {
    /// The backup key [`keygen`] last made on this test's thread.
    static BACKUP_KEY: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

/// The lifeboat binary with a clean environment for the store. Like a backup host, which finds
/// its backup key in the default place, every command of a test finds the backup key the
/// test's last [`keygen`] made (`LIFEBOAT_BACKUP_KEY_FILE`); the caller's own keys and config
/// directory are never seen.
pub fn lifeboat() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    for var in [
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "LIFEBOAT_CONFIG",
        "LIFEBOAT_STORE",
        "LIFEBOAT_BACKUP_KEY_FILE",
        "LIFEBOAT_IDENTITY_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("AWS_EC2_METADATA_DISABLED", "true");
    cmd.env("XDG_CONFIG_HOME", "/nonexistent/lifeboat-tests-config");
    if let Some(key) = BACKUP_KEY.with(|k| k.borrow().clone()) {
        cmd.env("LIFEBOAT_BACKUP_KEY_FILE", key);
    }
    cmd
}

/// Runs a command, returning its output; prints it when the test fails later.
pub fn run(cmd: &mut Command) -> Output {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    eprintln!(
        "$ {cmd:?}\n-> {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `docker ARGS`, panicking with its stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI is installed (.ci/test installs docker.io)");
    assert!(
        output.status.success(),
        "docker {args:?} failed: {}",
        stderr(&output)
    );
    stdout(&output).trim().to_string()
}

/// Fails clearly when no engine runs, then makes sure the test images exist.
pub fn ensure_docker() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let info = Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output();
        match info {
            Ok(o) if o.status.success() => {}
            _ => panic!("no Docker engine answers `docker info`: run the tests through .ci/test, which installs and starts one"),
        }
        for image in [IMAGE, IMAGE_V2] {
            if Command::new("docker").args(["image", "inspect", image]).output().is_ok_and(|o| o.status.success()) {
                continue;
            }
            import_busybox_image(image);
        }
    });
}

/// `FROM scratch` plus Debian's static busybox, imported (no registry is needed).
fn import_busybox_image(tag: &str) {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed (.ci/test installs it)");
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

    /// Empties a volume (keeps the mount point).
    pub fn wipe(&self, volume: &str) {
        self.in_volume(volume, "rm -rf /v/* /v/.[!.]* ; chmod 777 /v; true");
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

const SNAPSHOT_SCRIPT: &str = r#"cd /v && find . -print | sort | while IFS= read -r f; do
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

/// A real S3 server (s3s-fs) on 127.0.0.1, its data in a temporary folder; killed on drop.
pub struct S3Server {
    child: Child,
    pub root: tempfile::TempDir,
    pub endpoint: String,
    pub port: u16,
}

pub const S3_ACCESS_KEY: &str = "lifeboat-test";
pub const S3_SECRET_KEY: &str = "lifeboat-test-secret";

impl S3Server {
    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_at(root, port)
    }

    fn start_at(root: tempfile::TempDir, port: u16) -> Self {
        let child = Command::new("s3s-fs")
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                S3_ACCESS_KEY,
                "--secret-key",
                S3_SECRET_KEY,
            ])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = listening(child, "s3s-fs", port);
        Self {
            child,
            root,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
        }
    }

    /// Creates a bucket and returns a store URL with a prefix in it.
    pub fn bucket(&self, name: &str) -> String {
        std::fs::create_dir_all(self.root.path().join(name)).unwrap();
        format!("s3://{name}/lifeboat")
    }

    /// Sets the AWS variables lifeboat reads to reach this server.
    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
    }

    /// Multipart uploads that were started and neither completed nor aborted.
    pub fn open_uploads(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".upload-"))
            .collect()
    }

    /// The file behind an object.
    pub fn object_file(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.path().join(bucket).join(key)
    }

    /// Every object file under a bucket folder.
    pub fn files(&self, bucket: &str) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out)
                } else {
                    out.push(path)
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root.path().join(bucket), &mut out);
        out.sort();
        out
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and data.
    pub fn restart(self) -> Self {
        let mut this = self;
        this.kill();
        let root = std::mem::replace(&mut this.root, tempfile::tempdir().unwrap());
        let port = this.port;
        drop(this);
        Self::start_at(root, port)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh owner key in `dir` and its backup key, which this test's later commands use:
/// (owner key file, the owner's recipient).
pub fn keygen(dir: &Path) -> (PathBuf, String) {
    let suffix = rand_suffix();
    let key = dir.join(format!("key-{suffix}.txt"));
    // The backup key outlives `dir`, which some tests drop at once (they need no owner key).
    let backup_key = keys_dir().join(format!("backup-{suffix}.key"));
    let output = run(lifeboat()
        .args(["keygen", "--output"])
        .arg(&key)
        .arg("--backup-key-output")
        .arg(&backup_key));
    assert!(output.status.success());
    BACKUP_KEY.with(|k| *k.borrow_mut() = Some(backup_key));
    let recipient = stderr(&output)
        .lines()
        .find(|l| l.starts_with("age1"))
        .expect("keygen prints the recipient")
        .to_string();
    (key, recipient)
}

/// A folder for the test binary's backup keys, removed when it exits.
fn keys_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// Another owner key in `dir`, whose backup key this test does not use (a wrong key).
pub fn other_owner_key(dir: &Path) -> PathBuf {
    let suffix = rand_suffix();
    let key = dir.join(format!("other-key-{suffix}.txt"));
    let output = run(lifeboat()
        .args(["keygen", "--output"])
        .arg(&key)
        .arg("--backup-key-output")
        .arg(dir.join(format!("other-backup-{suffix}.key"))));
    assert!(output.status.success());
    key
}

/// The backup key this test's last [`keygen`] made.
pub fn backup_key() -> PathBuf {
    BACKUP_KEY
        .with(|k| k.borrow().clone())
        .expect("keygen() ran first")
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The manifests `lifeboat list --json` shows.
pub fn list_json(s3: &S3Server, store: &str) -> Vec<serde_json::Value> {
    let output = run(s3
        .env(&mut lifeboat())
        .args(["list", "--json", "--store", store]));
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Azurite's blob service on 127.0.0.1, its data in a temporary folder; killed on drop.
pub struct AzuriteServer {
    child: Child,
    _root: tempfile::TempDir,
    pub endpoint: String,
}

impl AzuriteServer {
    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("azurite-blob")
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
                "--location",
            ])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = listening(child, "azurite-blob", port);
        Self {
            child,
            _root: root,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Creates a container and returns a store URL in it.
    pub fn container(&self, name: &str) -> String {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/images/azurite-create-container.py"
        );
        let output = run(Command::new("python3").args([script, &self.endpoint, name]));
        assert!(output.status.success(), "{}", stderr(&output));
        format!("az://{name}/lifeboat")
    }

    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("AZURE_STORAGE_USE_EMULATOR", "true")
            .env("AZURITE_BLOB_STORAGE_URL", &self.endpoint)
    }
}

impl Drop for AzuriteServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every backend that runs here, behind one interface for the parameterized suite.
pub enum Backend {
    S3(S3Server),
    Azure(AzuriteServer),
    Folder(tempfile::TempDir),
}

impl Backend {
    pub fn all() -> Vec<Backend> {
        vec![
            Backend::S3(S3Server::start()),
            Backend::Azure(AzuriteServer::start()),
            Backend::Folder(tempfile::tempdir().unwrap()),
        ]
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::S3(_) => "s3",
            Backend::Azure(_) => "azure",
            Backend::Folder(_) => "file",
        }
    }

    /// A fresh store URL (bucket, container or folder).
    pub fn store(&self, name: &str) -> String {
        match self {
            Backend::S3(s3) => s3.bucket(name),
            Backend::Azure(az) => az.container(name),
            Backend::Folder(dir) => format!("file://{}/{name}", dir.path().display()),
        }
    }

    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        match self {
            Backend::S3(s3) => s3.env(cmd),
            Backend::Azure(az) => az.env(cmd),
            Backend::Folder(_) => cmd,
        }
    }

    pub fn list(&self, store: &str) -> Vec<serde_json::Value> {
        let output = run(self
            .env(&mut lifeboat())
            .args(["list", "--json", "--store", store]));
        assert!(output.status.success());
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

/// A TCP relay on 127.0.0.1 in front of a server: records the start of every request and can
/// cut one connection after it has relayed a number of response bytes (a broken download).
pub struct FaultProxy {
    pub port: u16,
    requests: std::sync::Arc<std::sync::Mutex<String>>,
    cut_after: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stall_after: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stall_upload_after: std::sync::Arc<std::sync::atomic::AtomicU64>,
    upload_rate: std::sync::Arc<std::sync::atomic::AtomicU64>,
    download_rate: std::sync::Arc<std::sync::atomic::AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

/// Waits until `n` bytes may pass a link shared by all connections, at `rate` bytes per second
/// (0: at once); `free` is when the link is next idle.
async fn pace(
    free: &std::sync::Mutex<tokio::time::Instant>,
    rate: &std::sync::atomic::AtomicU64,
    n: usize,
) {
    let per_second = rate.load(std::sync::atomic::Ordering::SeqCst);
    if per_second == 0 {
        return;
    }
    let pass_at = {
        let mut free = free.lock().unwrap();
        let start = (*free).max(tokio::time::Instant::now());
        *free = start + std::time::Duration::from_secs_f64(n as f64 / per_second as f64);
        *free
    };
    tokio::time::sleep_until(pass_at).await;
}

impl FaultProxy {
    pub fn start(upstream_port: u16) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let cut_after = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stall_after = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stall_upload_after = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (log, cut, stall) = (requests.clone(), cut_after.clone(), stall_after.clone());
        let stall_up = stall_upload_after.clone();
        let upload_rate = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        // One uplink for all connections: the time the next upload byte may pass.
        let uplink_free = std::sync::Arc::new(std::sync::Mutex::new(tokio::time::Instant::now()));
        let rate = upload_rate.clone();
        let download_rate = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let downlink_free = std::sync::Arc::new(std::sync::Mutex::new(tokio::time::Instant::now()));
        let down_rate = download_rate.clone();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (log, cut, stall) = (log.clone(), cut.clone(), stall.clone());
                let stall_up = stall_up.clone();
                let (rate, uplink_free) = (rate.clone(), uplink_free.clone());
                let (down_rate, downlink_free) = (down_rate.clone(), downlink_free.clone());
                tokio::spawn(async move {
                    let Ok(server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                    else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let upstream = tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut sent = 0u64;
                        while let Ok(n) = client_read.read(&mut buf).await {
                            pace(&uplink_free, &rate, n).await;
                            if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            sent += n as u64;
                            let limit = stall_up.load(Ordering::SeqCst);
                            if limit > 0 && sent >= limit && stall_up.swap(0, Ordering::SeqCst) > 0
                            {
                                // Stop reading from the client: its request body stalls.
                                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                            }
                            let head = String::from_utf8_lossy(&buf[..n.min(2048)]).into_owned();
                            if head.contains("HTTP/1.1") {
                                log.lock().unwrap().push_str(&head);
                            }
                        }
                        let _ = server_write.shutdown().await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut relayed = 0u64;
                    while let Ok(n) = server_read.read(&mut buf).await {
                        pace(&downlink_free, &down_rate, n).await;
                        if n == 0 || client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        relayed += n as u64;
                        let limit = cut.load(Ordering::SeqCst);
                        if limit > 0 && relayed >= limit && cut.swap(0, Ordering::SeqCst) > 0 {
                            break; // drop both halves: the client sees the body end early
                        }
                        let limit = stall.load(Ordering::SeqCst);
                        if limit > 0 && relayed >= limit && stall.swap(0, Ordering::SeqCst) > 0 {
                            // Keep the connection open and silent, like a dead middlebox.
                            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                        }
                    }
                    upstream.abort();
                });
            }
        });
        Self {
            port,
            requests,
            cut_after,
            stall_after,
            stall_upload_after,
            upload_rate,
            download_rate,
            _runtime: runtime,
        }
    }

    /// Limits what all connections together receive from upstream to `bytes_per_second`
    /// (0: no limit): a slow downlink.
    pub fn throttle_downloads(&self, bytes_per_second: u64) {
        self.download_rate
            .store(bytes_per_second, std::sync::atomic::Ordering::SeqCst);
    }

    /// Limits what all connections together send upstream to `bytes_per_second` (0: no limit):
    /// a slow uplink.
    pub fn throttle_uploads(&self, bytes_per_second: u64) {
        self.upload_rate
            .store(bytes_per_second, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops relaying (but keeps open) the next connection that relays more than `bytes`
    /// response bytes, once.
    pub fn stall_once_after(&self, bytes: u64) {
        self.stall_after
            .store(bytes, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops reading requests (the client's upload stalls) on the next connection that sends
    /// more than `bytes`, once.
    pub fn stall_upload_once_after(&self, bytes: u64) {
        self.stall_upload_after
            .store(bytes, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn has_stalled(&self) -> bool {
        self.stall_after.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    /// Cuts the next connection that relays more than `bytes` response bytes, once.
    pub fn cut_once_after(&self, bytes: u64) {
        self.cut_after
            .store(bytes, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn was_cut(&self) -> bool {
        self.cut_after.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    pub fn requests(&self) -> String {
        self.requests.lock().unwrap().clone()
    }
}

/// Starts `cmd` (a backup to `s3`) and returns once its first multipart upload is open.
pub fn spawn_until_uploading(s3: &S3Server, cmd: &mut Command) -> Child {
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s3.open_uploads().is_empty() {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("the upload never started: {}", stderr(&output));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// `lifeboat backup -p PROJECT --store STORE -r RECIPIENT` against `s3`; it must succeed.
pub fn backup_ok(s3: &S3Server, project: &str, store: &str, recipient: &str) {
    let output = run(s3
        .env(&mut lifeboat())
        .args(["backup", "-p", project, "--store", store, "-r", recipient]));
    assert!(
        output.status.success(),
        "backup failed: {}",
        stderr(&output)
    );
}

/// `lifeboat restore -p PROJECT --store STORE -i KEY` against `s3`.
pub fn restore(s3: &S3Server, project: &str, store: &str, key: &Path) -> Output {
    run(s3
        .env(&mut lifeboat())
        .args(["restore", "-p", project, "--store", store, "-i"])
        .arg(key))
}

/// A server process the tests started, once it accepts connections on `port`; a server that
/// is not installed or does not come up fails the test with what to do.
fn listening(spawned: std::io::Result<Child>, name: &str, port: u16) -> Child {
    let mut child = spawned.unwrap_or_else(|e| {
        panic!("cannot start {name} ({e}): run the tests through .ci/test, which installs it")
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline || child.try_wait().is_ok_and(|status| status.is_some()) {
            let _ = child.kill();
            panic!("{name} did not listen on 127.0.0.1:{port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}
