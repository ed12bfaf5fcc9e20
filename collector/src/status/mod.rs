//! The public status page's state: each component up or down now, as this collector sees
//! it, and the incident history all collectors share through the store.
//!
//! - The **store** is checked every [`CHECK_EVERY`]; ingest and the billing API depend on
//!   it, so they are down while it is (agents get `UNAVAILABLE`, the API 503).
//! - **Webhook delivery** is down after a failed delivery attempt, up after a successful
//!   one; **backups** down after a failed scheduled backup, up after a good one. Either is
//!   `off` when not configured.
//! - Each change is an incident event ([`crate::rules::incidents::Change`]), queued here
//!   and written to the store by the check loop, in order, as soon as the store answers: an
//!   outage of the store itself is written once it is back, with the time it began.
//! - The page is served from what the last check read (the incidents of the last
//!   [`HISTORY_DAYS`] days) plus the queued events, so a request to the public page never
//!   touches the store and the page keeps working while the store is down.
//!
//! Nothing here names a customer: components and fixed descriptions only.

pub mod page;

use crate::rules::incidents::Change;
use crate::store::{Incident, Store};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tally_proto::time::Instant;

/// How often the check loop pings the store and writes queued incident events.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// How far back the page lists incidents.
pub const HISTORY_DAYS: i64 = 90;

/// The most incident events kept waiting for the store (an outage is two events per
/// component; beyond this the oldest are dropped, with an ERROR log).
const MAX_PENDING: usize = 1000;

/// What the page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Ingest,
    BillingApi,
    Store,
    Webhook,
    Backups,
}

impl Component {
    pub const ALL: [Component; 5] = [
        Component::Ingest,
        Component::BillingApi,
        Component::Store,
        Component::Webhook,
        Component::Backups,
    ];

    /// The name incidents are recorded under.
    pub fn name(self) -> &'static str {
        match self {
            Component::Ingest => "ingest",
            Component::BillingApi => "billing_api",
            Component::Store => "store",
            Component::Webhook => "webhook",
            Component::Backups => "backups",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Component::Ingest => "Usage ingest (agents)",
            Component::BillingApi => "Billing API and dashboard",
            Component::Store => "Data store",
            Component::Webhook => "Usage alert delivery",
            Component::Backups => "Backups",
        }
    }

    /// The title of a recorded component name (an unknown one shows as itself).
    pub fn title_of(name: &str) -> String {
        Component::ALL
            .iter()
            .find(|c| c.name() == name)
            .map(|c| c.title().to_string())
            .unwrap_or_else(|| name.to_string())
    }

    /// What an incident of this component means, as recorded.
    fn detail(self) -> &'static str {
        match self {
            Component::Store | Component::Ingest | Component::BillingApi => {
                "The data store does not answer: agents are told to retry later (they keep \
                 their reports) and the billing API answers 503."
            }
            Component::Webhook => "Usage alerts could not be delivered; they are retried.",
            Component::Backups => "A scheduled backup failed; the next one runs on schedule.",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
    /// Not configured on this collector.
    Off,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Off => "off",
        }
    }
}

/// One watched component: configured or not, and down since when.
#[derive(Debug, Clone, Copy, Default)]
struct Watch {
    enabled: bool,
    down_since: Option<Instant>,
    /// Seen working since this process started.
    confirmed_up: bool,
}

#[derive(Default)]
struct Inner {
    store: Watch,
    webhook: Watch,
    backups: Watch,
    /// Events not yet written to the store, oldest first.
    pending: VecDeque<(Component, Change, Instant)>,
    /// The history as the store last answered it, newest first.
    recorded: Vec<Incident>,
}

/// What the status page shows, kept up to date by the check loop, the webhook delivery
/// and the backup schedule.
pub struct StatusBoard {
    inner: Mutex<Inner>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        let inner = Inner {
            store: Watch {
                enabled: true,
                ..Watch::default()
            },
            ..Inner::default()
        };
        StatusBoard {
            inner: Mutex::new(inner),
        }
    }
}

/// A component's state and, while down, since when.
#[derive(Debug, Clone, Copy)]
pub struct ComponentState {
    pub component: Component,
    pub state: State,
    pub since: Option<Instant>,
}

