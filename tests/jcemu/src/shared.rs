//! State shared by every connection of one emulator.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::Value;

use crate::clock::Clock;
use crate::config::{FaultSettings, Settings};
use crate::reqlog::RequestLog;
use crate::spec::Contract;
use crate::store::Store;

/// How many recent `/api` requests `GET /__emulator/requests` keeps.
pub const RECENT_REQUESTS: usize = 10_000;

#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    pub ts: String,
    /// "request" (rejected with 400) or "response" (an emulator bug; the response was still sent)
    pub kind: &'static str,
    pub method: String,
    pub path: String,
    pub operation_id: Option<String>,
    pub status: Option<u16>,
    pub violations: Vec<String>,
}

pub struct Shared {
    pub store: RwLock<Store>,
    pub faults: RwLock<FaultSettings>,
    pub settings: RwLock<Settings>,
    pub keys: RwLock<HashSet<String>>,
    pub org_id: String,
    pub clock: Clock,
    rng: Mutex<ChaCha8Rng>,
    pub contract: Option<Arc<Contract>>,
    pub violations: Mutex<Vec<Violation>>,
    rate: Mutex<HashMap<String, (Instant, u32)>>,
    pub log: Option<RequestLog>,
    pub recent: Mutex<VecDeque<Value>>,
}

/// Result of the rate limiter.
pub enum Rate {
    Allowed,
    Limited { retry_after_secs: u64 },
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        faults: FaultSettings,
        settings: Settings,
        keys: Vec<String>,
        org_id: String,
        clock: Clock,
        seed: u64,
        contract: Option<Arc<Contract>>,
        log: Option<RequestLog>,
    ) -> Shared {
        Shared {
            store: RwLock::new(store),
            faults: RwLock::new(faults),
            settings: RwLock::new(settings),
            keys: RwLock::new(keys.into_iter().collect()),
            org_id,
            clock,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            contract,
            violations: Mutex::new(Vec::new()),
            rate: Mutex::new(HashMap::new()),
            log,
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// True with probability `p` (seeded RNG; `p <= 0` never draws, so a fault-free run uses no randomness).
    pub fn chance(&self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        self.rng.lock().random_bool(p)
    }

    pub fn pick<T: Copy>(&self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            return None;
        }
        let i = self.rng.lock().random_range(0..items.len());
        items.get(i).copied()
    }

    pub fn salt(&self) -> [u8; 16] {
        let mut s = [0u8; 16];
        self.rng.lock().fill_bytes(&mut s);
        s
    }

    /// 40 hex characters.
    pub fn connect_key(&self) -> String {
        let mut b = [0u8; 20];
        self.rng.lock().fill_bytes(&mut b);
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    pub fn key_valid(&self, key: &str) -> bool {
        self.keys.read().contains(key)
    }

    /// Fixed one-minute window per API key.
    pub fn rate_check(&self, key: &str, per_minute: Option<u32>) -> Rate {
        let Some(limit) = per_minute else {
            return Rate::Allowed;
        };
        let now = Instant::now();
        let window = Duration::from_secs(60);
        let mut rate = self.rate.lock();
        let entry = rate.entry(key.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        if entry.1 <= limit {
            Rate::Allowed
        } else {
            let left = window.saturating_sub(now.duration_since(entry.0));
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            Rate::Limited {
                retry_after_secs: secs.max(1),
            }
        }
    }

    pub fn reset_counters(&self) {
        self.rate.lock().clear();
        self.recent.lock().clear();
    }

    pub fn record_violation(&self, v: Violation) {
        tracing::error!(
            kind = v.kind,
            method = %v.method,
            path = %v.path,
            operation = v.operation_id.as_deref().unwrap_or("-"),
            status = v.status,
            "spec violation: {}",
            v.violations.join("; ")
        );
        self.violations.lock().push(v);
    }

    pub fn remember(&self, entry: Value) {
        let mut r = self.recent.lock();
        if r.len() >= RECENT_REQUESTS {
            r.pop_front();
        }
        r.push_back(entry);
    }
}
