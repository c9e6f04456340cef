//! SIGINT and SIGTERM become a cancellation token that the long-running operations watch.
//!
//! The handler stays installed after the first signal, so a second Ctrl-C cannot kill lifeboat
//! while it is starting the app's containers again.
//!
//! Where it sits: A leaf: depends on nothing in the crate.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT or SIGTERM.
pub fn cancel_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = wait_for_signal().await;
        tracing::warn!("received {name}: stopping; the app's containers will be started again");
        cancel.cancel();
        loop {
            let name = wait_for_signal().await;
            tracing::warn!("received {name} again: still cleaning up, please wait");
        }
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).expect("installing a SIGTERM handler works on unix");
    let mut int =
        signal(SignalKind::interrupt()).expect("installing a SIGINT handler works on unix");
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}
