//! A bounded window of recent block hashes: how deposit detection and confirmation tracking notice
//! that the chain they built on has been replaced (C2). Sans-IO: the watcher fetches headers and feeds
//! them in; the window says whether each extends the chain or whether the watcher must rewind.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How far back a re-org can be followed. Deeper than this the watcher halts (fails closed) instead of
/// guessing; an operator must look.
pub const REORG_DEPTH_MAX: u64 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    pub number: u64,
    pub hash: [u8; 32],
    pub parent_hash: [u8; 32],
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockWindow {
    hashes: BTreeMap<u64, [u8; 32]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    /// The header extends the window.
    Extended,
    /// The header's parent is not the block we hold at `number - 1`: rewind first.
    ParentMismatch,
    /// The header is not the next height.
    NotNext { expected: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("re-org deeper than the {REORG_DEPTH_MAX}-block window; halting until an operator intervenes")]
pub struct ReorgTooDeep;

impl BlockWindow {
    pub fn from_hashes(hashes: impl IntoIterator<Item = (u64, [u8; 32])>) -> Self {
        BlockWindow { hashes: hashes.into_iter().collect() }
    }

    pub fn tip(&self) -> Option<(u64, [u8; 32])> {
        self.hashes.last_key_value().map(|(n, h)| (*n, *h))
    }

    pub fn hash_at(&self, number: u64) -> Option<[u8; 32]> {
        self.hashes.get(&number).copied()
    }

    pub fn accept(&mut self, header: &BlockHeader) -> Accept {
        if let Some((tip, tip_hash)) = self.tip() {
            if header.number != tip + 1 {
                return Accept::NotNext { expected: tip + 1 };
            }
            if header.parent_hash != tip_hash {
                return Accept::ParentMismatch;
            }
        }
        self.hashes.insert(header.number, header.hash);
        while self.hashes.len() as u64 > REORG_DEPTH_MAX {
            self.hashes.pop_first();
        }
        Accept::Extended
    }

    /// Drops the tip after the node reported a different hash at that height; returns the dropped
    /// height. Errs when the window is exhausted: the fork point is older than we can see.
    pub fn rewind_one(&mut self) -> Result<u64, ReorgTooDeep> {
        match self.hashes.pop_last() {
            Some((n, _)) if !self.hashes.is_empty() => Ok(n),
            _ => Err(ReorgTooDeep),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u64, fork: u8) -> BlockHeader {
        let hash = |n: u64, f: u8| {
            let mut x = [0u8; 32];
            x[..8].copy_from_slice(&n.to_be_bytes());
            x[31] = f;
            x
        };
        BlockHeader {
            number: n,
            hash: hash(n, fork),
            parent_hash: hash(n.wrapping_sub(1), if n == 0 { 0 } else { fork }),
        }
    }

    #[test]
    fn c2_parent_mismatch_is_detected_and_rewound() {
        let mut w = BlockWindow::default();
        for n in 0..5 {
            assert_eq!(w.accept(&h(n, 0)), Accept::Extended);
        }
        let mut fork = h(5, 1);
        fork.parent_hash = h(4, 1).hash;
        assert_eq!(w.accept(&fork), Accept::ParentMismatch);
        assert_eq!(w.rewind_one(), Ok(4));
        assert_eq!(w.tip().unwrap().0, 3);
        assert_eq!(w.accept(&h(7, 0)), Accept::NotNext { expected: 4 });
    }

    /// C2: the re-org window is bounded; a deeper re-org fails closed.
    #[test]
    fn window_is_bounded_and_too_deep_fails_closed() {
        let mut w = BlockWindow::default();
        for n in 0..(REORG_DEPTH_MAX + 10) {
            w.accept(&h(n, 0));
        }
        assert_eq!(w.hashes.len() as u64, REORG_DEPTH_MAX);
        let mut w = BlockWindow::default();
        w.accept(&h(0, 0));
        assert_eq!(w.rewind_one(), Err(ReorgTooDeep));
    }
}
