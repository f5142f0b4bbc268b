//! Processes as `/proc` shows them: which pids still run and which are a process's
//! children (the harness checks that no worker is left behind). Reads only; kills nothing.

/// The pids of `pids` that are still running (not gone, not zombies).
pub fn living(pids: &[u32]) -> Vec<u32> {
    pids.iter().copied().filter(|p| alive(*p)).collect()
}

pub(crate) fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next()),
            Some("Z")
        ),
        Err(_) => false,
    }
}

/// Pids whose parent is `ppid`.
pub fn children_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(d) = std::fs::read_dir("/proc") {
        for e in d.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let mut f = stat.rsplit(')').next().unwrap_or("").split_whitespace();
            let state = f.next();
            let parent: u32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            if parent == ppid && state != Some("Z") {
                out.push(pid);
            }
        }
    }
    out.sort();
    out
}
