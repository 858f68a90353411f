//! The batching rule, pure: which queued requests make the next batch, and when waiting longer
//! gains nothing. A batch is a prefix of the queue within a row and a padded-token budget.

use std::time::Duration;

/// How big a batch may grow and how long a request may wait for company.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most rows (texts) in one encoder call.
    pub max_rows: usize,
    /// Most padded tokens (rows × longest row) in one encoder call.
    pub max_tokens: usize,
    /// Longest a request waits for others before its batch runs anyway.
    pub max_wait: Duration,
    /// Requests that may wait at once; beyond it new requests are refused (429).
    pub queue_capacity: usize,
    /// Batches in flight at once (the encoder's session count).
    pub concurrency: usize,
}

/// What a request costs a batch: its rows and its longest row in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub rows: usize,
    pub seq_len: usize,
}

impl Cost {
    /// Padded tokens of this request alone.
    pub fn tokens(self) -> usize {
        self.rows * self.seq_len
    }
}

/// How many requests from the front of the queue make the next batch: the longest prefix that
/// stays within `max_rows` and `max_tokens` (padded to its longest row), but never fewer than one,
/// so a request that was admitted always runs. Requests are never split across batches.
pub fn take_batch(costs: impl IntoIterator<Item = Cost>, limits: &BatchLimits) -> usize {
    let (mut rows, mut seq_len, mut taken) = (0usize, 0usize, 0usize);
    for cost in costs {
        let next_rows = rows + cost.rows;
        let next_seq = seq_len.max(cost.seq_len);
        if taken > 0 && (next_rows > limits.max_rows || next_rows * next_seq > limits.max_tokens) {
            break;
        }
        (rows, seq_len, taken) = (next_rows, next_seq, taken + 1);
    }
    taken
}

/// True when the requests waiting already fill a batch, so waiting longer gains nothing.
pub(super) fn is_full(costs: impl IntoIterator<Item = Cost> + Clone, limits: &BatchLimits) -> bool {
    let waiting = costs.clone().into_iter().count();
    let taken = take_batch(costs.clone(), limits);
    let (rows, seq_len) = costs
        .into_iter()
        .take(taken)
        .fold((0, 0), |(r, s), c| (r + c.rows, s.max(c.seq_len)));
    taken < waiting || rows >= limits.max_rows || rows * seq_len >= limits.max_tokens
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Limits for tests: a 100 ms wait, a queue of 16, one session.
    pub(in crate::batcher) fn limits(max_rows: usize, max_tokens: usize) -> BatchLimits {
        BatchLimits {
            max_rows,
            max_tokens,
            max_wait: Duration::from_millis(100),
            queue_capacity: 16,
            concurrency: 1,
        }
    }

    fn costs(list: &[(usize, usize)]) -> Vec<Cost> {
        list.iter()
            .map(|&(rows, seq_len)| Cost { rows, seq_len })
            .collect()
    }

    #[test]
    fn take_batch_stops_at_the_row_limit() {
        let limits = limits(4, 10_000);
        assert_eq!(take_batch(costs(&[(2, 8), (2, 8), (1, 8)]), &limits), 2);
        assert_eq!(take_batch(costs(&[(1, 8), (1, 8)]), &limits), 2);
    }

    #[test]
    fn take_batch_counts_padded_tokens() {
        // 2 rows of 10, then 1 row of 40 would pad all 3 rows to 40: 120 > 100.
        let limits = limits(32, 100);
        assert_eq!(take_batch(costs(&[(2, 10), (1, 40)]), &limits), 1);
        assert_eq!(take_batch(costs(&[(2, 10), (1, 30)]), &limits), 2);
    }

    #[test]
    fn take_batch_always_takes_the_first_request() {
        let limits = limits(2, 10);
        assert_eq!(take_batch(costs(&[(5, 64), (1, 1)]), &limits), 1);
        assert_eq!(take_batch(costs(&[]), &limits), 0);
    }

    #[test]
    fn a_batch_is_full_when_the_next_request_would_not_fit() {
        let limits = limits(4, 10_000);
        assert!(!is_full(costs(&[(1, 8)]), &limits));
        assert!(is_full(costs(&[(4, 8)]), &limits));
        assert!(is_full(costs(&[(3, 8), (2, 8)]), &limits));
    }
}
