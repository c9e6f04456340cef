//! The disaster drill: a real PostgreSQL server in a container, rows written through psql, a
//! backup, the server "burns" (every container and volume removed), the app is installed fresh
//! at the same version and started (a fresh, empty database), the backup is restored, and the
//! same rows come back from a query.

mod common;

use common::*;
use std::time::{Duration, Instant};

const PG_IMAGE: &str = "lifeboat-test/postgres:15";

fn psql(container: &str, sql: &str) -> String {
    docker(&[
        "exec", container, "psql", "-h", "/tmp", "-U", "postgres", "-At", "-c", sql,
    ])
}

fn wait_ready(container: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = std::process::Command::new("docker")
            .args([
                "exec", container, "psql", "-h", "/tmp", "-U", "postgres", "-c", "select 1",
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "PostgreSQL in {container} did not become ready: {}",
            docker(&["logs", container])
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn postgres_comes_back_after_the_server_burned() {
    ensure_docker();
    assert!(
        std::process::Command::new("docker")
            .args(["image", "inspect", PG_IMAGE])
            .output()
            .unwrap()
            .status
            .success(),
        "{PG_IMAGE} is missing: .ci/test builds it with tests/images/build-postgres.sh"
    );
    let s3 = S3Server::start();
    let store = s3.bucket("drill");
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path());

    let mut app = TestApp::new("pgdrill");
    app.volume("pgdata");
    let db = app.service_running(
        "db",
        PG_IMAGE,
        &[("pgdata", "/var/lib/postgresql/data")],
        &[],
        true,
        &[],
    );
    wait_ready(&db);
    psql(
        &db,
        "create table invoices (id int primary key, customer text, amount numeric)",
    );
    psql(
        &db,
        "insert into invoices select i, md5(i::text), i * 1.5 from generate_series(1, 50000) i",
    );
    let checksum_sql =
        "select count(*), sum(amount), md5(string_agg(customer, ',' order by id)) from invoices";
    let before = psql(&db, checksum_sql);

    let output = run(s3.env(&mut lifeboat()).args([
        "backup",
        "-p",
        &app.project,
        "--store",
        &store,
        "-r",
        &recipient,
        "-v",
    ]));
    assert!(output.status.success());
    wait_ready(&db);
    assert_eq!(
        psql(&db, checksum_sql),
        before,
        "the app runs again after the backup"
    );

    // The server burned.
    for c in app.containers.drain(..) {
        docker(&["rm", "-f", &c]);
    }
    for v in app.volumes.drain(..) {
        docker(&["volume", "rm", &v]);
    }

    // A fresh install at the same version, started: an empty database.
    app.volume("pgdata");
    let db = app.service_running(
        "db",
        PG_IMAGE,
        &[("pgdata", "/var/lib/postgresql/data")],
        &[],
        true,
        &[],
    );
    wait_ready(&db);
    assert!(
        !psql(
            &db,
            "select count(*) from pg_tables where tablename = 'invoices'"
        )
        .starts_with('1')
    );

    let started = Instant::now();
    let output = run(s3
        .env(&mut lifeboat())
        .args(["restore", "-p", &app.project, "--store", &store, "-i"])
        .arg(&key)
        .arg("-v"));
    let restore_time = started.elapsed();
    assert!(output.status.success());
    wait_ready(&db);
    eprintln!(
        "DRILL: restore took {:.2} s (verify + stop + replace + start)",
        restore_time.as_secs_f64()
    );
    assert_eq!(psql(&db, checksum_sql), before, "the same rows come back");
}
