//! The mesh's resident memory, from `/proc/<pid>/status` (`VmRSS`), summed over its processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// `VmRSS` in a `/proc/<pid>/status` text, in kB.
pub fn parse_vm_rss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
}

/// The summed resident memory of `pids` in MB (10^6 bytes); `None` without pids or when one
/// cannot be read (it exited, or this is not Linux).
pub fn rss_mb(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    let mut kb = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        kb += parse_vm_rss_kb(&status)?;
    }
    Some(kb as f64 * 1024.0 / 1e6)
}

/// Samples [`rss_mb`] every 200 ms in the background, keeping the peak.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    peak_kb: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(pids: Vec<u32>) -> Self {
        let (stop, peak_kb) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let task = {
            let (stop, peak_kb) = (Arc::clone(&stop), Arc::clone(&peak_kb));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(mb) = rss_mb(&pids) {
                        peak_kb.fetch_max((mb * 1e6 / 1024.0) as u64, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        Self {
            stop,
            peak_kb,
            task,
        }
    }

    /// Stops sampling; the peak in MB, if anything was sampled.
    pub async fn stop(self) -> Option<f64> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let kb = self.peak_kb.load(Ordering::Relaxed);
        (kb > 0).then(|| kb as f64 * 1024.0 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_from_a_status_file() {
        let status = "Name:\ttwtr\nVmPeak:\t  900000 kB\nVmRSS:\t   51200 kB\nThreads:\t9\n";
        assert_eq!(parse_vm_rss_kb(status), Some(51_200));
        assert_eq!(parse_vm_rss_kb("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn this_process_has_a_resident_size_and_no_pids_have_none() {
        assert!(rss_mb(&[std::process::id()]).is_some_and(|mb| mb > 0.1));
        assert_eq!(rss_mb(&[]), None);
    }
}
