//! Signed-in sessions (in memory: a restart of the dashboard signs everyone out), their CSRF
//! tokens, and the sign-in rate limit.
//!
//! A session id is 256 random bits in an HttpOnly, SameSite=Strict cookie (`Secure` when
//! `secure_cookies`); it ends after `session_idle` unused or `session_max` after sign-in,
//! whichever comes first, and at sign-out. Each session has its own CSRF token, which every
//! state-changing request must carry (a form's hidden `csrf` field or htmx's `X-CSRF-Token`
//! header), compared in constant time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

use crate::users::Role;

/// The most sessions kept; past it the least recently used one ends.
const MAX_SESSIONS: usize = 10_000;

pub struct Session {
    id: String,
    pub user: String,
    pub role: Role,
    /// The user's admin API token (opened at sign-in; never written anywhere).
    pub token: String,
    pub csrf: String,
    started: Instant,
    last: Mutex<Instant>,
    /// The message the next page shows (after a form's redirect), once.
    flash: Mutex<Option<(bool, String)>>,
    /// The servers refused the token (revoked): the next request ends the session.
    pub revoked: Arc<std::sync::atomic::AtomicBool>,
    /// Live event streams open now (at most [`MAX_STREAMS`]).
    pub streams: std::sync::atomic::AtomicUsize,
    /// The config import whose plan was shown last: its id, the document, replace, the plan
    /// shown, when.
    pending: Mutex<Option<Pending>>,
}

struct Pending {
    id: String,
    doc: bytes::Bytes,
    replace: bool,
    plan: String,
    at: Instant,
}

/// How long a shown plan may be applied.
const PENDING_FOR: Duration = Duration::from_secs(15 * 60);

/// Live event streams one session may hold open at once.
pub const MAX_STREAMS: usize = 4;

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token, the id or the CSRF token.
        f.debug_struct("Session")
            .field("user", &self.user)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Sets the message the next page shows (`ok` false: an error).
    pub fn set_flash(&self, ok: bool, message: String) {
        *self.flash.lock().expect("flash") = Some((ok, message));
    }

    /// Keeps the document of a config import's plan (one per session: a newer plan replaces
    /// it); answers the id its apply form carries.
    pub fn set_pending(&self, doc: bytes::Bytes, replace: bool, plan: String) -> String {
        let id = random_hex(16);
        *self.pending.lock().expect("pending") = Some(Pending {
            id: id.clone(),
            doc,
            replace,
            plan,
            at: Instant::now(),
        });
        id
    }

    /// The pending import `id` names, taken (applied once): the document, replace, the plan
    /// shown. `None` when another replaced it or it is older than 15 minutes.
    pub fn take_pending(&self, id: &str) -> Option<(bytes::Bytes, bool, String)> {
        let mut p = self.pending.lock().expect("pending");
        let fresh = p.as_ref().is_some_and(|x| {
            !id.is_empty()
                && bool::from(x.id.as_bytes().ct_eq(id.as_bytes()))
                && x.at.elapsed() < PENDING_FOR
        });
        if fresh {
            p.take().map(|x| (x.doc, x.replace, x.plan))
        } else {
            None
        }
    }

    /// The message to show now, taken (shown once).
    pub fn take_flash(&self) -> Option<(bool, String)> {
        self.flash.lock().expect("flash").take()
    }

    /// Whether `given` is this session's CSRF token.
    pub fn csrf_ok(&self, given: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(given.as_bytes()))
    }
}

#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    idle: Duration,
    max: Duration,
}

pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).unwrap_or_else(|e| panic!("the OS random source failed: {e}"));
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Sessions {
    pub fn new(idle: Duration, max: Duration) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            idle,
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.map.lock().expect("sessions lock")
    }

    /// A new session for `user`; answers its id (the cookie's value).
    pub fn create(&self, user: &str, role: Role, token: String) -> String {
        let id = random_hex(32);
        let now = Instant::now();
        let s = Arc::new(Session {
            id: id.clone(),
            user: user.to_owned(),
            role,
            token,
            csrf: random_hex(32),
            started: now,
            last: Mutex::new(now),
            flash: Mutex::new(None),
            revoked: Default::default(),
            streams: Default::default(),
            pending: Mutex::new(None),
        });
        let mut map = self.lock();
        self.sweep(&mut map, now);
        if map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| *s.last.lock().expect("last"))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        map.insert(id.clone(), s);
        id
    }

    fn live(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.started) < self.max
            && now.duration_since(*s.last.lock().expect("last")) < self.idle
    }

    fn sweep(&self, map: &mut HashMap<String, Arc<Session>>, now: Instant) {
        map.retain(|_, s| self.live(s, now));
    }

    /// The live session `id` names, marked used now; an expired one is removed.
    pub fn touch(&self, id: &str) -> Option<Arc<Session>> {
        self.touch_at(id, Instant::now())
    }

    /// [`Self::touch`] at `now` (the tests' clock).
    fn touch_at(&self, id: &str, now: Instant) -> Option<Arc<Session>> {
        let mut map = self.lock();
        let s = map.get(id)?.clone();
        if !self.live(&s, now) {
            map.remove(id);
            return None;
        }
        *s.last.lock().expect("last") = now;
        Some(s)
    }

    /// Whether `id` names a live session (not marked used).
    pub fn peek(&self, id: &str) -> bool {
        let map = self.lock();
        map.get(id).is_some_and(|s| self.live(s, Instant::now()))
    }

    /// Whether `s` is still a live session (not marked used: a live stream does not keep a
    /// session alive).
    pub fn is_live(&self, s: &Arc<Session>) -> bool {
        let map = self.lock();
        map.get(&s.id)
            .is_some_and(|m| Arc::ptr_eq(m, s) && self.live(s, Instant::now()))
    }

    /// Ends session `id` (sign-out).
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// How many sessions are live.
    pub fn count(&self) -> usize {
        let now = Instant::now();
        let mut map = self.lock();
        self.sweep(&mut map, now);
        map.len()
    }
}

