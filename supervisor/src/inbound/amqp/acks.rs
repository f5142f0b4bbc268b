//! Acks of one consumer's channel, batched: a message is acked once its service returned,
//! as before, but the messages that finished together (one sweep of the consumer's finished
//! tasks) are acked with one `basic.ack` carrying `multiple` on the highest of them,
//! whenever every delivery up to it is settled (each ack frame costs the broker and both
//! ends' I/O threads a wake-up: a consumer acking one by one spent a quarter of its server
//! time switching threads).
//!
//! The rules that keep this exactly as safe as one ack per message:
//! - `multiple` acks every *outstanding* delivery up to its tag, so it is sent only for a
//!   prefix of tags that are all settled: succeeded, or rejected / given back by their task
//!   before it reported (lapin resolves a reject once its frame is written, so the frame is
//!   ahead of any later ack). A delivery still in flight, or one left unacked on purpose (a
//!   stop cut its service short: the broker must get it back), holds the prefix below it.
//! - A succeeded message above such a hole is acked alone in the same sweep, never kept
//!   waiting: a waiting ack would hold one of the consumer's `prefetch` slots.
//! - The acks leave in the order they were decided, through one task per channel that
//!   sends one at a time: a `multiple` ack never overtakes a single ack of a tag it covers.

use std::collections::{BTreeMap, BTreeSet};

/// One ack to send.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AckOp<A> {
    /// `basic.ack` of this delivery with `multiple`: settles `count` succeeded messages.
    Multiple(A, u64),
    /// `basic.ack` of this one delivery.
    One(A),
}

/// The delivery tags of one channel: which are open (delivered and not settled), which
/// succeeded since the last sweep. Tags are the channel's own, rising in delivery order.
#[derive(Debug)]
pub(super) struct AckWindow<A> {
    /// Delivered and not settled: in flight, or held unacked on purpose.
    open: BTreeSet<u64>,
    /// Succeeded since the last [`AckWindow::take`].
    succeeded: BTreeMap<u64, A>,
    /// The highest tag delivered.
    seen: u64,
}

impl<A> Default for AckWindow<A> {
    fn default() -> Self {
        AckWindow {
            open: BTreeSet::new(),
            succeeded: BTreeMap::new(),
            seen: 0,
        }
    }
}

impl<A> AckWindow<A> {
    /// Delivery `tag` arrived.
    pub fn delivered(&mut self, tag: u64) {
        self.open.insert(tag);
        self.seen = self.seen.max(tag);
    }

    /// `tag`'s service succeeded: it is to be acked with `acker`.
    pub fn succeeded(&mut self, tag: u64, acker: A) {
        self.open.remove(&tag);
        self.succeeded.insert(tag, acker);
    }

    /// `tag` was settled otherwise (its reject was written before this was called).
    pub fn settled(&mut self, tag: u64) {
        self.open.remove(&tag);
    }

