//! One suite of task-store tests, run against both backends through `&mut dyn Backend`: the
//! embedded SQLite database and a real PostgreSQL ([`crate::pg`]). What a backend must do is the
//! same for both: commits with generations and etags, `If-Match` in the write's transaction,
//! `max_tasks` counted by the store, label-embedding sets shared by label set, seeded names, tune
//! jobs. The PostgreSQL-only part (change feed, schema versions) follows the suite.

use deltaspace::det::DetKind;
use deltaspace::server::{
    Backend, JobRecord, JobState, POSTGRES_SCHEMA_VERSION, Precondition, StoreError, StoreLocation,
    open_store,
};
use deltaspace::task::{Label, Task};
use ndarray::Array2;

use crate::pg::{self, with_client};

/// Opens the store under test again, as a restart (or another replica) would.
type Reopen<'a> = &'a dyn Fn() -> Box<dyn Backend>;

fn task(name: &str, z0: f32) -> Task {
    Task {
        name: name.into(),
        det: DetKind::Adapter,
        z: vec![z0, 0.5],
        labels: ["no", "yes"]
            .map(|n| Label {
                name: n.into(),
                description: format!("{n}."),
            })
            .to_vec(),
        head: None,
        subspace: Some("s@1".into()),
    }
}

fn embeddings() -> Array2<f32> {
    Array2::from_shape_fn((2, 3), |(r, c)| (r * 3 + c) as f32)
}

fn put(
    db: &mut dyn Backend,
    task: &Task,
    expect: &Precondition,
) -> Result<(u64, String, bool), StoreError> {
    let e = embeddings();
    let (record, created) = db.write(task, "s@1", ("m", "k", &e), expect, usize::MAX)?;
    Ok((record.generation, record.etag, created))
}

fn names(db: &dyn Backend) -> Vec<String> {
    let mut names = Vec::new();
    db.each(&mut |record| {
        names.push(record.name);
        Ok(())
    })
    .unwrap();
    names
}

fn generations_and_preconditions(db: &mut dyn Backend, _reopen: Reopen<'_>) {
    let (generation, first, created) = put(db, &task("a", 1.0), &Precondition::None).unwrap();
    assert!(created);
    assert_eq!(generation, 1);
    let stale = Precondition::Etag("0000".into());
    assert!(matches!(
        put(db, &task("a", 2.0), &stale),
        Err(StoreError::EtagMismatch { .. })
    ));
    let (generation, second, created) =
        put(db, &task("a", 2.0), &Precondition::Etag(first.clone())).unwrap();
    assert!(!created);
    assert_eq!(generation, 2);
    assert_ne!(second, first);
    assert!(matches!(
        put(db, &task("a", 3.0), &Precondition::Absent),
        Err(StoreError::EtagMismatch { .. })
    ));
    assert!(matches!(
        put(db, &task("b", 3.0), &Precondition::Exists),
        Err(StoreError::EtagMismatch { .. })
    ));
    assert!(matches!(
        db.delete("a", "s@1", &Precondition::Etag(first)),
        Err(StoreError::EtagMismatch { .. })
    ));
    // A task is deleted only for the subspace it was stored for (the one a server serves).
    assert!(matches!(
        db.delete("a", "s@2", &Precondition::None),
        Err(StoreError::NotFound(_))
    ));
    db.delete("a", "s@1", &Precondition::Etag(second)).unwrap();
    assert!(matches!(
        db.delete("a", "s@1", &Precondition::None),
        Err(StoreError::NotFound(_))
    ));
    let (generation, _, created) = put(db, &task("a", 4.0), &Precondition::Absent).unwrap();
    assert!(created && generation == 1, "a deleted name starts again");
}

