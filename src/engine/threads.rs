//! The default thread count: the performance cores.
//!
//! Phones pair a few fast cores with slower efficiency ones (big.LITTLE).
//! A decode step waits for its slowest thread, so spreading it over every
//! core makes the fast ones wait for the slow: llama.cpp runs faster on the
//! performance cores alone. Linux (Android) says each core's top frequency
//! in `/sys/devices/system/cpu/cpuN/cpufreq/cpuinfo_max_freq`; the cores
//! within 80% of the fastest are the performance cores. Where that is
//! unknown, or all cores are alike (desktops, most servers), every core the
//! process may use.

use std::path::Path;

/// Cores at least this fraction of the fastest core's top frequency count
/// as performance cores (prime and big cores, not the little ones).
const PERFORMANCE_FRACTION: f64 = 0.8;

/// Threads a solve uses when none are asked for.
pub fn default_threads() -> u32 {
    let all = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    performance_cores(Path::new("/sys/devices/system/cpu")).map_or(all, |n| n.min(all)).max(1)
}

/// The performance cores among the CPUs under `root` (a sysfs
/// `devices/system/cpu` folder), or None where their frequencies are not
/// known.
pub fn performance_cores(root: &Path) -> Option<u32> {
    let mut freqs = Vec::new();
    for entry in std::fs::read_dir(root).ok()? {
        let entry = entry.ok()?;
        let name = entry.file_name();
        let name = name.to_str().unwrap_or("");
        let is_cpu = name.strip_prefix("cpu").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_cpu {
            continue;
        }
        // An offline core has no cpufreq folder: it is not counted.
        let Ok(text) = std::fs::read_to_string(entry.path().join("cpufreq/cpuinfo_max_freq")) else { continue };
        if let Ok(khz) = text.trim().parse::<u64>() {
            freqs.push(khz);
        }
    }
    let fastest = *freqs.iter().max()?;
    if fastest == 0 {
        return None;
    }
    Some(freqs.iter().filter(|&&f| f as f64 >= PERFORMANCE_FRACTION * fastest as f64).count() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs-shaped folder: one `cpuN/cpufreq/cpuinfo_max_freq` per entry
    /// (None: a core without cpufreq, as when offline).
    fn sysfs(freqs: &[Option<u64>]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (i, f) in freqs.iter().enumerate() {
            let cpu = d.path().join(format!("cpu{i}"));
            std::fs::create_dir_all(cpu.join("cpufreq")).unwrap();
            if let Some(f) = f {
                std::fs::write(cpu.join("cpufreq/cpuinfo_max_freq"), format!("{f}\n")).unwrap();
            }
        }
        // Entries that are not cores.
        std::fs::create_dir_all(d.path().join("cpufreq")).unwrap();
        std::fs::create_dir_all(d.path().join("cpuidle")).unwrap();
        std::fs::write(d.path().join("online"), "0-7\n").unwrap();
        d
    }

    #[test]
    fn a_phone_uses_its_prime_and_big_cores() {
        // Snapdragon 8 Gen 2: 1 × 3.19 GHz, 4 × 2.8 GHz, 3 × 2.0 GHz.
        let d = sysfs(&[2_016_000, 2_016_000, 2_016_000, 2_803_200, 2_803_200, 2_803_200, 2_803_200, 3_187_200].map(Some));
        assert_eq!(performance_cores(d.path()), Some(5));
        // Tensor G3-like: 1 prime, 4 middle at 2.45 of 2.91 GHz (84%), 4 little.
        let d = sysfs(&[1_704_000, 1_704_000, 1_704_000, 1_704_000, 2_450_000, 2_450_000, 2_450_000, 2_450_000, 2_910_000].map(Some));
        assert_eq!(performance_cores(d.path()), Some(5));
    }

    #[test]
    fn alike_cores_are_all_used_and_unknown_is_none() {
        let d = sysfs(&[Some(3_000_000); 4]);
        assert_eq!(performance_cores(d.path()), Some(4));
        // An offline core (no cpufreq) is not counted.
        let d = sysfs(&[Some(3_000_000), None, Some(3_000_000)]);
        assert_eq!(performance_cores(d.path()), Some(2));
        let d = sysfs(&[None, None]);
        assert_eq!(performance_cores(d.path()), None);
        assert_eq!(performance_cores(Path::new("/nonexistent/cpu")), None);
        let n = default_threads();
        assert!(n >= 1 && n <= std::thread::available_parallelism().unwrap().get() as u32, "{n}");
    }
}
