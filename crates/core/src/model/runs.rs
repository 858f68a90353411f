//! How a batch's rows are cut into encoder runs. On the CPU a run's time grows with its padded
//! tokens (rows × its longest row), so rows of very different lengths are cheaper in separate
//! runs; each extra run has a fixed cost ([`crate::model::Embedder::run_cost_tokens`]).

/// What one more encoder run costs on the CPU, in padded tokens: splitting a batch by length
/// must save more than this many token positions per extra run. A MiniLM run's fixed cost (input
/// binding, kernel set-up) is about that of 10–30 tokens on a CPU core.
pub const CPU_RUN_COST_TOKENS: usize = 32;

/// Most rows in one run of [`length_groups`]; it also bounds the search to O(rows × this).
pub const MAX_RUN_ROWS: usize = 512;

/// Splits rows into runs that cost the fewest padded token positions, counting `run_cost` for
/// each run: rows sorted by length, cut into contiguous groups of at most [`MAX_RUN_ROWS`] by
/// dynamic programming (exact under that bound). Each group lists row indices, shortest first.
pub fn length_groups(lengths: &[usize], run_cost: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let n = order.len();
    // cost[i]: the least cost of the i shortest rows; start[i]: where their last group starts.
    let mut cost = vec![0usize; n + 1];
    let mut start = vec![0usize; n + 1];
    for end in 1..=n {
        let longest = lengths[order[end - 1]];
        (cost[end], start[end]) = (end.saturating_sub(MAX_RUN_ROWS)..end)
            .map(|begin| {
                let run = (end - begin) * longest;
                (
                    cost[begin].saturating_add(run).saturating_add(run_cost),
                    begin,
                )
            })
            .min()
            .unwrap_or((0, 0));
    }
    let mut groups = Vec::new();
    let mut end = n;
    while end > 0 {
        groups.push(order[start[end]..end].to_vec());
        end = start[end];
    }
    groups.reverse();
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn padded_cost(groups: &[Vec<usize>], lengths: &[usize], run_cost: usize) -> usize {
        groups
            .iter()
            .map(|g| g.len() * g.iter().map(|&i| lengths[i]).max().unwrap_or(0) + run_cost)
            .sum()
    }

    #[test]
    fn rows_of_like_length_share_a_run() {
        let lengths = [12, 200, 14, 190, 13, 11];
        let groups = length_groups(&lengths, 32);
        assert_eq!(groups, vec![vec![5, 0, 4, 2], vec![3, 1]]);
        assert_eq!(padded_cost(&groups, &lengths, 32), 4 * 14 + 2 * 200 + 64);
    }

    #[test]
    fn a_costly_run_keeps_one_batch() {
        let lengths = [12, 200, 14];
        assert_eq!(length_groups(&lengths, usize::MAX).len(), 1);
        assert_eq!(length_groups(&[7], 32), vec![vec![0]]);
        assert!(length_groups(&[], 32).is_empty());
    }

    #[test]
    fn no_run_holds_more_than_max_run_rows() {
        let lengths = vec![20; 3 * MAX_RUN_ROWS + 5];
        for run_cost in [32, usize::MAX] {
            let groups = length_groups(&lengths, run_cost);
            assert_eq!(groups.len(), 4);
            assert!(groups.iter().all(|g| g.len() <= MAX_RUN_ROWS));
        }
    }

    #[test]
    fn the_partition_is_never_worse_than_one_run_and_covers_every_row() {
        let lengths: Vec<usize> = (0..40).map(|i| 5 + (i * 37) % 120).collect();
        for run_cost in [0, 8, 32, 256, 100_000] {
            let groups = length_groups(&lengths, run_cost);
            let mut rows: Vec<usize> = groups.concat();
            rows.sort_unstable();
            assert_eq!(rows, (0..40).collect::<Vec<_>>());
            let one = vec![(0..40).collect::<Vec<_>>()];
            assert!(
                padded_cost(&groups, &lengths, run_cost) <= padded_cost(&one, &lengths, run_cost)
            );
        }
    }
}
