//! A real S3 server per test: s3s-fs on 127.0.0.1, its data in a temporary folder.

use super::listening;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

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
