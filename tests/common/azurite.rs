//! A real Azure blob service per test: Azurite on 127.0.0.1.

use super::{listening, run, stderr};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

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
