//! The single SQLite writer with group commit.
//!
//! SQLite allows one writer at a time, and with `synchronous=FULL` every commit costs an
//! fsync. So one dedicated OS thread owns the write connection (rusqlite connections are
//! `Send` but not `Sync`, and blocking fsyncs must not stall the async runtime). Callers
//! send it jobs; it takes every job waiting in the queue, runs each inside its own
//! SAVEPOINT of one shared transaction, commits once, and only then answers each caller.
//! A job that fails rolls back to its savepoint without disturbing the others in its group.
//!
//! The writer is generic over its callers' error type `E`: a job returns `Result<R, E>`,
//! and a failed commit or a stopped thread reaches the caller as `E::from(WriteFailed)`.

/// The group's transaction could not commit, or the writer thread has stopped. Nothing of
/// the job is durable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct WriteFailed(pub String);

use rusqlite::Connection;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Most jobs that share one transaction.
const MAX_GROUP: usize = 512;

trait WriteJob: Send {
    /// Runs the job inside the open transaction; `true` if it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the transaction's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), String>);
}

struct TypedJob<F, R, E> {
    f: Option<F>,
    result: Option<Result<R, E>>,
    reply: oneshot::Sender<Result<R, E>>,
}

impl<F, R, E> WriteJob for TypedJob<F, R, E>
where
    F: FnOnce(&Connection) -> Result<R, E> + Send,
    R: Send,
    E: From<WriteFailed> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else { return false };
        let r = f(conn);
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), String>) {
        let out = match (self.result, commit) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (_, Err(e)) => Err(WriteFailed(e).into()),
            (None, Ok(())) => Err(WriteFailed("write job did not run".into()).into()),
        };
        // The caller may have gone away (request cancelled); the data is committed anyway.
        let _ = self.reply.send(out);
    }
}

/// Handle to the writer thread. Dropping every handle stops the thread after it drains.
pub struct Writer {
    tx: mpsc::Sender<Box<dyn WriteJob>>,
}

impl Writer {
    /// Starts the writer thread (named `name`) that owns `conn`.
    pub fn start(conn: Connection, name: &str) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<Box<dyn WriteJob>>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || writer_loop(conn, rx))?;
        Ok(Writer { tx })
    }

    /// Runs `f` in the next group transaction and returns its result after the commit is
    /// durable.
    pub async fn write<F, R, E>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&Connection) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<WriteFailed> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(TypedJob {
            f: Some(f),
            result: None,
            reply,
        });
        let stopped = || E::from(WriteFailed("the writer thread has stopped".into()));
        self.tx.send(job).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Box<dyn WriteJob>>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let commit = run_group(&conn, &mut jobs);
        if let Err(e) = &commit {
            tracing::error!(error = %e, jobs = jobs.len(), "Group commit failed; callers were told and will retry.");
        }
        for j in jobs {
            j.finish(commit.clone());
        }
    }
}

fn run_group(conn: &Connection, jobs: &mut [Box<dyn WriteJob>]) -> Result<(), String> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| e.to_string())?;
    for job in jobs.iter_mut() {
        // Prepared once and cached: parsing these three statements for every job showed
        // up in the agent's single-event profile (sqlite3RunParser).
        let step = (|| -> rusqlite::Result<()> {
            conn.prepare_cached("SAVEPOINT job")?.execute([])?;
            if !job.run(conn) {
                conn.prepare_cached("ROLLBACK TO job")?.execute([])?;
            }
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Ok(())
        })();
        if let Err(e) = step {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.to_string());
        }
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e.to_string());
    }
    Ok(())
}