fn rows_and_label_sets_survive_reopening(db: &mut dyn Backend, reopen: Reopen<'_>) {
    put(db, &task("b", 1.0), &Precondition::None).unwrap();
    put(db, &task("a", 1.0), &Precondition::None).unwrap();
    assert!(db.mark_seeded("a").unwrap());
    assert!(!db.mark_seeded("a").unwrap());
    let db = reopen();
    let mut records = Vec::new();
    db.each(&mut |record| {
        records.push(record);
        Ok(())
    })
    .unwrap();
    assert_eq!(
        records.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let parsed: Task = serde_json::from_str(&records[1].task_json).unwrap();
    assert_eq!(parsed, task("b", 1.0));
    let cached = db.label_embeddings("m").unwrap();
    assert_eq!(
        cached.len(),
        1,
        "one row for the label set both tasks share"
    );
    let values: Vec<f32> = embeddings().iter().copied().collect();
    assert_eq!(cached["k"], values);
    assert_eq!(db.label_embedding("m", "k").unwrap(), Some(values));
    assert_eq!(db.label_embedding("m", "other").unwrap(), None);
    assert!(db.label_embeddings("other-model").unwrap().is_empty());
    assert!(db.was_seeded("a").unwrap());
    assert!(!db.was_seeded("b").unwrap());
    assert_eq!(db.stored_subspace("a").unwrap().as_deref(), Some("s@1"));
    assert_eq!(db.stored_subspace("nobody").unwrap(), None);
}

fn label_sets_are_saved_and_forgotten(db: &mut dyn Backend, _reopen: Reopen<'_>) {
    let (one, two) = (embeddings(), embeddings() * 2.0);
    db.save_label_embeddings("m", &[("k1", &one), ("k2", &one)])
        .unwrap();
    db.save_label_embeddings("m", &[("k2", &two)]).unwrap();
    let cached = db.label_embeddings("m").unwrap();
    assert_eq!(
        cached["k2"],
        two.iter().copied().collect::<Vec<_>>(),
        "replaced"
    );
    let forgotten = db
        .forget_label_embeddings("m", &["k1".into(), "absent".into()])
        .unwrap();
    assert_eq!(forgotten, 1);
    assert_eq!(db.label_embeddings("m").unwrap().len(), 1);
}

fn write_many_commits_generations_in_one_go(db: &mut dyn Backend, _reopen: Reopen<'_>) {
    let tasks: Vec<Task> = (0..100)
        .map(|i| task(&format!("t{i:03}"), i as f32))
        .collect();
    assert_eq!(db.write_many(&tasks, "s@1").unwrap(), 100);
    assert_eq!(db.write_many(&tasks[..10], "s@1").unwrap(), 0);
    let mut generations = Vec::new();
    db.each(&mut |r| {
        generations.push(r.generation);
        Ok(())
    })
    .unwrap();
    assert_eq!(generations.len(), 100);
    assert_eq!(generations.iter().filter(|&&g| g == 2).count(), 10);
}

fn max_tasks_bounds_creation_but_not_replacement(db: &mut dyn Backend, reopen: Reopen<'_>) {
    let e = embeddings();
    let write = |db: &mut dyn Backend, name: &str, subspace: &str| {
        db.write(
            &task(name, 1.0),
            subspace,
            ("m", "k", &e),
            &Precondition::None,
            2,
        )
    };
    write(db, "a", "s@1").unwrap();
    write(db, "b", "s@1").unwrap();
    assert!(matches!(
        write(db, "c", "s@1"),
        Err(StoreError::Full { max: 2 })
    ));
    let (replaced, created) = write(db, "a", "s@1").unwrap();
    assert!(!created && replaced.generation == 2);
    // Tasks of another subspace are counted apart.
    write(db, "x", "s@2").unwrap();
    db.delete("b", "s@1", &Precondition::None).unwrap();
    write(db, "c", "s@1").unwrap();
    // The count comes from the store, not from this connection's memory.
    let mut other = reopen();
    assert!(matches!(
        write(other.as_mut(), "d", "s@1"),
        Err(StoreError::Full { .. })
    ));
    assert_eq!(names(db), ["a", "c", "x"]);
}

/// `max_tasks` counts the tasks another connection wrote meanwhile (an import beside a running
/// server), not only this connection's own writes.
fn max_tasks_counts_what_another_connection_wrote(db: &mut dyn Backend, reopen: Reopen<'_>) {
    let e = embeddings();
    let write = |db: &mut dyn Backend, name: &str| {
        db.write(
            &task(name, 0.1),
            "s@1",
            ("m", "k", &e),
            &Precondition::None,
            2,
        )
        .map(|(_, created)| created)
    };
    assert!(write(db, "a").unwrap());
    let mut importer = reopen();
    assert_eq!(importer.write_many(&[task("b", 0.2)], "s@1").unwrap(), 1);
    assert!(matches!(write(db, "c"), Err(StoreError::Full { max: 2 })));
    assert_eq!(names(db), ["a", "b"]);
}

fn jobs_are_recorded_paged_and_failed_on_restart(db: &mut dyn Backend, reopen: Reopen<'_>) {
    let job = |id: &str, owner: &str| JobRecord::queued(id.into(), "t".into(), 10, owner.into(), 1);
    for (id, owner) in [("j1", "a"), ("j2", "b"), ("j3", "a")] {
        db.save_job(&job(id, owner)).unwrap();
    }
    let mut running = job("j1", "a");
    running.state = JobState::Running;
    running.step = 5;
    db.save_job(&running).unwrap();
    assert_eq!(db.job("j1").unwrap(), Some(running));
    assert_eq!(db.job("nope").unwrap(), None);
    let page: Vec<String> = db
        .jobs(None, 2)
        .unwrap()
        .into_iter()
        .map(|j| j.job)
        .collect();
    assert_eq!(
        page,
        ["j3", "j2"],
        "newest first; replacing a record keeps its place"
    );
    let rest: Vec<String> = db
        .jobs(Some("j2"), 2)
        .unwrap()
        .into_iter()
        .map(|j| j.job)
        .collect();
    assert_eq!(rest, ["j1"]);
    let mut db = reopen();
    assert_eq!(db.fail_unfinished_jobs("a", "interrupted").unwrap(), 2);
    let failed = db.job("j3").unwrap().unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(failed.error.as_deref(), Some("interrupted"));
    assert_eq!(db.job("j2").unwrap().unwrap().state, JobState::Queued);
}

fn a_saved_job_keeps_a_cancel_asked_and_an_ended_record(db: &mut dyn Backend, reopen: Reopen<'_>) {
    let mut owners_copy = JobRecord::queued("j".into(), "t".into(), 10, "a".into(), 1);
    db.save_job(&owners_copy).unwrap();
    // Another replica asks for a cancel; then the owner saves its copy, which has not seen it.
    let mut other = reopen();
    let mut asked = other.job("j").unwrap().unwrap();
    asked.cancel_requested = true;
    other.save_job(&asked).unwrap();
    owners_copy.state = JobState::Running;
    owners_copy.step = 5;
    db.save_job(&owners_copy).unwrap();
    let stored = db.job("j").unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.step, stored.cancel_requested),
        (JobState::Running, 5, true),
        "the owner's progress is saved and the cancel stays asked"
    );
    // Another replica that read the lease as expired cannot end the job once its owner has
    // renewed the lease since that read.
    let mut expired_copy = asked.clone();
    expired_copy.state = JobState::Failed;
    let mut renewed = db.job("j").unwrap().unwrap();
    renewed.heartbeat_ms = expired_copy.heartbeat_ms + 1;
    db.save_job(&renewed).unwrap();
    other.save_job(&expired_copy).unwrap();
    let stored = db.job("j").unwrap().unwrap();
    assert_eq!(stored, renewed, "the renewed job lives");
    // A cancel asked from a copy read before the last renewal takes back neither the owner's
    // progress nor its lease.
    let mut stale_cancel = asked.clone();
    (stale_cancel.state, stale_cancel.step) = (JobState::Queued, 0);
    other.save_job(&stale_cancel).unwrap();
    let stored = db.job("j").unwrap().unwrap();
    assert_eq!(
        stored, renewed,
        "only the cancel is added, and it was asked already"
    );
    // Once the job has ended, a stale copy saved late does not bring it back.
    let mut ended = stored;
    ended.state = JobState::Cancelled;
    db.save_job(&ended).unwrap();
    other.save_job(&asked).unwrap();
    assert_eq!(db.job("j").unwrap(), Some(ended));
}

