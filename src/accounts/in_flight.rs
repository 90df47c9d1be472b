//! How many token and invite checks one client address has in flight on this replica.
//!
//! Such a check is counted on the throttle only once it has failed, so that a correct one costs
//! a single read. Without a bound, a burst of parallel guesses would all be checked before the
//! first failure is counted; with it, a burst checks at most the limit plus this many.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use crate::domain::ThrottleKey;

/// How long a check waits for its turn at most when the caller set no deadline.
const MAX_WAIT: Duration = Duration::from_secs(5);

pub(crate) struct InFlight {
    per_key: usize,
    keys: Arc<Mutex<HashMap<ThrottleKey, Arc<Semaphore>>>>,
}

/// A check's place; the key is forgotten when its last place is given back.
pub(crate) struct Slot {
    key: ThrottleKey,
    permit: Option<OwnedSemaphorePermit>,
    keys: Arc<Mutex<HashMap<ThrottleKey, Arc<Semaphore>>>>,
}

impl InFlight {
    pub(crate) fn new(per_key: usize) -> Self {
        Self {
            per_key: per_key.max(1),
            keys: Arc::default(),
        }
    }

    /// Waits for a place for `key`, until the deadline (or a few seconds); `None` when none
    /// came free in time.
    pub(crate) async fn enter(&self, key: &ThrottleKey, deadline: Option<Instant>) -> Option<Slot> {
        let semaphore = {
            let mut keys = self.keys.lock().ok()?;
            keys.entry(key.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_key)))
                .clone()
        };
        let until = deadline.unwrap_or_else(|| Instant::now() + MAX_WAIT);
        let permit = tokio::time::timeout_at(until, semaphore.acquire_owned())
            .await
            .ok()?
            .ok()?;
        Some(Slot {
            key: key.clone(),
            permit: Some(permit),
            keys: self.keys.clone(),
        })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.keys.lock().map(|keys| keys.len()).unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.permit.take());
        if let Ok(mut keys) = self.keys.lock()
            && keys
                .get(&self.key)
                .is_some_and(|semaphore| Arc::strong_count(semaphore) == 1)
        {
            keys.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_has_at_most_its_places_and_is_forgotten_when_idle() {
        let in_flight = InFlight::new(2);
        let key = ThrottleKey::new("token-addr", "192.0.2.1");
        let first = in_flight.enter(&key, None).await.unwrap();
        let _second = in_flight.enter(&key, None).await.unwrap();
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(in_flight.enter(&key, Some(soon)).await.is_none());
        let other = ThrottleKey::new("token-addr", "192.0.2.2");
        assert!(in_flight.enter(&other, Some(soon)).await.is_some());
        drop(first);
        assert!(in_flight.enter(&key, Some(soon)).await.is_some());
        drop(_second);
        assert_eq!(in_flight.tracked(), 0);
    }
}
