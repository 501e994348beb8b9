//! Resource usage from cgroups and /proc, served as the kubelet's
//! `/metrics/resource`: what the metrics API (`kubectl top`) and the
//! autoscaler read.
//!
//! ```text
//!  container: cgroup /keelson/pod<uid>/<name>   CPU seconds used, memory working set
//!  pod:       cgroup /keelson/pod<uid>          (its containers together)
//!  node:      /proc/stat, /proc/meminfo
//!     └─► container_cpu_usage_seconds_total{container,namespace,pod} …, one text per scrape
//! ```
//!
//! CPU is a counter (seconds used since the cgroup was made); readers take
//! the rate between two scrapes. The working set is usage minus inactive
//! file pages, as the kubelet reports it (what the OOM killer looks at).

use std::fmt::Write;
use std::path::Path;

use chrono::{DateTime, Utc};

/// What a cgroup (or the node) has used.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// CPU time used, in seconds.
    pub cpu_seconds: f64,
    /// Memory in use that cannot be reclaimed at once, in bytes.
    pub memory_working_set: u64,
}

/// The value of `key` in a `key value` file (memory.stat, cpu.stat).
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok()).flatten()
    })
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The usage of the cgroup at `relative` (as in the OCI spec's
/// `cgroupsPath`, without the leading `/`), under `root` (`/sys/fs/cgroup`):
/// cgroup v1 hierarchies first, then the unified one.
pub fn cgroup_usage(root: &Path, relative: &str) -> Option<Usage> {
    let v1_cpu = ["cpuacct", "cpu,cpuacct"]
        .iter()
        .find_map(|h| read(&root.join(h).join(relative).join("cpuacct.usage")));
    if let Some(cpu) = v1_cpu {
        let memory = root.join("memory").join(relative);
        let usage: u64 = read(&memory.join("memory.usage_in_bytes"))
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        let inactive = read(&memory.join("memory.stat"))
            .and_then(|t| field(&t, "total_inactive_file"))
            .unwrap_or(0);
        return Some(Usage {
            cpu_seconds: cpu.trim().parse::<u64>().ok()? as f64 / 1e9,
            memory_working_set: usage.saturating_sub(inactive),
        });
    }
    let unified = root.join(relative);
    let cpu = field(&read(&unified.join("cpu.stat"))?, "usage_usec")?;
    let usage: u64 = read(&unified.join("memory.current"))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let inactive = read(&unified.join("memory.stat"))
        .and_then(|t| field(&t, "inactive_file"))
        .unwrap_or(0);
    Some(Usage {
        cpu_seconds: cpu as f64 / 1e6,
        memory_working_set: usage.saturating_sub(inactive),
    })
}

/// The node's usage from `/proc/stat` and `/proc/meminfo` texts: every
/// CPU's busy time (not idle or iowait), and memory not available.
pub fn node_usage(stat: &str, meminfo: &str, ticks_per_second: f64) -> Option<Usage> {
    let cpu: Vec<u64> = stat
        .lines()
        .find(|l| l.starts_with("cpu "))?
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let busy: u64 = cpu
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, v)| v)
        .sum();
    let kib = |key: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    let total = kib("MemTotal")?;
    let available = kib("MemAvailable").unwrap_or(0);
    Some(Usage {
        cpu_seconds: busy as f64 / ticks_per_second,
        memory_working_set: total.saturating_sub(available) * 1024,
    })
}

/// One container's usage, named for the scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerUsage {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub usage: Usage,
}