/// A key no store can hold (PostgreSQL's text cannot hold NUL) names nothing, on every backend:
/// no job, an empty page after it, nothing to delete; never a failed statement (a 500).
fn keys_with_nul_name_nothing(db: &mut dyn Backend, _reopen: Reopen<'_>) {
    db.save_job(&JobRecord::queued(
        "j1".into(),
        "t".into(),
        10,
        "a".into(),
        1,
    ))
    .unwrap();
    put(db, &task("t", 0.1), &Precondition::None).unwrap();
    assert_eq!(db.job("j1\0").unwrap(), None);
    assert!(db.jobs(Some("j1\0"), 5).unwrap().is_empty());
    assert!(matches!(
        db.delete("t\0", "s@1", &Precondition::None),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(names(db), ["t"]);
}

/// Runs each suite function against a fresh store of one backend.
macro_rules! suite {
    ($fresh:path; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                let location = $fresh();
                let reopen = || open_store(&location.0).unwrap();
                let mut db = reopen();
                super::$test(db.as_mut(), &reopen);
            }
        )*
    };
}

/// A fresh location and whatever keeps it alive for the test.
struct Fresh<T>(StoreLocation, #[allow(dead_code)] T);

mod sqlite {
    use super::*;

    fn fresh() -> Fresh<tempfile::TempDir> {
        let dir = tempfile::tempdir().unwrap();
        Fresh(StoreLocation::sqlite_in(dir.path()), dir)
    }

    suite!(fresh;
        generations_and_preconditions,
        rows_and_label_sets_survive_reopening,
        label_sets_are_saved_and_forgotten,
        write_many_commits_generations_in_one_go,
        max_tasks_bounds_creation_but_not_replacement,
        max_tasks_counts_what_another_connection_wrote,
        jobs_are_recorded_paged_and_failed_on_restart,
        a_saved_job_keeps_a_cancel_asked_and_an_ended_record,
        keys_with_nul_name_nothing,
    );
}

mod postgres {
    use super::*;
    use deltaspace::secret::Secret;

    pub(super) fn fresh() -> Fresh<()> {
        Fresh(
            StoreLocation::Postgres(Secret::new(pg::shared().database())),
            (),
        )
    }

    suite!(fresh;
        generations_and_preconditions,
        rows_and_label_sets_survive_reopening,
        label_sets_are_saved_and_forgotten,
        write_many_commits_generations_in_one_go,
        max_tasks_bounds_creation_but_not_replacement,
        max_tasks_counts_what_another_connection_wrote,
        jobs_are_recorded_paged_and_failed_on_restart,
        a_saved_job_keeps_a_cancel_asked_and_an_ended_record,
        keys_with_nul_name_nothing,
    );

    /// A scan reads the rows in pages, each a statement read whole, so one that takes longer than
    /// `statement_timeout` (a replica starting embeds label sets as it scans) still sees every row
    /// once, in name order. One statement for the whole scan would be cancelled: its rows (44 MB
    /// here) wait in the socket for the visitor, and the server's clock runs meanwhile.
    #[test]
    fn a_scan_slower_than_the_statement_timeout_reads_every_row_in_pages() {
        let url = pg::shared().database() + "&options=-c%20statement_timeout%3D2s";
        let mut db = open_store(&StoreLocation::Postgres(Secret::new(url))).unwrap();
        let tasks: Vec<Task> = (0..1100)
            .map(|i| Task {
                z: vec![0.123_456_79; 4096],
                ..task(&format!("t{i:04}"), 0.0)
            })
            .collect();
        assert_eq!(db.write_many(&tasks, "s@1").unwrap(), 1100);
        let mut seen = Vec::new();
        db.each(&mut |record| {
            std::thread::sleep(std::time::Duration::from_millis(3));
            seen.push(record.name);
            Ok(())
        })
        .unwrap();
        let expected: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn changes_number_every_commit_and_name_what_changed() {
        let Fresh(location, ()) = fresh();
        let mut db = open_store(&location).unwrap();
        assert_eq!(db.last_change().unwrap(), Some(0));
        put(db.as_mut(), &task("a", 1.0), &Precondition::None).unwrap();
        put(db.as_mut(), &task("b", 1.0), &Precondition::None).unwrap();
        let deleted_at = db.delete("a", "s@1", &Precondition::None).unwrap();
        assert_eq!(deleted_at, 3);
        assert!(matches!(
            put(db.as_mut(), &task("b", 2.0), &Precondition::Absent),
            Err(StoreError::EtagMismatch { .. })
        ));
        assert_eq!(
            db.last_change().unwrap(),
            Some(3),
            "a refused write is no change"
        );
        let all = db.changes_since(0, 100).unwrap();
        assert_eq!(all.last, 3);
        let written: Vec<(&str, u64)> = all
            .written
            .iter()
            .map(|r| (r.name.as_str(), r.change))
            .collect();
        assert_eq!(written, [("b", 2)]);
        assert_eq!(all.deleted, [("a".to_string(), 3)]);
        db.write_many(&[task("a", 5.0), task("c", 5.0)], "s@1")
            .unwrap();
        let recent = db.changes_since(3, 100).unwrap();
        assert_eq!((recent.last, recent.more), (5, false));
        assert_eq!(recent.written.len(), 2);
        assert!(recent.deleted.is_empty(), "a was written again since");
        // A page at a time, each name at its latest change: b's write (2), a's second write (4;
        // its deletion, 3, is gone with it), c's deletion (6; its write, 5, is gone with it).
        db.delete("c", "s@1", &Precondition::None).unwrap();
        let mut pages = Vec::new();
        let mut since = 0;
        loop {
            let page = db.changes_since(since, 2).unwrap();
            let mut changes: Vec<u64> = page.written.iter().map(|r| r.change).collect();
            changes.extend(page.deleted.iter().map(|(_, change)| *change));
            changes.sort_unstable();
            pages.push((changes, page.last));
            since = page.last;
            if !page.more {
                break;
            }
        }
        assert_eq!(
            pages,
            [(vec![2, 4], 4), (vec![6], 6)],
            "two changes a page, in change order"
        );
    }

    #[test]
    fn a_newer_schema_opens_while_compatible_and_is_refused_after() {
        let Fresh(location, ()) = fresh();
        drop(open_store(&location).unwrap());
        let StoreLocation::Postgres(url) = &location else {
            unreachable!()
        };
        let schema = |sql: &str, version: i32| {
            with_client(url.expose(), |admin| {
                admin.execute(sql, &[&version]).unwrap()
            });
        };
        // A newer replica added to the schema: this build keeps working on it.
        let newer = POSTGRES_SCHEMA_VERSION + 1;
        schema("UPDATE deltaspace_schema SET version = $1", newer);
        let mut db = open_store(&location).unwrap();
        put(db.as_mut(), &task("a", 1.0), &Precondition::None).unwrap();
        // A newer replica changed what older code reads: this build refuses to start.
        schema("UPDATE deltaspace_schema SET oldest_reader = $1", newer);
        let error = open_store(&location).err().unwrap().to_string();
        assert!(error.contains("upgrade this replica"), "{error}");
    }

    #[test]
    fn replicas_opening_at_once_migrate_once() {
        let Fresh(location, ()) = fresh();
        let opened: Vec<_> = (0..4)
            .map(|_| {
                let location = location.clone();
                std::thread::spawn(move || open_store(&location).map(drop))
            })
            .collect();
        for handle in opened {
            handle.join().unwrap().unwrap();
        }
        let StoreLocation::Postgres(url) = &location else {
            unreachable!()
        };
        let row = with_client(url.expose(), |admin| {
            admin
                .query_one("SELECT count(*), max(version) FROM deltaspace_schema", &[])
                .unwrap()
        });
        assert_eq!(row.get::<_, i64>(0), 1);
        assert_eq!(row.get::<_, Option<i32>>(1), Some(POSTGRES_SCHEMA_VERSION));
    }

    #[test]
    fn tls_is_used_when_required() {
        let url = pg::shared()
            .database()
            .replace("sslmode=prefer", "sslmode=require");
        let location = StoreLocation::Postgres(Secret::new(url.clone()));
        let mut db = open_store(&location).unwrap();
        put(db.as_mut(), &task("a", 1.0), &Precondition::None).unwrap();
        let encrypted: bool = with_client(
            &url.replace("sslmode=require", "sslmode=disable"),
            |admin| {
                admin
                    .query_one(
                        "SELECT bool_or(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
                 WHERE application_name = 'deltaspace' AND datname = current_database()",
                        &[],
                    )
                    .unwrap()
                    .get(0)
            },
        );
        assert!(encrypted);
    }

    #[test]
    fn an_unreachable_store_is_unavailable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://postgres@127.0.0.1:{port}/none?connect_timeout=2");
        let error = open_store(&StoreLocation::Postgres(Secret::new(url)))
            .err()
            .unwrap();
        assert!(matches!(error, StoreError::Unavailable { .. }), "{error:?}");
    }
}
