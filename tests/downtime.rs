//! Stopping and starting like `docker compose`: dependents first, the containers of one
//! dependency level in parallel, each with its own stop timeout (Docker's 10 s when it sets
//! none), against real containers. The bounds on downtime are generous; what they rule out is
//! the old behaviour (one container after the other, a flat 60 s each).

mod common;

use common::*;

fn downtime_of_newest(s3: &S3Server, store: &str) -> f64 {
    let listed = list_json(s3, store);
    listed.last().unwrap()["downtime_seconds"].as_f64().unwrap()
}

fn time_of(container: &str, field: &str) -> chrono::DateTime<chrono::Utc> {
    docker(&[
        "inspect",
        "-f",
        &format!("{{{{.State.{field}}}}}"),
        container,
    ])
    .parse()
    .unwrap()
}

/// Two services whose main process is a shell (PID 1 ignores SIGTERM), default settings: they
/// are stopped together and killed after Docker's 10 s, not one after the other after 60 s.
/// A third sets its own stop timeout (compose's `stop_grace_period`), which is honoured.
#[test]
fn containers_that_ignore_sigterm_are_stopped_together_with_their_own_timeouts() {
    let mut app = TestApp::new("parastop");
    let data = app.volume("data");
    app.in_volume(&data, "echo hello > /v/hello");
    let deaf = ["sh", "-c", "while true; do sleep 1; done"];
    let one = app.service_running("one", IMAGE, &[("data", "/data")], &[], true, &deaf);
    let two = app.service_running("two", IMAGE, &[], &[], true, &deaf);
    let quick = app.service_created(
        "quick",
        IMAGE,
        &[],
        &[],
        true,
        &deaf,
        &["--stop-timeout", "2"],
    );
    let s3 = S3Server::start();
    let store = s3.bucket("parastop");
    let work = tempfile::tempdir().unwrap();
    let (_key, recipient) = keygen(work.path());
    let output = backup_with(&s3, &app.project, &store, &recipient, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let down = downtime_of_newest(&s3, &store);
    eprintln!("DOWNTIME: three SIGTERM-ignoring containers: {down:.1} s");
    // Docker's 10 s, plus reading the volume and starting again, with room for a loaded CI host.
    assert!(down <= 14.0, "down for {down:.1} s");
    for name in [&one, &two, &quick] {
        assert!(
            stderr(&output).contains(name.as_str()) && stderr(&output).contains("was killed"),
            "the kill is named: {}",
            stderr(&output)
        );
    }
    // The one with a 2 s timeout was killed long before the two with Docker's 10 s.
    let quick_died = time_of(&quick, "FinishedAt");
    let one_died = time_of(&one, "FinishedAt");
    assert!(
        (one_died - quick_died).num_milliseconds() > 5000,
        "quick {quick_died}, one {one_died}"
    );
    assert!(app.running().values().all(|r| *r), "all run again");

    // --stop-timeout overrides every container's own.
    let output = backup_with(
        &s3,
        &app.project,
        &store,
        &recipient,
        &["--stop-timeout", "1"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let down = downtime_of_newest(&s3, &store);
    assert!(down <= 6.0, "with --stop-timeout 1, down for {down:.1} s");
}

/// A three-level chain (web → api → db) and a level of two (web and worker both on api):
/// dependents stop first and start last, and the two of one level stop together, so the app
/// is down for less than the sum of their stop times.
#[test]
fn a_dependency_chain_stops_in_order_and_a_level_stops_together() {
    let mut app = TestApp::new("chainstop");
    let data = app.volume("data");
    app.in_volume(&data, "echo hello > /v/hello");
    // Each takes 3 s to shut down after SIGTERM.
    let slow = [
        "sh",
        "-c",
        "trap 'sleep 3; exit 0' TERM; while true; do sleep 1; done",
    ];
    let db = app.service_running("db", IMAGE, &[("data", "/data")], &[], true, &slow);
    let api = app.service_running("api", IMAGE, &[], &["db"], true, &slow);
    let web = app.service_running("web", IMAGE, &[], &["api"], true, &slow);
    let worker = app.service_running("worker", IMAGE, &[], &["api"], true, &slow);
    let s3 = S3Server::start();
    let store = s3.bucket("chainstop");
    let work = tempfile::tempdir().unwrap();
    let (_key, recipient) = keygen(work.path());
    let output = backup_with(&s3, &app.project, &store, &recipient, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let down = downtime_of_newest(&s3, &store);
    eprintln!("DOWNTIME: four containers in three levels, 5 s to stop each: {down:.1} s");
    // Less than the sum of their stop times (4 × 5 s); by levels it is 3 × 5 s and a little.
    assert!(down < 20.0, "down for {down:.1} s");
    // Stopped dependents first: web and worker before api before db.
    let died = |c: &str| time_of(c, "FinishedAt");
    assert!(died(&web) < died(&api) && died(&worker) < died(&api) && died(&api) < died(&db));
    // web and worker stopped together (within a second and a half, not 5 s apart).
    assert!((died(&web) - died(&worker)).num_milliseconds().abs() < 1500);
    // Started dependencies first.
    let started = |c: &str| time_of(c, "StartedAt");
    assert!(started(&db) < started(&api) && started(&api) < started(&web));
    assert!(started(&api) < started(&worker));
    assert!(app.running().values().all(|r| *r), "all run again");
}
