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
    /// Incident `id` now spans `opened_at` to `closed_at` (`None`: still open).
    Update {
        id: i64,
        opened_at: Instant,
        closed_at: Option<Instant>,
    },
}

/// `change` at `at` in whole seconds, the resolution incidents are stored in, so an event
/// compares with the stored times as they will be stored.
pub fn whole_seconds(change: Change, at: Instant) -> (Change, Instant) {
    use chrono::SubsecRound;
    let change = match change {
        Change::Up { since } => Change::Up {
            since: since.trunc_subsecs(0),
        },
        down => down,
    };
    (change, at.trunc_subsecs(0))
}

/// The write that records `change` at `at`, given the component's newest incident.
///
/// An event is an interval: `Down` at `t` is `[t, …)`, `Up { since }` at `t` is
/// `[since, t]`. One that meets the newest incident is the same outage and widens it (the
/// earliest start, the latest end); one that does not is a new incident.
pub fn decide(latest: Option<Latest>, change: &Change, at: Instant) -> Write {
    let update = |l: Latest, opened_at: Instant, closed_at: Option<Instant>| {
        if opened_at == l.opened_at && closed_at == l.closed_at {
            Write::Nothing
        } else {
            Write::Update {
                id: l.id,
                opened_at,
                closed_at,
            }
        }
    };
    match change {
        Change::Down { detail } => match latest {
            // Open already, or recorded as lasting past this moment (another collector
            // saw it end; this one's `Up` will move the end if it saw it later).
            Some(l) if l.closed_at.is_none_or(|c| c >= at) => {
                update(l, l.opened_at.min(at), l.closed_at)
            }
            _ => Write::Insert {
                detail: detail.clone(),
                opened_at: at,
                closed_at: None,
            },
        },
        Change::Up { since } => match latest {
            // The open incident ends now (an open one that began after this outage ended is
            // another outage: ours was never recorded).
            Some(l) if l.closed_at.is_none() && l.opened_at <= at => {
                update(l, l.opened_at.min(*since), Some(at))
            }
            // A recorded outage this one overlaps: the earliest start, the latest end.
            Some(l) if l.closed_at.is_some_and(|c| c >= *since) && l.opened_at <= at => {
                let end = l.closed_at.map_or(at, |c| c.max(at));
                update(l, l.opened_at.min(*since), Some(end))
            }
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

    fn upd(id: i64, from: i64, to: Option<i64>) -> Write {
        Write::Update {
            id,
            opened_at: t(from),
            closed_at: to.map(t),
        }
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
        #[rustfmt::skip]
        let cases: Vec<(&str, Option<Latest>, Change, i64, Write)> = vec![
            ("first outage", None, down(), 10, insert(10, None, "d")),
            ("already open", open(1, 5), down(), 10, Write::Nothing),
            ("open, seen earlier here", open(1, 12), down(), 10, upd(1, 10, None)),
            ("covered by a recorded outage", closed(1, 5, 20), down(), 10, Write::Nothing),
            ("recorded, seen earlier here", closed(1, 12, 20), down(), 10, upd(1, 10, Some(20))),
            ("ends exactly when this one starts", closed(1, 5, 10), down(), 10, Write::Nothing),
            ("after the last one ended", closed(1, 5, 9), down(), 10, insert(10, None, "d")),
            ("close the open one", open(1, 5), up(5), 30, upd(1, 5, Some(30))),
            ("close the open one, seen earlier here", open(1, 5), up(3), 30, upd(1, 3, Some(30))),
            ("another collector closed it earlier", closed(1, 5, 20), up(6), 30, upd(1, 5, Some(30))),
            ("another collector closed it later", closed(1, 5, 40), up(6), 30, Write::Nothing),
            ("closed later, started earlier here", closed(1, 5, 40), up(2), 30, upd(1, 2, Some(40))),
            ("an outage never recorded (the store was down)", None, up(10), 30, insert(10, Some(30), "")),
            ("an unrecorded outage after an older one", closed(1, 1, 5), up(10), 30, insert(10, Some(30), "")),
            ("an open incident newer than this recovery is not ours", open(2, 40), up(10), 30, insert(10, Some(30), "")),
        ];
        for (name, latest, change, at, want) in cases {
            assert_eq!(decide(latest, &change, t(at)), want, "{name}");
        }
    }

    /// Two collectors seeing one outage, in every order their reports can reach the
    /// store, leave one incident spanning exactly the earliest start to the latest end.
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
                    Write::Update {
                        id,
                        opened_at,
                        closed_at,
                    } => {
                        let r = rows.iter_mut().find(|r| r.id == id).unwrap();
                        r.opened_at = opened_at;
                        r.closed_at = closed_at;
                    }
                }
            }
            assert_eq!(rows.len(), 1, "{order:?}: {rows:?}");
            assert_eq!(rows[0].closed_at, Some(t(35)), "{order:?}");
            assert_eq!(rows[0].opened_at, t(10), "{order:?}");
        }
    }
}
