//! The store conformance suite (`tally_collector::store::conformance`) against the
//! PostgreSQL store: each check in a fresh database on a real PostgreSQL server started
//! from the machine's own binaries (`tally_tests::pg`). The same checks run against SQLite
//! in the collector's own `store_conformance` test.

use std::sync::Arc;
use tally_collector::store::conformance::{self, Subject};
use tally_collector::store::postgres::PostgresStore;

async fn fresh_postgres() -> Subject {
    let url = tally_tests::pg::shared().fresh_database().await;
    let store = Arc::new(
        PostgresStore::connect(&url, conformance::clock())
            .await
            .unwrap_or_else(|e| panic!("connect to a fresh database: {e}")),
    );
    Subject {
        store: store.clone(),
        inspect: store,
        keep: None,
    }
}

mod postgres {
    tally_collector::conformance_tests!(super::fresh_postgres().await);
}
