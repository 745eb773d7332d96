//! How many live-update streams may be open: [`MAX_SUBSCRIBERS`] on one instance, and [`MAX_STREAMS_PER_USER`]
//! of them for any one user, so that one user (one token, a script opening streams in a loop) cannot take every
//! slot and shut everyone else out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Open event streams per instance; more are refused with 429.
pub const MAX_SUBSCRIBERS: usize = 10_000;

/// Open event streams of one user on one instance; more are refused with 429. Enough for every tab and device a
/// person uses at once.
pub const MAX_STREAMS_PER_USER: usize = 16;

/// Why no stream was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// [`MAX_SUBSCRIBERS`] streams are open on this instance.
    #[error("this server has {MAX_SUBSCRIBERS} live-update streams open; retry later")]
    ServerFull,
    /// The user has [`MAX_STREAMS_PER_USER`] streams open on this instance.
    #[error("{MAX_STREAMS_PER_USER} live-update streams are open for this user; close one first")]
    UserLimit,
}

/// The open streams, counted in all and by user.
#[derive(Clone)]
pub struct Slots {
    total: Arc<Semaphore>,
    by_user: Arc<Mutex<HashMap<i64, usize>>>,
    per_user: usize,
}

impl Default for Slots {
    fn default() -> Self {
        Self::new(MAX_SUBSCRIBERS, MAX_STREAMS_PER_USER)
    }
}

impl Slots {
    /// Room for `total` streams, `per_user` of them for any one user.
    pub fn new(total: usize, per_user: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total)),
            by_user: Arc::default(),
            per_user,
        }
    }

    /// A slot for a stream of `user_id`, held until the [`Slot`] is dropped.
    pub fn take(&self, user_id: i64) -> Result<Slot, Refused> {
        {
            let mut by_user = self.by_user.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let open = by_user.entry(user_id).or_default();
            if *open >= self.per_user {
                return Err(Refused::UserLimit);
            }
            *open += 1;
        }
        // Counted for the user first, so that the guard built below gives it back on every path.
        let user = UserSlot {
            by_user: self.by_user.clone(),
            user_id,
        };
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::ServerFull)?;
        Ok(Slot {
            _user: user,
            _permit: permit,
        })
    }

    /// Streams `user_id` has open (for the tests: the server only takes and drops slots).
    #[cfg(test)]
    fn open_for(&self, user_id: i64) -> usize {
        let by_user = self.by_user.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        by_user.get(&user_id).copied().unwrap_or(0)
    }
}

/// One open stream's place, given back when dropped.
pub struct Slot {
    _user: UserSlot,
    _permit: OwnedSemaphorePermit,
}

/// The user's share of a [`Slot`].
struct UserSlot {
    by_user: Arc<Mutex<HashMap<i64, usize>>>,
    user_id: i64,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut by_user = self.by_user.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(open) = by_user.get_mut(&self.user_id) {
            *open -= 1;
            // Removed at zero, so the map holds only users with a stream open.
            if *open == 0 {
                by_user.remove(&self.user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_at_the_limit_is_refused_and_others_are_not() {
        let slots = Slots::new(10, 2);
        let (a, b) = (slots.take(1).expect("first"), slots.take(1).expect("second"));
        assert_eq!(slots.take(1).err(), Some(Refused::UserLimit));
        let other = slots.take(2).expect("another user has room");
        drop(a);
        let again = slots.take(1).expect("a closed stream gives its slot back");
        drop((b, again, other));
        assert_eq!((slots.open_for(1), slots.open_for(2)), (0, 0));
        assert!(
            slots.by_user.lock().expect("lock").is_empty(),
            "users without streams are forgotten"
        );
    }

    #[test]
    fn a_full_server_refuses_and_the_refusal_takes_no_user_slot() {
        let slots = Slots::new(2, 5);
        let held = (slots.take(1).expect("one"), slots.take(2).expect("two"));
        assert_eq!(slots.take(3).err(), Some(Refused::ServerFull));
        assert_eq!(slots.open_for(3), 0);
        drop(held);
        slots.take(3).expect("room again");
    }
}