impl StatusBoard {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent across a panic elsewhere (every update is one
        // assignment), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks a component configured on this collector (webhook, backups).
    pub fn enable(&self, component: Component) {
        let mut g = self.lock();
        if let Some(w) = watch(&mut g, component) {
            w.enabled = true;
        }
    }

    /// Records what was just seen of `component` (`ok`: working), queueing an incident
    /// event when that changes its state.
    pub fn observe(&self, component: Component, ok: bool, at: Instant) {
        let mut g = self.lock();
        let Some(w) = watch(&mut g, component) else {
            return;
        };
        if ok {
            w.confirmed_up = true;
        }
        let event = match (ok, w.down_since) {
            (false, None) => {
                w.down_since = Some(at);
                Some(Change::Down {
                    detail: component.detail().to_string(),
                })
            }
            (true, Some(since)) => {
                w.down_since = None;
                Some(Change::Up { since })
            }
            _ => None,
        };
        if let Some(change) = event {
            if g.pending.len() >= MAX_PENDING {
                g.pending.pop_front();
                tracing::error!(
                    "Incident events could not be written to the store for long; the oldest was dropped from the status history."
                );
            }
            g.pending.push_back((component, change, at));
        }
    }

    /// Every component's state now.
    pub fn components(&self) -> Vec<ComponentState> {
        let g = self.lock();
        Component::ALL
            .iter()
            .map(|&c| {
                let w = match c {
                    Component::Ingest | Component::BillingApi | Component::Store => g.store,
                    Component::Webhook => g.webhook,
                    Component::Backups => g.backups,
                };
                let state = match (w.enabled, w.down_since) {
                    (false, _) => State::Off,
                    (true, None) => State::Up,
                    (true, Some(_)) => State::Down,
                };
                ComponentState {
                    component: c,
                    state,
                    since: w.down_since,
                }
            })
            .collect()
    }

    /// The incident history to show: what the store last answered, plus every component
    /// down now whose incident is not recorded yet (id 0), newest first.
    pub fn incidents(&self) -> Vec<Incident> {
        let g = self.lock();
        let mut out = g.recorded.clone();
        for (c, w) in [
            (Component::Store, g.store),
            (Component::Webhook, g.webhook),
            (Component::Backups, g.backups),
        ] {
            let Some(since) = w.down_since else { continue };
            let recorded = out
                .iter()
                .any(|i| i.component == c.name() && i.closed_at.is_none());
            if !recorded {
                out.push(Incident {
                    id: 0,
                    component: c.name().to_string(),
                    detail: c.detail().to_string(),
                    opened_at: since,
                    closed_at: None,
                });
            }
        }
        out.sort_by(|a, b| b.opened_at.cmp(&a.opened_at).then(b.id.cmp(&a.id)));
        out
    }

    /// Writes the queued events to the store, oldest first, stopping at the first that
    /// fails (it stays queued); then reads the history back.
    pub async fn sync(&self, store: &dyn Store) {
        loop {
            let next = self.lock().pending.front().cloned();
            let Some((component, change, at)) = next else {
                break;
            };
            match store
                .record_incident(component.name().to_string(), change, at)
                .await
            {
                Ok(()) => {
                    self.lock().pending.pop_front();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Incident not written yet; the store does not answer.");
                    return;
                }
            }
        }
        let now = store.clock().now();
        let since = now - chrono::Duration::days(HISTORY_DAYS);
        match store.incidents_since(since).await {
            Ok(list) => {
                let mut g = self.lock();
                // An incident recorded open (by this process before a restart, or by one
                // that died) for a component this collector has seen working since: it is
                // over. Closed at the next sync.
                let stale: Vec<(Component, Instant)> = list
                    .iter()
                    .filter(|i| i.closed_at.is_none())
                    .filter_map(|i| {
                        let c = *Component::ALL.iter().find(|c| c.name() == i.component)?;
                        let w = *watch(&mut g, c)?;
                        (w.enabled && w.confirmed_up && w.down_since.is_none())
                            .then_some((c, i.opened_at))
                    })
                    .collect();
                for (c, opened_at) in stale {
                    g.pending
                        .push_back((c, Change::Up { since: opened_at }, now));
                }
                g.recorded = list;
            }
            Err(e) => tracing::debug!(error = %e, "Incident history not read."),
        }
    }
}

fn watch(g: &mut Inner, component: Component) -> Option<&mut Watch> {
    match component {
        Component::Store => Some(&mut g.store),
        Component::Webhook => Some(&mut g.webhook),
        Component::Backups => Some(&mut g.backups),
        // Derived from the store; never observed on their own.
        Component::Ingest | Component::BillingApi => None,
    }
}

/// Checks the store every [`CHECK_EVERY`] and keeps the incident history in step, until
/// `stop` resolves.
pub async fn check_loop(
    store: Arc<dyn Store>,
    board: Arc<StatusBoard>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let ok = store.ping().await.is_ok();
                board.observe(Component::Store, ok, store.clock().now());
                if ok {
                    board.sync(store.as_ref()).await;
                }
            }
            _ = &mut stop => {
                // What this process saw and has not written yet, if the store answers now.
                let _ = tokio::time::timeout(CHECK_EVERY, board.sync(store.as_ref())).await;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Instant {
        chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn changes_queue_events_and_derived_components_follow_the_store() {
        let b = StatusBoard::default();
        let states = |b: &StatusBoard| -> Vec<&'static str> {
            b.components().iter().map(|c| c.state.as_str()).collect()
        };
        assert_eq!(states(&b), ["up", "up", "up", "off", "off"]);
        b.enable(Component::Backups);
        b.observe(Component::Store, true, t(0));
        b.observe(Component::Store, false, t(1));
        b.observe(Component::Store, false, t(2));
        b.observe(Component::Backups, false, t(3));
        assert_eq!(states(&b), ["down", "down", "down", "off", "down"]);
        b.observe(Component::Store, true, t(5));
        assert_eq!(states(&b), ["up", "up", "up", "off", "down"]);
        let pending: Vec<_> = b.lock().pending.iter().cloned().collect();
        assert_eq!(
            pending,
            vec![
                (
                    Component::Store,
                    Change::Down {
                        detail: Component::Store.detail().into()
                    },
                    t(1)
                ),
                (
                    Component::Backups,
                    Change::Down {
                        detail: Component::Backups.detail().into()
                    },
                    t(3)
                ),
                (Component::Store, Change::Up { since: t(1) }, t(5)),
            ]
        );
        // Backups down and not recorded yet: shown as an unrecorded open incident.
        let shown = b.incidents();
        assert_eq!(shown.len(), 1);
        assert_eq!(
            (shown[0].id, shown[0].component.as_str(), shown[0].opened_at),
            (0, "backups", t(3))
        );
    }
}
