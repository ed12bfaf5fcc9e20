//! What the status page's incident history records when a collector sees a component go
//! down or come back. Several collectors watch the same components of one deployment (the
//! store they share, above all) and each reports what it saw, possibly later (a store
//! outage can only be written once the store is back); these rules fold their reports
//! into one incident per outage, so every collector shows the same history.
//!
//! A store asks for the newest incident of the component, calls [`decide`] and writes what
//! it returns, in one transaction (PostgreSQL under a per-component lock).

use tally_proto::time::Instant;

/// What a collector saw happen to a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// It went down at the event's time; `detail` says how (nothing about any customer).
    Down { detail: String },
    /// It came back at the event's time after being down since `since`.
    Up { since: Instant },
}

/// The newest recorded incident of a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latest {
    pub id: i64,
    pub opened_at: Instant,
    /// `None`: still open.
    pub closed_at: Option<Instant>,
}

/// What to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Nothing: the history already says it.
    Nothing,
    /// A new incident, open (`closed_at` `None`) or already over.
    Insert {
        detail: String,
        opened_at: Instant,
        closed_at: Option<Instant>,
    },
    /// Close (or move the end of) incident `id` to `closed_at`.
    SetClosed { id: i64, closed_at: Instant },
}

/// The write that records `change` at `at`, given the component's newest incident.
pub fn decide(latest: Option<Latest>, change: &Change, at: Instant) -> Write {
    match change {
        Change::Down { detail } => match latest {
            // Open already, or another collector recorded an outage reaching past this
            // moment: the same outage.
            Some(l) if l.closed_at.is_none_or(|c| c >= at) => Write::Nothing,
            _ => Write::Insert {
                detail: detail.clone(),
                opened_at: at,
                closed_at: None,
            },
        },
        Change::Up { since } => match latest {
            // The open incident ends now.
            Some(l) if l.closed_at.is_none() && l.opened_at <= at => Write::SetClosed {
                id: l.id,
                closed_at: at,
            },
            // Another collector closed this outage earlier than this one saw it end:
            // the outage lasted until the last collector saw it back.
            Some(l) if l.closed_at.is_some_and(|c| c >= *since && c < at) => Write::SetClosed {
                id: l.id,
                closed_at: at,
            },
            // Already recorded as ending at or after this moment.
            Some(l) if l.closed_at.is_some_and(|c| c >= at) && l.opened_at <= at => Write::Nothing,
            // Its start was never recorded (the store was what was down): the whole
            // outage at once.
            _ => Write::Insert {
                detail: String::new(),
                opened_at: *since,
                closed_at: Some(at),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Instant {
        chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn open(id: i64, from: i64) -> Option<Latest> {
        Some(Latest {
            id,
            opened_at: t(from),
            closed_at: None,
        })
    }

    fn closed(id: i64, from: i64, to: i64) -> Option<Latest> {
        Some(Latest {
            id,
            opened_at: t(from),
            closed_at: Some(t(to)),
        })
    }

    fn down() -> Change {
        Change::Down { detail: "d".into() }
    }

    fn up(since: i64) -> Change {
        Change::Up { since: t(since) }
    }

    fn insert(from: i64, to: Option<i64>, detail: &str) -> Write {
        Write::Insert {
            detail: detail.into(),
            opened_at: t(from),
            closed_at: to.map(t),
        }
    }

    #[test]
    fn table() {
        let cases: Vec<(&str, Option<Latest>, Change, i64, Write)> = vec![
            ("first outage", None, down(), 10, insert(10, None, "d")),
            ("already open", open(1, 5), down(), 10, Write::Nothing),
            (
                "covered by a recorded outage",
                closed(1, 5, 20),
                down(),
                10,
                Write::Nothing,
            ),
            (
                "ends exactly when this one starts",
                closed(1, 5, 10),
                down(),
                10,
                Write::Nothing,
            ),
            (
                "after the last one ended",
                closed(1, 5, 9),
                down(),
                10,
                insert(10, None, "d"),
            ),
            (
                "close the open one",
                open(1, 5),
                up(5),
                30,
                Write::SetClosed {
                    id: 1,
                    closed_at: t(30),
                },
            ),
            (
                "another collector closed it earlier",
                closed(1, 5, 20),
                up(6),
                30,
                Write::SetClosed {
                    id: 1,
                    closed_at: t(30),
                },
            ),
            (
                "another collector closed it later",
                closed(1, 5, 40),
                up(6),
                30,
                Write::Nothing,
            ),
            (
                "an outage never recorded (the store was down)",
                None,
                up(10),
                30,
                insert(10, Some(30), ""),
            ),
            (
                "an unrecorded outage after an older one",
                closed(1, 1, 5),
                up(10),
                30,
                insert(10, Some(30), ""),
            ),
            (
                "an open incident newer than this recovery is not ours",
                open(2, 40),
                up(10),
                30,
                insert(10, Some(30), ""),
            ),
        ];
        for (name, latest, change, at, want) in cases {
            assert_eq!(decide(latest, &change, t(at)), want, "{name}");
        }
    }

    /// Two collectors seeing one outage, in every order their reports can reach the
    /// store, leave one incident spanning the earliest start to the latest end.
    #[test]
    fn two_collectors_one_outage_any_order() {
        // Collector A saw [10, 30], collector B saw [12, 35]. Each reports Down then Up.
        let events = [
            ('a', down(), 10),
            ('a', up(10), 30),
            ('b', down(), 12),
            ('b', up(12), 35),
        ];
        // Every interleaving that keeps each collector's own order.
        let orders: [[usize; 4]; 6] = [
            [0, 1, 2, 3],
            [0, 2, 1, 3],
            [0, 2, 3, 1],
            [2, 0, 1, 3],
            [2, 0, 3, 1],
            [2, 3, 0, 1],
        ];
        for order in orders {
            let mut rows: Vec<Latest> = Vec::new();
            for i in order {
                let (_, change, at) = &events[i];
                match decide(rows.last().copied(), change, t(*at)) {
                    Write::Nothing => {}
                    Write::Insert {
                        opened_at,
                        closed_at,
                        ..
                    } => rows.push(Latest {
                        id: rows.len() as i64 + 1,
                        opened_at,
                        closed_at,
                    }),
                    Write::SetClosed { id, closed_at } => {
                        let r = rows.iter_mut().find(|r| r.id == id).unwrap();
                        r.closed_at = Some(closed_at);
                    }
                }
            }
            assert_eq!(rows.len(), 1, "{order:?}: {rows:?}");
            assert_eq!(rows[0].closed_at, Some(t(35)), "{order:?}");
            assert!(rows[0].opened_at <= t(12), "{order:?}");
        }
    }
}
