//! Counters of one KDS stream, per type: responses sent, acknowledged and rejected, and the
//! last response that was too large to send. Zone insights are made from them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// One type's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStats {
    /// Responses sent.
    pub sent: u64,
    /// Responses the peer acknowledged.
    pub acked: u64,
    /// Responses the peer rejected.
    pub rejected: u64,
    /// Size of the last response that was over the message limit, if any.
    pub oversized: Option<usize>,
}

/// The counters of a stream, shared between the stream and whoever reports on it.
#[derive(Debug, Default)]
pub struct StreamStats {
    types: Mutex<BTreeMap<String, TypeStats>>,
    updated: Mutex<Option<chrono::DateTime<chrono::Utc>>>,
    wake: Option<Arc<Notify>>,
}

impl StreamStats {
    /// Counters that wake `wake` on every change (for whoever reports them).
    pub fn notifying(wake: Arc<Notify>) -> Self {
        StreamStats {
            wake: Some(wake),
            ..StreamStats::default()
        }
    }

    fn with(&self, rtype: &str, f: impl FnOnce(&mut TypeStats)) {
        let mut types = self.types.lock().unwrap_or_else(|e| e.into_inner());
        f(types.entry(rtype.to_string()).or_default());
        drop(types);
        *self.updated.lock().unwrap_or_else(|e| e.into_inner()) = Some(chrono::Utc::now());
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
    }

    /// When a counter last changed.
    pub fn updated(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        *self.updated.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A response of `rtype` went out.
    pub fn sent(&self, rtype: &str) {
        self.with(rtype, |s| {
            s.sent += 1;
            s.oversized = None;
        });
    }

    /// The peer acknowledged a response of `rtype`.
    pub fn acked(&self, rtype: &str) {
        self.with(rtype, |s| s.acked += 1);
    }

    /// The peer rejected a response of `rtype`.
    pub fn rejected(&self, rtype: &str) {
        self.with(rtype, |s| s.rejected += 1);
    }

    /// A response of `rtype` of `bytes` was over the message limit.
    pub fn oversized(&self, rtype: &str, bytes: usize) {
        self.with(rtype, |s| s.oversized = Some(bytes));
    }

    /// The counters so far, by type name.
    pub fn snapshot(&self) -> BTreeMap<String, TypeStats> {
        self.types.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
