//! The thread pool kept awake for a loop of steps. A training step opens thousands of parallel regions (every
//! product, every element-wise pass), with short stretches of one thread's work between them. Rayon puts a thread
//! that finds no work to sleep after a few dozen rounds of looking, and the next region must wake it again: a system
//! call on one side and a delay on the other. OpenMP runtimes (PyTorch's, MKL's) keep their threads spinning between
//! regions for the same reason. `loft bench train` (4×256, 2 threads, AMD EPYC VM): context switches 14,059 → 3,270
//! over the run, 13–73 ms less a step (1.6 s) in four interleaved pairs. Decoding gained nothing measurable (its regions
//! follow each other closely enough that the threads seldom sleep), so it does not use it.
//!
//! [`HotPool::start`], called on a thread of the pool, puts one spinning task on each other thread (rayon's
//! `spawn_broadcast`: each in its thread's own queue): it runs whatever work is pending (rayon's `yield_now`) and
//! otherwise spins, until the guard is dropped. The caller's thread runs no spinner (its copy returns at once), so
//! whatever it waits on, it can still run the work it waits for.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

thread_local! {
    /// This thread already runs a spinner (a second one, reached through `yield_now`, returns at once).
    static SPINNING: Cell<bool> = const { Cell::new(false) };
}

/// While it lives, the pool's other threads spin between parallel regions instead of sleeping.
pub struct HotPool {
    stop: Arc<AtomicBool>,
    /// Spinners started and not yet returned (queued ones included; the caller's thread's returns at once).
    pending: Arc<AtomicUsize>,
}

impl HotPool {
    /// Starts a spinner for each thread of the current pool but this one. Outside a pool, in a pool of one thread,
    /// or in a pool of more threads than the machine has cores (`--threads` above them), it starts none: there a
    /// spinning thread would take a core from one with work (`loft --threads 4 bench train` on 2 cores: 183–211 tok/s
    /// with spinners, 575–615 without).
    pub fn start() -> HotPool {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        Self::start_within(cores)
    }

    /// [`HotPool::start`] on a machine of `cores` cores.
    fn start_within(cores: usize) -> HotPool {
        let stop = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(AtomicUsize::new(0));
        let threads = rayon::current_num_threads();
        if let (Some(me), 2.., true) = (rayon::current_thread_index(), threads, threads <= cores) {
            // One spinner a thread, each in that thread's own broadcast queue: a queued spinner cannot be taken by
            // another thread (rayon::spawn's could: a thread already spinning took its neighbours' through
            // yield_now, and they slept).
            pending.store(threads, Ordering::Release);
            let (stop, left) = (stop.clone(), pending.clone());
            rayon::spawn_broadcast(move |ctx| {
                if ctx.index() != me && !SPINNING.with(|s| s.replace(true)) {
                    while !stop.load(Ordering::Acquire) {
                        if rayon::yield_now() != Some(rayon::Yield::Executed) {
                            std::hint::spin_loop();
                        }
                    }
                    SPINNING.with(|s| s.set(false));
                }
                left.fetch_sub(1, Ordering::AcqRel);
            });
            // This thread's own copy returns at once: run it now, so that only the other threads' remain.
            while pending.load(Ordering::Acquire) == threads && rayon::yield_local() == Some(rayon::Yield::Executed) {}
        }
        HotPool { stop, pending }
    }
}

impl Drop for HotPool {
    /// Stops the spinners and waits until each has returned, so that none outlives the loop. This thread's own
    /// is run here if still queued (it returns at once).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        while self.pending.load(Ordering::Acquire) > 0 {
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
    }

    /// Spinners started and not yet returned.
    fn spinners(hot: &HotPool) -> usize {
        hot.pending.load(Ordering::Acquire)
    }

    #[test]
    fn the_spinners_keep_spinning_beside_parallel_work_until_dropped() {
        for threads in [1, 2, 4] {
            pool(threads).install(|| {
                // Twice: the second guard's spinners spin too (the first's left their threads free and unmarked).
                for _ in 0..2 {
                    // As on a machine with a core a thread (this one may have fewer).
                    let hot = HotPool::start_within(threads);
                    // Regions opened while the other threads spin still split and finish, joins nested in them too.
                    for round in 0..200u64 {
                        let sum: u64 = (0..10_000u64).into_par_iter().map(|i| i * round).sum();
                        assert_eq!(sum, round * 10_000 * 9_999 / 2);
                        let (a, b) = rayon::join(|| round + 1, || round + 2);
                        assert_eq!(a + b, 2 * round + 3);
                    }
                    // Every other thread still runs its spinner (one that returned at once would have left).
                    let want = threads - 1;
                    assert_eq!(spinners(&hot), want, "{threads} threads: a spinner returned before its guard");
                }
            });
        }
    }

    #[test]
    fn outside_a_pool_it_starts_nothing() {
        assert_eq!(spinners(&HotPool::start()), 0);
    }

    #[test]
    fn more_threads_than_cores_start_nothing() {
        pool(4).install(|| {
            let hot = HotPool::start_within(2);
            assert_eq!(spinners(&hot), 0);
            let sum: u64 = (0..10_000u64).into_par_iter().sum();
            assert_eq!(sum, 10_000 * 9_999 / 2);
        });
    }

    #[test]
    fn the_work_is_shared_by_the_threads_while_they_spin() {
        pool(2).install(|| {
            let _hot = HotPool::start_within(2);
            // Some of the tasks run on the other thread: its spinner takes them from this thread's queue.
            let threads: std::collections::BTreeSet<usize> = (0..64)
                .into_par_iter()
                .with_max_len(1)
                .map(|_| {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    rayon::current_thread_index().unwrap()
                })
                .collect();
            assert_eq!(threads.len(), 2, "all 64 tasks ran on one thread");
        });
    }
}