/// Failed sign-ins allowed per client address and per user name within [`WINDOW`].
pub const MAX_FAILURES: usize = 5;
pub const WINDOW: Duration = Duration::from_secs(300);

/// Recent failed sign-ins by client address and by user name.
#[derive(Debug, Default)]
pub struct SignInLimit {
    by_addr: Mutex<HashMap<IpAddr, Vec<Instant>>>,
    by_user: Mutex<HashMap<String, Vec<Instant>>>,
}

impl SignInLimit {
    /// Takes an attempt for `addr` and `user` (counted as a failure until [`Self::succeeded`]
    /// says otherwise), or says how long to wait: the check and the count are one step, so
    /// attempts sent together cannot all pass a check made before any of them failed.
    pub fn attempt(&self, addr: IpAddr, user: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let user: String = user.chars().take(64).collect();
        let mut by_addr = self.by_addr.lock().expect("limit");
        let mut by_user = self.by_user.lock().expect("limit");
        let wait = |list: Option<&mut Vec<Instant>>| -> Option<Duration> {
            let list = list?;
            list.retain(|t| now.duration_since(*t) < WINDOW);
            (list.len() >= MAX_FAILURES).then(|| WINDOW.saturating_sub(now.duration_since(list[0])))
        };
        let a = wait(by_addr.get_mut(&addr));
        let u = wait(by_user.get_mut(&user));
        if let Some(w) = a.max(u) {
            return Err(w);
        }
        for map_len in [by_addr.len(), by_user.len()] {
            if map_len > 100_000 {
                by_addr.retain(|_, l| l.last().is_some_and(|t| now.duration_since(*t) < WINDOW));
                by_user.retain(|_, l| l.last().is_some_and(|t| now.duration_since(*t) < WINDOW));
                break;
            }
        }
        by_addr.entry(addr).or_default().push(now);
        by_user.entry(user).or_default().push(now);
        Ok(())
    }

    /// The attempt taken for `addr` and `user` succeeded: it is not a failure, and the name's
    /// failures are cleared (not the address's).
    pub fn succeeded(&self, addr: IpAddr, user: &str) {
        let user: String = user.chars().take(64).collect();
        if let Some(l) = self.by_addr.lock().expect("limit").get_mut(&addr) {
            l.pop();
        }
        self.by_user.lock().expect("limit").remove(&user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_when_idle() {
        let s = Sessions::new(Duration::from_secs(30), Duration::from_secs(600));
        let id = s.create("alice", Role::Viewer, "t".into());
        let got = s.touch(&id).unwrap();
        assert!(got.csrf_ok(&got.csrf.clone()));
        assert!(!got.csrf_ok("nope"));
        let t0 = Instant::now();
        // Used within the idle time, it lives on; unused past it, it ends.
        assert!(s.touch_at(&id, t0 + Duration::from_secs(20)).is_some());
        assert!(s.touch_at(&id, t0 + Duration::from_secs(45)).is_some());
        assert!(s.touch_at(&id, t0 + Duration::from_secs(80)).is_none());
        assert_eq!(s.count(), 0);
        // However busy, a session ends at its maximum age.
        let id = s.create("bob", Role::Viewer, "t".into());
        let t0 = Instant::now();
        for k in 1..=23 {
            assert!(s.touch_at(&id, t0 + Duration::from_secs(25 * k)).is_some());
        }
        assert!(s.touch_at(&id, t0 + Duration::from_secs(595)).is_some());
        assert!(s.touch_at(&id, t0 + Duration::from_secs(610)).is_none());
    }

    #[test]
    fn sign_ins_are_limited_per_user_and_address() {
        let l = SignInLimit::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(l.attempt(a, "bob").is_ok());
        }
        assert!(l.attempt(a, "bob").is_err());
        // Another address for the same user: still limited by the name.
        assert!(l.attempt("10.0.0.1".parse().unwrap(), "bob").is_err());
        // The same address for another user: limited by the address.
        assert!(l.attempt(a, "carol").is_err());
        assert!(l.attempt("10.0.0.1".parse().unwrap(), "carol").is_ok());
        // A success takes its attempt back and clears the name.
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..MAX_FAILURES - 1 {
            assert!(l.attempt(b, "erin").is_ok());
        }
        assert!(l.attempt(b, "erin").is_ok());
        l.succeeded(b, "erin");
        assert!(l.attempt(b, "erin").is_ok(), "the success was not counted");
    }
}