    /// The acks of what succeeded since the last sweep: those below every open tag as one
    /// `multiple` ack of the highest, in front; each of the others alone.
    pub fn take(&mut self) -> Vec<AckOp<A>> {
        let bound = self.open.first().map_or(self.seen, |t| t - 1);
        let above = self.succeeded.split_off(&(bound.saturating_add(1)));
        let prefix = std::mem::take(&mut self.succeeded);
        let count = prefix.len() as u64;
        let mut ops = Vec::with_capacity(1 + above.len());
        if let Some((_, acker)) = prefix.into_iter().next_back() {
            ops.push(AckOp::Multiple(acker, count));
        }
        ops.extend(above.into_values().map(AckOp::One));
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_prefix_goes_as_one_multiple_ack_of_its_highest_tag() {
        let mut w = AckWindow::default();
        for t in 1..=5 {
            w.delivered(t);
        }
        // 2 and 1 succeed out of order, 3 is rejected, 4 is in flight, 5 succeeds.
        w.succeeded(2, "a2");
        w.succeeded(1, "a1");
        w.settled(3);
        w.succeeded(5, "a5");
        assert_eq!(
            w.take(),
            vec![AckOp::Multiple("a2", 2), AckOp::One("a5")],
            "5 is above the open 4: alone"
        );
        assert_eq!(w.take(), vec![]);
        w.succeeded(4, "a4");
        assert_eq!(w.take(), vec![AckOp::Multiple("a4", 1)]);
    }

    #[test]
    fn a_prefix_of_rejections_only_sends_nothing() {
        let mut w: AckWindow<&str> = AckWindow::default();
        w.delivered(1);
        w.delivered(2);
        w.settled(1);
        w.settled(2);
        assert_eq!(w.take(), vec![]);
    }

    #[test]
    fn a_message_held_unacked_is_never_covered() {
        let mut w = AckWindow::default();
        for t in 1..=3 {
            w.delivered(t);
        }
        // 2 is held (a stop cut its service short): never settled here.
        w.succeeded(1, "a1");
        w.succeeded(3, "a3");
        assert_eq!(w.take(), vec![AckOp::Multiple("a1", 1), AckOp::One("a3")]);
    }

    #[test]
    fn with_nothing_open_the_bound_is_the_highest_tag_seen() {
        let mut w = AckWindow::default();
        w.delivered(7);
        w.succeeded(7, "a7");
        assert_eq!(w.take(), vec![AckOp::Multiple("a7", 1)]);
    }

    /// What happens to a delivery in the property test.
    #[derive(Debug, Clone, Copy)]
    enum Fate {
        Succeed,
        Reject,
        Hold,
    }

    proptest! {
        /// Whatever the order deliveries finish in and however the sweeps fall: every
        /// succeeded tag is acked exactly once; a `multiple` ack never covers a tag that is
        /// open (in flight or held) or was acked before it; a single ack is never of a tag
        /// a `multiple` ack covered; rejected and held tags are never acked.
        #[test]
        fn acks_cover_exactly_the_succeeded(
            fates in prop::collection::vec(
                prop_oneof![8 => Just(Fate::Succeed), 1 => Just(Fate::Reject), 1 => Just(Fate::Hold)],
                1..60,
            ),
            order in prop::collection::vec(any::<prop::sample::Index>(), 60),
            sweeps in prop::collection::vec(any::<bool>(), 60),
        ) {
            let n = fates.len() as u64;
            let mut w: AckWindow<u64> = AckWindow::default();
            for t in 1..=n {
                w.delivered(t);
            }
            // The broker's view: which tags are outstanding (not yet acked or rejected).
            let mut outstanding: BTreeSet<u64> = (1..=n).collect();
            let mut acked: BTreeSet<u64> = BTreeSet::new();
            let mut pending: Vec<u64> = (1..=n).collect();
            let apply = |ops: Vec<AckOp<u64>>, w_open: &BTreeSet<u64>,
                             outstanding: &mut BTreeSet<u64>, acked: &mut BTreeSet<u64>| {
                for op in ops {
                    match op {
                        AckOp::Multiple(t, count) => {
                            prop_assert!(outstanding.contains(&t), "multiple ack of a settled tag {}", t);
                            let covered: Vec<u64> = outstanding.range(..=t).copied().collect();
                            for c in &covered {
                                prop_assert!(!w_open.contains(c), "multiple ack {} covers open {}", t, c);
                                prop_assert!(acked.insert(*c), "tag {} acked twice", c);
                                outstanding.remove(c);
                            }
                            prop_assert_eq!(covered.len() as u64, count);
                        }
                        AckOp::One(t) => {
                            prop_assert!(outstanding.remove(&t), "single ack of settled tag {}", t);
                            prop_assert!(!w_open.contains(&t));
                            prop_assert!(acked.insert(t));
                        }
                    }
                }
                Ok(())
            };
            let mut i = 0;
            while !pending.is_empty() {
                let t = pending.remove(order[i % order.len()].index(pending.len()));
                match fates[(t - 1) as usize] {
                    Fate::Succeed => w.succeeded(t, t),
                    Fate::Reject => {
                        outstanding.remove(&t);
                        w.settled(t);
                    }
                    Fate::Hold => {}
                }
                if sweeps[i % sweeps.len()] || pending.is_empty() {
                    let ops = w.take();
                    let open = w.open.clone();
                    apply(ops, &open, &mut outstanding, &mut acked)?;
                }
                i += 1;
            }
            let want: BTreeSet<u64> = (1..=n)
                .filter(|t| matches!(fates[(*t - 1) as usize], Fate::Succeed))
                .collect();
            prop_assert_eq!(acked, want);
        }
    }
}