/// One pod's usage.
#[derive(Clone, Debug, PartialEq)]
pub struct PodUsage {
    pub namespace: String,
    pub pod: String,
    pub usage: Usage,
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `/metrics/resource` text: Prometheus' format with the kubelet's
/// names, each sample stamped with the time it was read (milliseconds).
pub fn render(
    node: Option<Usage>,
    pods: &[PodUsage],
    containers: &[ContainerUsage],
    at: DateTime<Utc>,
) -> String {
    let ms = at.timestamp_millis();
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value} {ms}");
        }
    };
    let container_labels = |c: &ContainerUsage| {
        format!(
            "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
            escape(&c.container),
            escape(&c.namespace),
            escape(&c.pod)
        )
    };
    let pod_labels = |p: &PodUsage| {
        format!(
            "{{namespace=\"{}\",pod=\"{}\"}}",
            escape(&p.namespace),
            escape(&p.pod)
        )
    };
    family(
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
        containers
            .iter()
            .map(|c| (container_labels(c), format!("{}", c.usage.cpu_seconds)))
            .collect(),
    );
    family(
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
        containers
            .iter()
            .map(|c| (container_labels(c), c.usage.memory_working_set.to_string()))
            .collect(),
    );
    family(
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
        node.iter()
            .map(|n| (String::new(), format!("{}", n.cpu_seconds)))
            .collect(),
    );
    family(
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
        node.iter()
            .map(|n| (String::new(), n.memory_working_set.to_string()))
            .collect(),
    );
    family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
        pods.iter()
            .map(|p| (pod_labels(p), format!("{}", p.usage.cpu_seconds)))
            .collect(),
    );
    family(
        "pod_memory_working_set_bytes",
        "gauge",
        "Current working set of the pod in bytes",
        pods.iter()
            .map(|p| (pod_labels(p), p.usage.memory_working_set.to_string()))
            .collect(),
    );
    // No timestamp on this one: it is about the scrape itself.
    let _ = writeln!(
        out,
        "# HELP scrape_error 1 if there was an error while getting container metrics, 0 otherwise\n\
         # TYPE scrape_error gauge\nscrape_error {}",
        u8::from(node.is_none())
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroups_v1_and_v2_read_alike() {
        let root = tempfile::tempdir().unwrap();
        let v1 = "keelson/podu1/app";
        let write = |path: &str, text: &str| {
            let path = root.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write(&format!("cpuacct/{v1}/cpuacct.usage"), "2500000000\n");
        write(&format!("memory/{v1}/memory.usage_in_bytes"), "10485760\n");
        write(
            &format!("memory/{v1}/memory.stat"),
            "cache 1\ntotal_inactive_file 2097152\n",
        );
        assert_eq!(
            cgroup_usage(root.path(), v1),
            Some(Usage {
                cpu_seconds: 2.5,
                memory_working_set: 8 << 20
            })
        );
        let v2 = "keelson/podu2/app";
        write(
            &format!("{v2}/cpu.stat"),
            "usage_usec 1500000\nuser_usec 1\n",
        );
        write(&format!("{v2}/memory.current"), "4096\n");
        write(&format!("{v2}/memory.stat"), "anon 1\ninactive_file 1024\n");
        assert_eq!(
            cgroup_usage(root.path(), v2),
            Some(Usage {
                cpu_seconds: 1.5,
                memory_working_set: 3072
            })
        );
        assert_eq!(cgroup_usage(root.path(), "keelson/none"), None);
    }

    #[test]
    fn the_node_is_read_from_proc() {
        let stat = "cpu  100 10 50 1000 20 5 5 0 0 0\ncpu0 1 1 1 1 1 1 1 1 1 1\n";
        let meminfo = "MemTotal:       1000 kB\nMemFree:  100 kB\nMemAvailable:    600 kB\n";
        assert_eq!(
            node_usage(stat, meminfo, 100.0),
            Some(Usage {
                cpu_seconds: 1.7,
                memory_working_set: 400 * 1024
            })
        );
    }

    #[test]
    fn the_scrape_names_every_pod_and_container() {
        let at: DateTime<Utc> = "2024-01-01T00:00:00Z".parse().unwrap();
        let usage = Usage {
            cpu_seconds: 0.25,
            memory_working_set: 1024,
        };
        let text = render(
            Some(usage),
            &[PodUsage {
                namespace: "default".into(),
                pod: "web".into(),
                usage,
            }],
            &[ContainerUsage {
                namespace: "default".into(),
                pod: "web".into(),
                container: "app".into(),
                usage,
            }],
            at,
        );
        assert!(text.contains(
            "container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 0.25 1704067200000\n"
        ));
        assert!(text.contains(
            "pod_memory_working_set_bytes{namespace=\"default\",pod=\"web\"} 1024 1704067200000\n"
        ));
        assert!(text.contains("node_cpu_usage_seconds_total 0.25 1704067200000\n"));
        assert!(text.ends_with("scrape_error 0\n"));
    }
}
