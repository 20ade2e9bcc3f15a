//! The process's resident memory while a table is processed: a sampler
//! reads `/proc/self/statm` every [`SAMPLE_EVERY`] and raises the peak of
//! every table in flight. Tables running at once share one process, so each
//! sees the whole process's memory, not its own share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How often resident memory is read while tables run.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Resident memory of this process in bytes, where the OS tells.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

type Peaks = Arc<Mutex<Vec<Weak<AtomicU64>>>>;

/// Watches resident memory for the tables in flight. Disabled (no sampler,
/// nothing tracked) when no table has a memory threshold.
#[derive(Debug)]
pub struct MemoryWatch {
    peaks: Option<Peaks>,
    sampler: Option<tokio::task::JoinHandle<()>>,
}

/// One table's peak, raised by the sampler until dropped.
#[derive(Debug)]
pub struct Tracked(Arc<AtomicU64>);

impl Tracked {
    /// The peak resident memory seen so far, in MiB (sampled once more now).
    pub fn peak_mb(&self) -> f64 {
        if let Some(now) = resident_bytes() {
            self.0.fetch_max(now, Ordering::Relaxed);
        }
        self.0.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
    }
}

impl MemoryWatch {
    /// Starts the sampler when `enabled`.
    pub fn start(enabled: bool) -> MemoryWatch {
        if !enabled {
            return MemoryWatch {
                peaks: None,
                sampler: None,
            };
        }
        let peaks: Peaks = Arc::default();
        let shared = peaks.clone();
        let sampler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(now) = resident_bytes() else {
                    return;
                };
                shared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|weak| match weak.upgrade() {
                        Some(peak) => {
                            peak.fetch_max(now, Ordering::Relaxed);
                            true
                        }
                        None => false,
                    });
            }
        });
        MemoryWatch {
            peaks: Some(peaks),
            sampler: Some(sampler),
        }
    }

    /// Starts tracking a table's peak; `None` when the watch is disabled.
    pub fn track(&self) -> Option<Tracked> {
        let peaks = self.peaks.as_ref()?;
        let peak = Arc::new(AtomicU64::new(resident_bytes().unwrap_or(0)));
        peaks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&peak));
        Some(Tracked(peak))
    }
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        if let Some(sampler) = &self.sampler {
            sampler.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tracked_peak_sees_memory_taken_and_given_back_while_it_runs() {
        let watch = MemoryWatch::start(true);
        let tracked = watch.track().unwrap();
        let before = tracked.peak_mb();
        let mut big = vec![0u8; 64 << 20];
        big.iter_mut().step_by(4096).for_each(|b| *b = 1);
        std::hint::black_box(&big);
        tokio::time::sleep(SAMPLE_EVERY * 3).await;
        drop(big);
        assert!(
            tracked.peak_mb() >= before + 60.0,
            "peak {} MiB, before {before} MiB",
            tracked.peak_mb()
        );
        assert!(MemoryWatch::start(false).track().is_none());
    }
}
